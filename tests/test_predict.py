"""launch/predict.py: one prediction per row from an adapter or a merged export, the same at world
size 1 and 2 (ZeRO-3), greedy or sampled; bad input is one clear line and never overwrites."""

from __future__ import annotations

import json
import re
import shutil
import sys

import pytest
import torch

from adept_dist.commands.predict import encode_sources
from adept_dist.data.examples import collate
from adept_dist.export.adapter import CONFIG, WEIGHTS, adapter_config, save_adapter
from adept_dist.model.backbone import load_backbone, load_tokenizer
from adept_dist.model.lm import AdeptLM
from tests.conftest import ranks_cmd, run_cmd, save_tiny_llama, write_jsonl
from tests.test_model import perturbed_adept

WORDS = ["review : the soup was fantastic", "review : the staff was rude", "the movie", "the pasta was truly"]


@pytest.fixture
def tiny_adapter(tmp_path, tiny_model_dir):
    adapter = perturbed_adept(64)
    cfg = adapter_config(adapter, base_model=str(tiny_model_dir), vocab_size=120, separator=" Label : ",
                         max_length=64, quant="none")  # fmt: skip
    return save_adapter(tmp_path / "adapter", dict(adapter.named_parameters()), cfg), adapter


def test_predictions_are_the_models_own_generation(predict, tmp_path, tiny_adapter, tiny_model_dir):
    folder, adapter = tiny_adapter
    rows = [{"input": w, "id": i} for i, w in enumerate(WORDS)]
    inp = write_jsonl(tmp_path / "rows.jsonl", rows)
    code, err = predict("--adapter", str(folder), "--input", str(inp), "--output", str(tmp_path / "p.jsonl"),
                        "--max_new_tokens", "6", "--batch_size", "3")  # fmt: skip
    assert code == 0, err
    got = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [{k: r[k] for k in ("input", "id")} for r in got] == rows  # every row, in order, fields kept
    # the same rows decoded directly, one by one, without any batching
    tok = load_tokenizer(str(tiny_model_dir))
    model = AdeptLM(load_backbone(str(tiny_model_dir), "none", torch.device("cpu"), dtype=torch.float32), adapter)
    examples, _ = encode_sources(WORDS, tok, 64, " Label : ")
    for ex, row in zip(examples, got):
        batch = collate([ex], tok.pad_token_id, left=True)
        ids = model.eval().generate(batch["input_ids"], batch["attention_mask"], 6, tok.eos_token_id)[0].tolist()
        ids = ids[: ids.index(tok.eos_token_id)] if tok.eos_token_id in ids else ids
        assert row["prediction"] == tok.decode(ids, skip_special_tokens=True).strip()
    assert any(r["prediction"] for r in got)  # a random adapter still says something


def test_sampled_predictions_follow_the_seed(predict, tmp_path, tiny_adapter):
    folder, _ = tiny_adapter
    inp = write_jsonl(tmp_path / "rows.jsonl", [{"input": w} for w in WORDS * 3])

    def sample(seed: str, name: str) -> list[str]:
        out = tmp_path / name
        code, err = predict("--adapter", str(folder), "--input", str(inp), "--output", str(out), "--do_sample",
                            "--temperature", "3", "--seed", seed, "--max_new_tokens", "8")  # fmt: skip
        assert code == 0, err
        return [json.loads(line)["prediction"] for line in out.read_text().splitlines()]

    a, b, c = sample("1", "a.jsonl"), sample("1", "b.jsonl"), sample("2", "c.jsonl")
    assert a == b  # reproducible
    assert a != c  # 12 rows x 8 tokens at temperature 3 over a 120-word vocabulary: never all equal


def test_task_rows_are_formatted_like_training(predict, tmp_path, tiny_adapter):
    """An adapter trained on a task reads that task's raw rows (here SST-2's 'sentence')."""
    folder, _ = tiny_adapter
    cfg = json.loads((folder / CONFIG).read_text())
    (folder / CONFIG).write_text(json.dumps({**cfg, "task": "sst2"}))
    raw = write_jsonl(tmp_path / "raw.jsonl", [{"sentence": w, "label": 1} for w in WORDS])
    text = write_jsonl(tmp_path / "text.jsonl", [{"input": f"sentence: {w}"} for w in WORDS])
    for inp, out in ((raw, "a.jsonl"), (text, "b.jsonl")):
        code, err = predict("--adapter", str(folder), "--input", str(inp), "--output", str(tmp_path / out),
                            "--max_new_tokens", "3")  # fmt: skip
        assert code == 0, err
    a = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert [r["prediction"] for r in a] == [r["prediction"] for r in b]
    assert a[0]["sentence"] == WORDS[0] and a[0]["label"] == 1
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "x"}])
    code, err = predict("--adapter", str(folder), "--input", str(bad), "--output", str(tmp_path / "c.jsonl"))
    assert code == 2 and "bad.jsonl:1: row has no 'input' and lacks the sst2 field 'sentence'" in err


