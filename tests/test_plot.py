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
