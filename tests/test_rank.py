"""Ranked options (--eval_mode rank): each option's log-probability after its row's source, computed
on top of the cached prompt and source, equals scoring source + option with its own full forward."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from adept_dist.commands.predict import encode_sources
from adept_dist.data.examples import Example, collate
from adept_dist.distributed.comm import Dist
from adept_dist.model.adapters import build_adapter
from adept_dist.model.backbone import load_backbone, load_tokenizer
from adept_dist.model.lm import AdeptLM
from adept_dist.run.evaluation import option_ids, rank_examples, target_loss
from tests.conftest import ranks_cmd, run_cmd, write_jsonl
from tests.test_predict import WORDS, tiny_adapter  # noqa: F401 - a fixture


def brute_force(model: AdeptLM, source: list[int], option: list[int]) -> float:
    """-(summed cross-entropy of the option's tokens) from one full forward of source + option."""
    batch = collate([Example(source + option, len(option), len(source))], pad_id=3)
    loss_sum, n = model(**batch)
    assert n.item() == len(option)
    return -loss_sum.item()


def perturbed_model(model_dir: Path, method: str, seed: int) -> AdeptLM:
    """The tiny NF4 model (fp32 compute) with an m=4 adapter whose every parameter is drawn from
    N(0, 0.3), so that the prompt and the offsets all matter; no dropout, eval mode."""
    backbone = load_backbone(str(model_dir), "nf4", torch.device("cpu"), dtype=torch.float32)
    torch.manual_seed(seed)
    adapter = build_adapter(method, 4, 64, dropout=0.0, **({"max_length": 16} if method == "dept" else {}))
    with torch.no_grad():
        for p in adapter.parameters():
            p.normal_(0, 0.3)
    return AdeptLM(backbone, adapter.eval()).eval()


@pytest.mark.parametrize("method", ["adept", "dept", "pt"])
def test_ranked_options_equal_a_full_forward_each(tiny_model_dir, method):
    """Rows of different source lengths (left padding), different numbers of options of different
    lengths (one token to four, EOS included as in training's targets). Measured largest differences
    on the tiny NF4 model in fp32 (2026-12-06): 4.8e-7 (adept, dept) and 1.4e-6 (pt) on
    log-probabilities from -4.7 to -19.7 (summation order), hence atol 1e-4."""
    model = perturbed_model(tiny_model_dir, method, seed=0)
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


def test_the_ranked_evaluations_loss_is_read_off_the_targets_scores(tiny_model_dir):
    """With every target among its row's options, rank_examples reads the validation loss off the
    target's score instead of a teacher-forced forward per batch: the same (summed loss, tokens) as
    target_loss over the same examples (to the 1e-4 of the test above), and the forward path again
    when one target is missing from its options."""
    model = perturbed_model(tiny_model_dir, "adept", seed=1)
    eos, d = 2, Dist(0, 1, 0, torch.device("cpu"))
    rows = [([1, 10, 11], [40, eos]), ([1, 20, 21, 22, 23], [41, 42, eos]), ([1, 30], [eos])]
    examples = [Example(src + tgt, len(tgt), len(src)) for src, tgt in rows]
    options = [[[40, eos], [43, eos]], [[44, eos], [41, 42, eos]], [[eos], [45, 46, eos]]]
    want = sum(target_loss(model, examples, [i], 3, d, True) for i in range(len(rows)))
    scored, sums = rank_examples(model, examples, options, 3, d, batch_size=2, with_loss=True)
    assert sums[1].item() == want[1].item() == 6  # 2 + 3 + 1 target tokens, EOS included
    assert sums[0].item() == pytest.approx(want[0].item(), abs=1e-4)
    assert [i for i, _ in sorted(scored)] == [0, 1, 2]
    options[2] = [[45, 46, eos]]  # row 2's target is no option: the teacher-forced forward
    _, forward = rank_examples(model, examples, options, 3, d, batch_size=2, with_loss=True)
    assert forward.tolist() == pytest.approx(want.tolist(), abs=1e-6)


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
    two = run_cmd(ranks_cmd("launch/train.py", *args, "--output_dir", str(tmp_path / "w2")))
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


def test_predict_ranks_each_rows_options(predict, tmp_path, tiny_adapter, tiny_model_dir):  # noqa: F811 - the fixture
    """predict.py --eval_mode rank: the prediction is the top option (a row's own options, else
    --options), every option's score is written, and each score is the full forward's log-probability
    of that option (EOS included) after the row's source; a row without options is one clear line."""
    folder, adapter = tiny_adapter
    rows = [{"input": WORDS[0]}, {"input": WORDS[1], "options": ["the", "soup was", "pasta"]}, {"input": WORDS[2]}]
    inp = write_jsonl(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "p.jsonl"
    code, err = predict("--adapter", str(folder), "--input", str(inp), "--output", str(out), "--eval_mode", "rank",
                        "--options", "positive", "negative")  # fmt: skip
    assert code == 0, err
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [list(r["option_scores"]) for r in got] == [["positive", "negative"], ["the", "soup was", "pasta"],
                                                       ["positive", "negative"]]  # fmt: skip
    tok = load_tokenizer(str(tiny_model_dir))
    model = AdeptLM(
        load_backbone(str(tiny_model_dir), "none", torch.device("cpu"), dtype=torch.float32), adapter
    ).eval()
    examples, _ = encode_sources([r["input"] for r in rows], tok, 64, " Label : ")
    for ex, row in zip(examples, got):
        assert row["prediction"] == max(row["option_scores"], key=row["option_scores"].get)
        ids = option_ids(tok, " Label : ", [list(row["option_scores"])])[0]
        want = [brute_force(model, ex.input_ids, o) for o in ids]
        assert list(row["option_scores"].values()) == pytest.approx(want, abs=1e-4)
    code, err = predict("--adapter", str(folder), "--input", str(inp), "--output", str(tmp_path / "q.jsonl"),
                        "--eval_mode", "rank")  # fmt: skip
    assert code == 2 and "rows.jsonl:1: --eval_mode rank needs options" in err
    assert not (tmp_path / "q.jsonl").exists()
