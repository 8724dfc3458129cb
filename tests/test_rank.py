"""Ranked options (--eval_mode rank): each option's log-probability after its row's source, computed
on top of the cached prompt and source, equals scoring source + option with its own full forward."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from adept_dist.data.examples import Example, collate
from adept_dist.model.adapters import build_adapter
from adept_dist.model.backbone import load_backbone
from adept_dist.model.lm import AdeptLM
from tests.conftest import deepspeed_cmd, run_cmd


def brute_force(model: AdeptLM, source: list[int], option: list[int]) -> float:
    """-(summed cross-entropy of the option's tokens) from one full forward of source + option."""
    batch = collate([Example(source + option, len(option), len(source))], pad_id=3)
    loss_sum, n = model(**batch)
    assert n.item() == len(option)
    return -loss_sum.item()


@pytest.mark.parametrize("method", ["adept", "dept", "pt"])
def test_ranked_options_equal_a_full_forward_each(tiny_model_dir, method):
    """Rows of different source lengths (left padding), different numbers of options of different
    lengths (one token to four, EOS included as in training's targets). Measured largest differences
    on the tiny NF4 model in fp32 (2026-12-06): 4.8e-7 (adept, dept) and 1.4e-6 (pt) on
    log-probabilities from -4.7 to -19.7 (summation order), hence atol 1e-4."""
    backbone = load_backbone(str(tiny_model_dir), "nf4", torch.device("cpu"), dtype=torch.float32)
    torch.manual_seed(0)
    adapter = build_adapter(method, 4, 64, dropout=0.0, **({"max_length": 16} if method == "dept" else {}))
    with torch.no_grad():
        for p in adapter.parameters():
            p.normal_(0, 0.3)
    model = AdeptLM(backbone, adapter.eval()).eval()
    eos = 2
    sources = [[1, 10, 11, 12], [1, 20, 21, 22, 23, 24], [1, 30]]
    options = [[[40, eos], [41, 42, eos]], [[eos], [50, 51, 52, eos], [53, eos]], [[60, 61, eos]]]
    src = collate([Example(s, 0, len(s)) for s in sources], pad_id=3, left=True)
    ranked = model.option_logprobs(src["input_ids"], src["attention_mask"], options)
    once = model.option_logprobs(src["input_ids"], src["attention_mask"], options,
                                 prompt_kv=model.prompt_kv(torch.device("cpu")))  # fmt: skip
    assert ranked == once
    for source, opts, got in zip(sources, options, ranked):
        assert [n for _, n in got] == [len(o) for o in opts]
        want = [brute_force(model, source, o) for o in opts]
        assert [s for s, _ in got] == pytest.approx(want, abs=1e-4)
        assert all(s < 0 for s, _ in got)


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.dist
def test_ranked_evaluation_is_the_same_at_world_1_and_2(tmp_path):
    """--eval_mode rank on the built-in task, the untrained prompt (--max_steps 0) under ZeRO-3: at
    world 1 and world 2 the same chosen options and, to fp32 rounding, the same option scores; every
    row chose its top-scored option; the untrained prompt, which generates no label word (accuracy 0
    in generate mode), now picks one for every row."""
    args = ["--ds_config", "ds_configs/zero3.json", "--max_steps", "0", "--max_eval_samples", "40", "--eval_mode",
            "rank", "--eval_batch_size", "8"]  # fmt: skip
    one = run_cmd([sys.executable, "launch/train.py", *args, "--output_dir", str(tmp_path / "w1")])
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_cmd(deepspeed_cmd("launch/train.py", *args, "--output_dir", str(tmp_path / "w2")))
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    w1, w2 = (read_rows(tmp_path / w / "predictions" / "validation.jsonl") for w in ("w1", "w2"))
    assert len(w1) == len(w2) == 40
    assert [r["prediction"] for r in w1] == [r["prediction"] for r in w2]
    for a, b in zip(w1, w2):
        assert a["option_scores"].keys() == b["option_scores"].keys() == {"negative", "positive"}
        assert list(a["option_scores"].values()) == pytest.approx(list(b["option_scores"].values()), abs=1e-3)
        assert a["prediction"] == max(a["option_scores"], key=a["option_scores"].get)
    results = json.loads((tmp_path / "w1" / "results.json").read_text())
    assert results["validation"]["accuracy"] == pytest.approx(
        100 * sum(r["prediction"] == r["target"] for r in w1) / 40
    )
