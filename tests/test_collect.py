"""launch/collect_results.py (runs -> one table, mean ± std over seeds) and launch/sweep.py (the
commands of a tasks x methods x seeds sweep)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

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
    write(tmp_path / "odd", {**result("rte", "adept", 9, {"accuracy": 0.0}), "seed": "9"})  # off schema: skipped
    assert collect_results.main([str(tmp_path), "--output", str(tmp_path / "t.md")]) == 0
    out = capsys.readouterr()
    assert "broken/results.json is not valid JSON" in out.err
    assert 'results.json: field seed: expected an integer, got "9"' in out.err
    text = out.out
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
        f"launch/slurm/train.sbatch run.yaml --task rte --seed 42 --output_dir {tmp_path}/rte-pt-s42 "
        "--max_steps 100 --method pt"
    )
    local = sweep.commands(
        sweep.argparse.Namespace(tasks="cb", methods="dept", seeds="1", runs_dir="r", local=True, num_gpus=2,
                                 config=None, slurm=""), [])  # fmt: skip
    assert local[0][1] == ["deepspeed", "--num_gpus", "2", "launch/train.py", "--task", "cb", "--seed", "1",
                           "--output_dir", "r/cb-dept-s1", "--method", "dept", "--resume"]  # fmt: skip
    beside = sweep.commands(
        sweep.argparse.Namespace(tasks="cb", methods="dept", seeds="1", runs_dir="r", local=True, num_gpus=1,
                                 config=None, slurm="", master_port=29611), [])  # fmt: skip
    assert beside[0][1][:6] == ["deepspeed", "--num_gpus", "1", "--master_port", "29611", "launch/train.py"]


def test_sweep_of_bigbench_tasks_with_the_untrained_baseline(capsys):
    args = sweep.argparse.Namespace(tasks="bigbench:navigate", methods="adept,untrained", seeds="1,2", runs_dir="r",
                                    local=True, num_gpus=1, config=None, slurm="")  # fmt: skip
    runs = sweep.commands(args, ["--max_steps", "80"])
    assert [str(out) for out, _ in runs] == ["r/bigbench-navigate-adept-s1", "r/bigbench-navigate-adept-s2",
                                             "r/bigbench-navigate-untrained-s1"]  # untrained: one seed  # fmt: skip
    # the baseline's own --max_steps 0 comes after the shared flags, so it wins
    assert runs[2][1][-5:] == ["--method", "adept", "--max_steps", "0", "--resume"]
    try:
        sweep.commands(sweep.argparse.Namespace(**{**vars(args), "tasks": "rtee"}), [])
        raise AssertionError("an unknown task must be refused")
    except SystemExit as exc:
        assert "unknown task(s) rtee" in str(exc)


def test_sweep_of_data_file_folders_and_their_name_in_the_table(tmp_path, capsys):
    """files:DIR (launch/fetch_data.py's layout) runs DIR's three files; the table names the task DIR's name."""
    data = tmp_path / "movie_sentiment"
    data.mkdir()
    for split in ("train", "dev", "test"):
        (data / f"{split}.jsonl").write_text('{"input": "a", "target": "b"}\n')
    args = sweep.argparse.Namespace(tasks=f"files:{data}", methods="pt", seeds="7", runs_dir="r", local=True,
                                    num_gpus=1, config=None, slurm="")  # fmt: skip
    [(out, cmd)] = sweep.commands(args, [])
    assert str(out) == "r/movie_sentiment-pt-s7"
    assert cmd[4:11] == ["--train_file", f"{data}/train.jsonl", "--eval_file", f"{data}/dev.jsonl", "--test_file",
                         f"{data}/test.jsonl", "--seed"]  # fmt: skip
    other = tmp_path / "elsewhere" / "movie_sentiment"  # another folder of the same name: the same run folders
    shutil.copytree(data, other)
    with pytest.raises(SystemExit, match="two tasks would share the run folders movie_sentiment-\\*"):
        sweep.commands(sweep.argparse.Namespace(**{**vars(args), "tasks": f"files:{data},files:{other}"}), [])
    (data / "dev.jsonl").unlink()
    with pytest.raises(SystemExit, match="files:DIR \\(a folder holding train.jsonl, dev.jsonl and test.jsonl\\)"):
        sweep.commands(args, [])
    for seed in (1, 2):  # results.json records a run of data files by its training file
        (tmp_path / "runs" / f"s{seed}").mkdir(parents=True)
        r = result(f"{data}/train.jsonl", "pt", seed, {"accuracy": 50.0 + seed})
        (tmp_path / "runs" / f"s{seed}" / "results.json").write_text(json.dumps(r))
    assert collect_results.main([str(tmp_path / "runs")]) == 0
    text = capsys.readouterr().out
    assert "| method | movie_sentiment (accuracy) |" in text and "| pt | 51.5 ± 0.7 (n=2) |" in text
    assert collect_results.task_name("own/rows.csv") == "own/rows.csv"  # not DIR/train.*: the path itself


def test_collect_untrained_and_majority_rows_and_the_plot(tmp_path, capsys):
    targets = ["True"] * 6 + ["False"] * 4  # majority: 60%
    for method, seed, acc, steps in (("adept", 1, 80.0, 40), ("adept", 2, 70.0, 40), ("pt", 1, 60.0, 40),
                                     ("adept", 1, 50.0, 0)):  # fmt: skip
        r = result("bigbench:navigate", method, seed, {"accuracy": acc})
        r["max_steps"] = steps
        d = tmp_path / f"{method}-{seed}-{steps}"
        (d / "predictions").mkdir(parents=True)
        (d / "results.json").write_text(json.dumps({**r, "test": {"accuracy": acc, "examples": 10},
                                                     "validation": {"accuracy": acc, "examples": 10}}))  # fmt: skip
        for split in ("test", "validation"):
            (d / "predictions" / f"{split}.jsonl").write_text(
                "".join(json.dumps({"target": t}) + "\n" for t in targets)
            )
        evals = [{"step": s, "split": "validation", "eval_accuracy": acc - 10 + s / 4} for s in range(0, steps + 1, 20)]
        (d / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals or [{"step": 0}]))
    assert collect_results.main([str(tmp_path), "--plot", str(tmp_path / "c.png")]) == 0
    text = capsys.readouterr().out
    rows = [line for line in text.splitlines() if line.startswith("| ") and "(accuracy)" not in line][:4]
    # fixed order: adept, pt, untrained (the max_steps 0 run), majority class (6 of 10 targets)
    assert rows == ["| adept | 75.0 ± 7.1 (n=2) | 75.0 |", "| pt | 60.0 | 60.0 |", "| untrained | 50.0 | 50.0 |",
                    "| majority class | 60.0 | 60.0 |"]  # fmt: skip
    assert "BIG-bench avg" in text
    assert (tmp_path / "c.png").stat().st_size > 1000


