"""launch/plot_metrics.py: what a person plots from a run's metrics.jsonl (issue 14: the loss was
linear, flat after step 90 of the demo, and the test score was not shown)."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import REPO, run_cmd

pytest.importorskip("matplotlib")
sys.path.insert(0, str(REPO / "launch"))
import plot_metrics  # noqa: E402


def fake_run(folder, selected=20):
    folder.mkdir()
    rows = [{"step": s, "loss": 5.0 * 10 ** (-s / 10), "lr": 0.3, "tokens_per_s": 100.0} for s in range(10, 41, 10)]
    rows += [{"step": s, "split": "validation", "eval_loss": 0.5, "eval_accuracy": a, "eval_metric": "accuracy"}
             for s, a in ((20, 70.0), (40, 60.0))]  # fmt: skip
    rows.append({"step": 40, "split": "test", "test_loss": 0.4, "test_accuracy": 66.0})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "results.json").write_text(json.dumps({"selection": {"metric": "accuracy", "step": selected}}))
    return folder


def test_loss_on_a_log_scale_and_the_test_score_at_the_selected_step(tmp_path):
    fig = plot_metrics.figure([fake_run(tmp_path / "run")])
    loss, score = fig.axes[0], fig.axes[3]
    assert loss.get_yscale() == "log"
    assert {line.get_label() for line in loss.get_lines()} == {"run train", "run validation"}
    star = [line for line in score.get_lines() if line.get_label() == "run test"]
    assert len(star) == 1 and list(star[0].get_xdata()) == [20] and list(star[0].get_ydata()) == [66.0]


def test_the_command_writes_the_png(tmp_path):
    run = fake_run(tmp_path / "run")
    proc = run_cmd([sys.executable, "launch/plot_metrics.py", str(run)])
    assert proc.returncode == 0, proc.stderr
    assert (run / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    missing = run_cmd([sys.executable, "launch/plot_metrics.py", str(tmp_path / "nothing")])
    assert missing.returncode != 0 and "not found: give a run folder" in missing.stderr


def test_lines_that_are_not_records_are_skipped_with_a_warning(tmp_path, capsys):
    """A line cut by a crash mid-write (or one that is not a record) ended the plot with a traceback:
    it is skipped, one warning names it, and the records around it are plotted."""
    run = fake_run(tmp_path / "run")
    path = run / "metrics.jsonl"
    good = path.read_bytes()
    path.write_bytes(good.replace(b"\n", b'\n{"step": 25, "lo\0\0\n[1, 2]\n', 1) + b"\xff\xfe")
    train, evals, test = plot_metrics.load(run)
    assert [r["step"] for r in train] == [10, 20, 30, 40] and len(evals) == 2 and len(test) == 1
    err = capsys.readouterr().err
    assert f"warning: {path}: skipped 3 line(s) that are not records (line 2: " in err and len(err.splitlines()) == 1
    plot_metrics.figure([run])  # and the figure is drawn