def test_bad_input_is_one_clear_line(predict, tmp_path, tiny_adapter):
    folder, _ = tiny_adapter
    inp = write_jsonl(tmp_path / "rows.jsonl", [{"input": w} for w in WORDS])
    out = tmp_path / "p.jsonl"
    out.write_text("earlier results\n")
    base = ["--adapter", str(folder), "--input", str(inp)]

    def fails(*argv: str, match: str) -> None:
        code, err = predict(*argv)
        assert code == 2, err
        lines = [ln for ln in err.splitlines() if ln.startswith("error")]
        assert len(lines) == 1 and match in lines[0], err

    fails(*base, "--output", str(out), match="exists: pass --overwrite")
    assert out.read_text() == "earlier results\n"  # never overwritten
    other = tmp_path / "p2.jsonl"
    fails("--adapter", str(folder), "--input", str(tmp_path / "nope.jsonl"), "--output", str(other), match="not found")
    fails("--adapter", str(tmp_path / "nope"), "--input", str(inp), "--output", str(other), match="is not a folder")
    write_jsonl(tmp_path / "noinput.jsonl", [{"input": "a"}, {"text": "b"}])
    fails("--adapter", str(folder), "--input", str(tmp_path / "noinput.jsonl"), "--output", str(other),
          match="noinput.jsonl:2: row has no string 'input'")  # fmt: skip
    (tmp_path / "broken.jsonl").write_text('{"input": "a"}\n{"input": \n')
    fails("--adapter", str(folder), "--input", str(tmp_path / "broken.jsonl"), "--output", str(other),
          match="broken.jsonl:2: not valid JSON")  # fmt: skip
    small = save_tiny_llama(tmp_path / "small", hidden=32)
    fails(*base, "--output", str(other), "--model", str(small), match="hidden size 64 but model")
    fails(*base, "--output", str(other), "--max_new_tokens", "600", match="positions")  # 512 positions
    fails(*base, "--output", str(other), "--do_sample", "--temperature", "0", match="temperature")
    (folder / WEIGHTS).write_bytes(b"\x00" * 10)
    fails(*base, "--output", str(other), match="is corrupt")
    assert not other.exists()


# ----------------------------------------------------------------------------- a trained adapter
@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The built-in default trained for 300 steps in one process, validated on 100 held-out reviews:
    the README's default run (global batch 16 = 8 x 2 ranks), here as 8 x 2 accumulation steps."""
    out = tmp_path_factory.mktemp("demo") / "run"
    proc = run_cmd([sys.executable, "launch/train.py", "--ds_config", "ds_configs/zero2.json", "--output_dir",
                    str(out), "--max_steps", "300", "--max_eval_samples", "100", "--grad_accum", "2"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def dev_rows(n: int = 100) -> list[dict]:
    from adept_dist.model import builtin

    lines = (builtin.builtin_dir() / "dev.jsonl").read_text().splitlines()[:n]
    return [json.loads(line) for line in lines]


def read_predictions(path) -> list[str]:
    return [json.loads(line)["prediction"] for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_trained_adapter_and_its_merged_export_predict_the_same(demo_run, tmp_path):
    """predict.py on the run's validation rows gives exactly the run's own validation predictions;
    the merged export predicts the same; both score like the run (the adapter learnt the task)."""
    rows = write_jsonl(tmp_path / "dev.jsonl", dev_rows())
    proc = run_cmd([sys.executable, "launch/predict.py", "--adapter", str(demo_run / "adapter"), "--input", str(rows),
                    "--output", str(tmp_path / "p.jsonl")])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    preds = read_predictions(tmp_path / "p.jsonl")
    assert preds == read_predictions(demo_run / "predictions" / "validation.jsonl")
    accuracy = sum(p == r["target"] for p, r in zip(preds, dev_rows())) / 100
    assert accuracy >= 0.9, (
        accuracy
    )  # chance is 0.5; measured 1.0 (100 of 100) after these 300 steps (2026-11-29, 2-core CPU); the same 300
    # steps with a global batch of 8 (no accumulation) gave 0.80 on that machine's built-in model, 1.0 on the one before
    proc = run_cmd([sys.executable, "launch/export.py", "--adapter", str(demo_run / "adapter"), "--merge",
                    "--output", str(tmp_path / "merged")])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cmd([sys.executable, "launch/predict.py", "--adapter", str(tmp_path / "merged"), "--input", str(rows),
                    "--output", str(tmp_path / "m.jsonl")])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_predictions(tmp_path / "m.jsonl") == preds
    shutil.rmtree(tmp_path / "merged")


@pytest.mark.slow
@pytest.mark.dist
def test_world2_zero3_predictions_equal_world1(demo_run, tmp_path):
    """Under torchrun (2 ranks, ZeRO-3 partitioned backbone) the predictions, greedy
    and sampled, are those of one process: batches and their seeds do not depend on the ranks."""
    rows = write_jsonl(tmp_path / "dev.jsonl", dev_rows(60))
    adapter = str(demo_run / "adapter")
    sampled = ["--do_sample", "--temperature", "2", "--seed", "7", "--max_new_tokens", "6"]
    for name, extra in (("greedy", []), ("sampled", sampled)):
        one = run_cmd([sys.executable, "launch/predict.py", "--adapter", adapter, "--input", str(rows), "--output",
                       str(tmp_path / f"{name}1.jsonl"), *extra])  # fmt: skip
        assert one.returncode == 0, one.stderr[-3000:]
        two = run_cmd(ranks_cmd("launch/predict.py", "--adapter", adapter, "--input", str(rows), "--output",
                                    str(tmp_path / f"{name}2.jsonl"), *extra))  # fmt: skip
        assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
        held, whole = re.search(r"ZeRO-3: rank 0 holds ([\d,]+) of ([\d,]+)", two.stdout + two.stderr).groups()
        assert int(held.replace(",", "")) < 0.6 * int(whole.replace(",", ""))  # the backbone is partitioned
        assert (tmp_path / f"{name}1.jsonl").read_text() == (tmp_path / f"{name}2.jsonl").read_text()
    greedy, sampled_preds = read_predictions(tmp_path / "greedy1.jsonl"), read_predictions(tmp_path / "sampled1.jsonl")
    assert greedy != sampled_preds  # temperature 2 changes some of the 60 rows' answers