def _run_with_rows(root: Path, task: str, method: str, seed: int, metric: str, rows: list[dict]) -> None:
    d = root / f"{task}-{method}-s{seed}"
    (d / "predictions").mkdir(parents=True)
    right = 100.0 * sum(r["prediction"] == r["target"] for r in rows) / len(rows)
    (d / "results.json").write_text(json.dumps(result(task, method, seed, {metric: right})))
    (d / "predictions" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_paired_comparisons_on_the_same_rows(tmp_path, capsys):
    """Two methods on the same 20 rows and seeds: the exact McNemar test pools the rows only one got
    right (seed 1: 8 and 0, seed 2: 6 and 1: 14 and 1, p = 2 * (1 + 15) / 2^15); a run on other rows
    is never paired; a metric that is not a mean over rows (f1) is compared by a paired bootstrap."""
    targets = ["1", "0"] * 10
    inputs = [f"row {i}" for i in range(20)]

    def rows(wrong: set[int], scores=True, other_inputs=False) -> list[dict]:
        out = []
        for i, t in enumerate(targets):
            pred = t if i not in wrong else ("0" if t == "1" else "1")
            row = {"index": i, "input": ("other " if other_inputs else "") + inputs[i], "prediction": pred, "target": t}
            if scores:  # as evaluation writes them; without, they are worked out from the predictions
                row["scores"] = {"accuracy": float(pred == t)}
            out.append(row)
        return out

    _run_with_rows(tmp_path, "rte", "adept", 1, "accuracy", rows(set(range(2))))  # wrong on 0, 1
    _run_with_rows(tmp_path, "rte", "pt", 1, "accuracy", rows(set(range(10))))  # wrong on 0..9: 8 only pt wrong
    _run_with_rows(tmp_path, "rte", "adept", 2, "accuracy", rows({0, 19}, scores=False))
    _run_with_rows(tmp_path, "rte", "pt", 2, "accuracy", rows(set(range(7))))  # only adept wrong: 19; only pt: 1..6
    _run_with_rows(tmp_path, "rte", "dept", 1, "accuracy", rows(set(), other_inputs=True))  # other rows: unpaired
    _run_with_rows(tmp_path, "mrpc", "adept", 1, "f1", rows(set()))
    _run_with_rows(tmp_path, "mrpc", "pt", 1, "f1", rows(set(range(0, 20, 2))))  # every "1" missed
    out = tmp_path / "c.json"
    assert collect_results.main([str(tmp_path), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    found = json.loads(out.read_text())
    entries = {(e["task"], e["a"], e["b"]): e for e in found["paired"]}
    assert set(entries) == {("rte", "adept", "pt"), ("mrpc", "adept", "pt")}
    rte = entries[("rte", "adept", "pt")]
    assert (rte["only_a"], rte["only_b"], rte["rows"], rte["seeds"]) == (14, 1, 40, [1, 2])
    assert rte["p_value"] == pytest.approx(2 * 16 / 2**15) and rte["test"] == "exact McNemar"
    assert [(s["only_a"], s["only_b"]) for s in rte["per_seed"]] == [(8, 0), (6, 1)]
    mrpc = entries[("mrpc", "adept", "pt")]
    assert mrpc["test"] == "paired bootstrap" and mrpc["p_value"] < 0.01  # 100 against 0 on every draw
    assert "| rte | adept | pt | accuracy | exact McNemar | 1,2 | 40 | 14 | 1 | 0.000977 | adept > pt |" in text
    assert found["table"]["adept"]["rte"]["accuracy"]["n"] == 2
