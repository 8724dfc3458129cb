"""launch/collect_results.py (runs -> one table, mean ± std over seeds) and launch/sweep.py (the
commands of a tasks x methods x seeds sweep)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "launch"))

import collect_results  # noqa: E402
import sweep  # noqa: E402


def result(task, method, seed, metrics: dict, split="test") -> dict:
    return {"task": task, "method": method, "seed": seed, "k_shot": None, "metrics": list(metrics),
            "validation": metrics, split: metrics}  # fmt: skip


def write(root: Path, r: dict) -> None:
    d = root / f"{r['task']}-{r['method']}-s{r['seed']}"
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps(r))


def test_collect_means_stds_and_family_averages(tmp_path, capsys):
    for seed, acc in ((1, 70.0), (2, 72.0), (3, 74.0)):  # rte adept: mean 72, sample std 2 (deviations -2, 0, 2)
        write(tmp_path, result("rte", "adept", seed, {"accuracy": acc}))
    write(tmp_path, result("rte", "pt", 1, {"accuracy": 60.0}))
    for seed, f1 in ((1, 80.0), (2, 90.0)):  # mrpc adept: first metric accuracy; f1 listed in the long table
        write(tmp_path, result("mrpc", "adept", seed, {"accuracy": 84.0, "f1": f1}))
    write(tmp_path, result("cb", "adept", 1, {"macro_f1": 90.0, "accuracy": 95.0}))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text("{")  # skipped with a message, not a crash
    assert collect_results.main([str(tmp_path), "--output", str(tmp_path / "t.md")]) == 0
    text = capsys.readouterr().out
    assert (tmp_path / "t.md").read_text() == text
    head = next(line for line in text.splitlines() if line.startswith("| method"))
    assert head == "| method | mrpc (accuracy) | rte (accuracy) | cb (macro_f1) | GLUE avg | SuperGLUE avg |"
    adept = next(line for line in text.splitlines() if line.startswith("| adept |"))
    # mrpc: 84, 84 -> 84.0 ± 0.0 (n=2); rte 72.0 ± 2.0 (n=3); cb one seed: 90.0
    # GLUE avg of task means (84 + 72) / 2 = 78.0, from 2 of the 8 GLUE tasks; SuperGLUE 90.0 (1/6)
    assert adept == "| adept | 84.0 ± 0.0 (n=2) | 72.0 ± 2.0 (n=3) | 90.0 | 78.0 (2/8) | 90.0 (1/6) |"
    assert "| pt | - | 60.0 | - | 60.0 (1/8) |" in text
    assert "| mrpc | adept | f1 | 2 | 85.00 | 7.07 |" in text  # mean of 80, 90; std sqrt(50) = 7.07


def test_collect_without_results_is_an_error(tmp_path, capsys):
    assert collect_results.main([str(tmp_path)]) == 2
    assert "no results.json with test scores" in capsys.readouterr().err


def test_sweep_dry_run_lists_every_run_and_skips_finished(tmp_path, capsys):
    write(tmp_path, result("rte", "adept", 42, {"accuracy": 1.0}))  # rte-adept-s42 is done
    rc = sweep.main(["--config", "run.yaml", "--tasks", "rte,cb", "--methods", "adept,pt", "--seeds", "42",
                     "--runs_dir", str(tmp_path), "--dry_run", "--", "--max_steps", "100"])  # fmt: skip
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"# {tmp_path}/rte-adept-s42: done, skipped"
    assert len(lines) == 4 and all(line.startswith("sbatch --job-name=adept-") for line in lines[1:])
    assert lines[1].endswith(
        f"launch/slurm/train.sbatch run.yaml --task rte --method pt --seed 42 --output_dir {tmp_path}/rte-pt-s42 "
        "--max_steps 100"
    )
    local = sweep.commands(
        sweep.argparse.Namespace(tasks="cb", methods="dept", seeds="1", runs_dir="r", local=True, num_gpus=2,
                                 config=None, slurm=""), [])  # fmt: skip
    assert local[0][1] == ["deepspeed", "--num_gpus", "2", "launch/train.py", "--task", "cb", "--method", "dept",
                           "--seed", "1", "--output_dir", "r/cb-dept-s1", "--resume"]  # fmt: skip
