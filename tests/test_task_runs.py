"""A paper task end to end at world size 2 (torchrun): the issue's command (periodic
validation, best checkpoint kept, test score of that checkpoint, results files), and evaluation of
one adapter at world size 2 giving the same predictions and scores as at world size 1."""

from __future__ import annotations

import json
import sys

import pytest

from adept_dist.data.stats import wilson
from tests.conftest import ranks_cmd, run_cmd
from tests.taskutil import synthetic_rte, write_copy

pytestmark = [pytest.mark.dist, pytest.mark.slow]


@pytest.fixture(scope="module")
def rte_copy(tmp_path_factory):
    """A local RTE copy in the hub snapshot layout (rte/train-00000-of-00001.parquet); rows are
    built-in words so the demo model reads them: 400 train, 120 validation (-> 60 validation, 60 test)."""
    root = tmp_path_factory.mktemp("rte_copy")
    return write_copy(root, {"train": synthetic_rte(400, 0), "validation": synthetic_rte(120, 1)}, "parquet", "rte")


@pytest.fixture(scope="module")
def rte_run(rte_copy, tmp_path_factory):
    out = tmp_path_factory.mktemp("rte_run") / "OUT"
    cmd = ranks_cmd(
        "launch/train.py", "--ds_config", "ds_configs/zero3.json", "--task", "rte", "--data_dir", str(rte_copy),
        "--max_steps", "20", "--eval_every", "10", "--output_dir", str(out),
    )  # fmt: skip
    proc = run_cmd(cmd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout + proc.stderr


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_task_run_selects_the_best_checkpoint_and_reports_its_test_score(rte_run):
    out, log = rte_run
    results = json.loads((out / "results.json").read_text())
    assert (results["task"], results["method"], results["seed"], results["metrics"]) == (
        "rte",
        "adept",
        42,
        ["accuracy"],
    )
    assert results["data"]["train_rows"] == 400 and results["validation"]["examples"] == 60
    # ADePT on the built-in d=128, m=60, r=19: 60*128 + 128*19 + 19 + 19*128 + 128 = 12,691 (ZeRO-3 partitioned)
    assert results["trainable_parameters"] == 12691
    assert results["test"]["examples"] == 60 and 0.0 <= results["test"]["accuracy"] <= 100.0

    evals = [m for m in read_jsonl(out / "metrics.jsonl") if m.get("split") == "validation"]
    assert [m["step"] for m in evals] == [10, 20]
    best = max(evals, key=lambda m: (m["eval_accuracy"], -m["step"]))  # ties keep the earlier step
    assert results["selection"] == {"metric": "accuracy", "step": best["step"]}
    assert results["validation"]["accuracy"] == best["eval_accuracy"]
    adapter_cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["step"] == best["step"] and adapter_cfg["selected"]["metric"] == "accuracy"
    test = [m for m in read_jsonl(out / "metrics.jsonl") if m.get("split") == "test"]
    assert len(test) == 1 and test[0]["test_accuracy"] == results["test"]["accuracy"]

    preds = read_jsonl(out / "predictions" / "test.jsonl")
    assert len(preds) == 60 and all({"input", "prediction", "target"} <= set(p) for p in preds)
    # the input is what the model read: the task's formatting ("sentence1 : ...") up to the separator
    # (the built-in tokenizer lowercases)
    assert all(p["input"].startswith("sentence1 :") and p["input"].endswith("label :") for p in preds), preds[0]
    assert len({p["input"] for p in preds}) > 50
    right = sum(p["prediction"] == p["target"] for p in preds)
    assert results["test"]["accuracy"] == pytest.approx(100 * right / 60)  # accuracy = exact label match
    # every score with its n and 95% interval (Wilson for accuracy), every row with its own score
    assert results["n"]["test"] == 60 and results["interval_method"] == {"accuracy": "wilson"}
    assert results["intervals"]["test"]["accuracy"] == pytest.approx(list(wilson(right, 60)), abs=1e-3)
    assert [p["scores"]["accuracy"] for p in preds] == [float(p["prediction"] == p["target"]) for p in preds]
    table = (out / "results.md").read_text()
    assert "| rte | adept | 42 |" in table and "test accuracy" in table
    assert "results written to" in log


def test_eval_at_world_2_equals_world_1(rte_run, rte_copy, tmp_path):
    """The selected adapter, evaluated alone (--max_steps 0 --init_adapter) at world sizes 1 and 2:
    the same predictions, scores and (to float rounding) loss; and the test score the training run
    reported."""
    out, _ = rte_run
    args = ["launch/train.py", "--ds_config", "ds_configs/zero3.json", "--task", "rte", "--data_dir", str(rte_copy),
            "--max_steps", "0", "--init_adapter", str(out / "adapter")]  # fmt: skip
    one = run_cmd([sys.executable, *args, "--output_dir", str(tmp_path / "w1")])
    two = run_cmd(ranks_cmd(*args, "--output_dir", str(tmp_path / "w2")))
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    r1, r2 = (json.loads((tmp_path / w / "results.json").read_text()) for w in ("w1", "w2"))
    for split in ("validation", "test"):
        p1, p2 = (read_jsonl(tmp_path / w / "predictions" / f"{split}.jsonl") for w in ("w1", "w2"))
        assert p1 == p2
        assert r1[split]["accuracy"] == r2[split]["accuracy"]
        assert r1[split]["loss"] == pytest.approx(r2[split]["loss"], rel=1e-6)
    trained = json.loads((out / "results.json").read_text())
    assert r1["test"]["accuracy"] == trained["test"]["accuracy"]
    assert r1["validation"]["accuracy"] == trained["validation"]["accuracy"]
    assert read_jsonl(tmp_path / "w1" / "predictions" / "test.jsonl") == read_jsonl(out / "predictions" / "test.jsonl")
