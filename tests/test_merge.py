"""Merged export: E + FFN(E) as the embedding table, the soft prompt as a tensor file, the output
head untied where the base model tied it; the same logits as base model + adapter."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from adept_dist.data.examples import Example, collate
from adept_dist.export.adapter import AdapterFileError, adapter_config, save_adapter
from adept_dist.export.merge import PROMPT_FILE, load_merged_prompt, merge, read_merge_info
from adept_dist.model.adapters import build_adapter
from adept_dist.model.backbone import ModelError, load_backbone
from adept_dist.model.lm import AdeptLM
from tests.conftest import save_tiny_llama
from tests.test_model import perturbed_adept

BATCH = collate([Example([1, 10, 11, 12, 13, 2], 3, 3), Example([1, 20, 21, 2], 2, 2)], pad_id=3)


def saved_adapter(root, base, adapter, **extra):
    return save_adapter(
        root / "adapter",
        dict(adapter.named_parameters()),
        adapter_config(adapter, base_model=str(base), separator=" Label : ", **extra),
    )


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def merged(request, tmp_path_factory):
    """(base folder, adapter module, merged folder) for a tied and an untied tiny LLaMA."""
    root = tmp_path_factory.mktemp("merge")
    base = save_tiny_llama(root / "base", seed=3, tie=request.param)
    adapter = perturbed_adept(64, seed=4)
    merge(str(saved_adapter(root, base, adapter)), str(root / "merged"), log=lambda s: None)
    return base, adapter, root / "merged", request.param


def hf_logits(folder, prompt, batch, quant="none"):
    """Logits of a plain transformers model given inputs_embeds = [prompt ; embed(ids)]: what any
    runtime that accepts input embeddings does with the merged export."""
    model = load_backbone(str(folder), quant, torch.device("cpu"), dtype=torch.float32)
    bsz = batch["input_ids"].shape[0]
    e = model.get_input_embeddings()(batch["input_ids"])
    embeds = torch.cat([prompt.expand(bsz, -1, -1), e], dim=1)
    mask = torch.cat([torch.ones(bsz, prompt.shape[0], dtype=torch.long), batch["attention_mask"]], dim=1)
    with torch.no_grad():
        return model(inputs_embeds=embeds, attention_mask=mask).logits


@pytest.mark.parametrize("quant", ["none", "nf4"])
def test_merged_model_gives_the_logits_of_base_plus_adapter(merged, quant):
    """Tolerance: fp32 compute on both sides; the merged table is computed by the very operation the
    unmerged model applies per token, so the logits agree to float rounding (measured max
    difference 8.9e-8 for both the tied and the untied model, 2026-11-24: the unmerged side runs the
    FFN on the batch's distinct ids, a matmul of another shape); atol 1e-5 on logits ~0.4."""
    base, adapter, out, tied = merged
    backbone = load_backbone(str(base), quant, torch.device("cpu"), dtype=torch.float32)
    unmerged = AdeptLM(backbone, adapter.eval()).eval()
    with torch.no_grad():
        embeds, mask, _ = unmerged._inputs(BATCH["input_ids"], BATCH["attention_mask"])
        expected = backbone(inputs_embeds=embeds, attention_mask=mask).logits
    prompt = load_file(str(out / PROMPT_FILE))["prompt"]
    got = hf_logits(out, prompt, BATCH, quant)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    # and the check can fail: the base model with the prompt but no offset gives other logits
    assert (hf_logits(base, prompt, BATCH, quant) - expected).abs().max() > 1e-3


def test_tied_head_is_untied_and_keeps_the_original_table(merged):
    base, adapter, out, tied = merged
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is False
    original = load_file(str(base / "model.safetensors"))
    written = load_file(str(out / "model.safetensors"))
    table = original["model.embed_tokens.weight"]
    head = table if tied else original["lm_head.weight"]
    assert ("lm_head.weight" in original) is (not tied)  # transformers drops a tied head from the file
    torch.testing.assert_close(written["lm_head.weight"], head, rtol=0, atol=0)
    with torch.no_grad():
        expected = adapter.eval().offset(table[None])[0]  # e + relu(e A + a) B + b, row by row
    torch.testing.assert_close(written["model.embed_tokens.weight"], expected, rtol=0, atol=1e-6)
    assert (written["model.embed_tokens.weight"] - table).abs().max() > 1e-2  # the offset is really in
    others = set(original) - {"model.embed_tokens.weight", "lm_head.weight"}
    assert all(torch.equal(written[k], original[k]) for k in others)  # nothing else changed
    info = read_merge_info(out)
    assert info["m"] == 4 and info["d"] == 64 and info["untied_head"] == ("lm_head.weight" if tied else None)
    assert info["separator"] == " Label : " and info["adapter"]["method"] == "adept"
    assert (out / "tokenizer.json").is_file()  # a standalone folder: the tokenizer travels with it
    with safe_open(str(out / PROMPT_FILE), "pt") as f:
        assert list(f.keys()) == ["prompt"] and f.get_tensor("prompt").dtype == torch.float32
    torch.testing.assert_close(load_merged_prompt(out, info, 64).prompt.detach(), adapter.prompt.detach())


def test_sharded_checkpoint_is_streamed(tmp_path):
    """A checkpoint in several shards: the shard with the table is rewritten (with the untied head
    added to it and to the index), every other shard is copied byte for byte."""
    from transformers import AutoModelForCausalLM

    small = save_tiny_llama(tmp_path / "small", seed=5, tie=True)
    model = AutoModelForCausalLM.from_pretrained(small)
    model.save_pretrained(tmp_path / "base", max_shard_size="40KB")
    shutil.copy(small / "tokenizer.json", tmp_path / "base")
    index = json.loads((tmp_path / "base" / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 2
    adapter = perturbed_adept(64, seed=6)
    out = merge(str(saved_adapter(tmp_path, tmp_path / "base", adapter)), str(tmp_path / "merged"), log=lambda s: None)
    new_index = json.loads((out / "model.safetensors.index.json").read_text())
    emb_shard = index["weight_map"]["model.embed_tokens.weight"]
    assert new_index["weight_map"]["lm_head.weight"] == emb_shard
    assert {k: v for k, v in new_index["weight_map"].items() if k != "lm_head.weight"} == index["weight_map"]
    for shard in shards - {emb_shard}:
        assert (out / shard).read_bytes() == (tmp_path / "base" / shard).read_bytes()
    prompt = load_file(str(out / PROMPT_FILE))["prompt"]
    backbone = load_backbone(str(tmp_path / "base"), "none", torch.device("cpu"), dtype=torch.float32)
    unmerged = AdeptLM(backbone, adapter.eval()).eval()
    with torch.no_grad():
        embeds, mask, _ = unmerged._inputs(BATCH["input_ids"], BATCH["attention_mask"])
        expected = backbone(inputs_embeds=embeds, attention_mask=mask).logits
    torch.testing.assert_close(hf_logits(out, prompt, BATCH), expected, rtol=0, atol=1e-5)


def test_merge_refusals(tmp_path, tiny_model_dir):
    adept = saved_adapter(tmp_path / "a", tiny_model_dir, perturbed_adept(64))
    # an existing output folder is never touched
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep")
    with pytest.raises(AdapterFileError, match="exists and is not empty"):
        merge(str(adept), str(tmp_path / "taken"))
    assert (tmp_path / "taken" / "mine.txt").read_text() == "keep"
    # DePT's offset is per position: no merge
    dept = saved_adapter(tmp_path / "d", tiny_model_dir, build_adapter("dept", 4, 64, max_length=32))
    with pytest.raises(AdapterFileError, match="depends on the position"):
        merge(str(dept), str(tmp_path / "m1"))
    # a base model without safetensors weights: nothing is unpickled
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(ModelError, match="safetensors only"):
        merge(str(adept), str(tmp_path / "m2"), model=str(pickled))
    # an adapter for another hidden size
    other = save_tiny_llama(tmp_path / "other", hidden=32)
    with pytest.raises(AdapterFileError, match="hidden size 64 but model .* has 32"):
        merge(str(adept), str(tmp_path / "m3"), model=str(other))
    assert not any(p.name.startswith((".m", "m")) for p in tmp_path.iterdir())  # no partial outputs left
    # PT: nothing to fold, the export is the base model plus the prompt
    pt = build_adapter("pt", 4, 64)
    torch.nn.init.normal_(pt.prompt)
    out = merge(str(saved_adapter(tmp_path / "p", tiny_model_dir, pt)), str(tmp_path / "pt_merged"), log=print)
    torch.testing.assert_close(
        load_file(str(out / "model.safetensors"))["model.embed_tokens.weight"],
        load_file(str(tiny_model_dir / "model.safetensors"))["model.embed_tokens.weight"],
        rtol=0,
        atol=0,
    )


def test_bench_merge_smoke(tmp_path):
    """The speed benchmark runs and writes well-formed JSON (no timing is asserted)."""
    import sys

    from tests.conftest import run_cmd

    out = tmp_path / "bench.json"
    proc = run_cmd([sys.executable, "bench/bench_merge.py", "--hidden", "64", "--layers", "1", "--vocab", "300",
                    "--batch", "2", "--source_len", "8", "--new_tokens", "3", "--repeats", "1", "--json", str(out)])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    for side in ("unmerged", "merged"):
        assert set(res[side]) == {"prefill_ms", "decode_ms_per_token", "generate_ms", "generated_tokens_per_s"}
        assert all(v > 0 for v in res[side].values())
    assert res["same_tokens"] is True  # merged and unmerged decode the same tokens
    assert res["r"] == 19 and res["m"] == 60


# ----------------------------------------------------------------------------- PEFT
# PEFT's model against ours, both fp32 on the same weights: measured max logit difference 6.7e-8
# (tiny LLaMA, 2026-12-05); bound 1e-5.
PEFT_TOL = 1e-5


def peft_model(folder, adapter_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), adapter_dir)


def assert_peft_matches_ours(peft, ours: AdeptLM):
    """Logits at the real tokens of a right-padded batch, and greedy text (one row: PEFT's prompt
    tuning ignores position ids, so left-padded rows would be read at other positions). PEFT's
    generate runs with use_cache=False: with its cache, prompt tuning drifts after the first new
    token (peft 0.21.2, transformers 5.25: logits 0.04-0.29 off its own forward on this model, 2026-12-05;
    huggingface/peft#1391 reports the same), which docs/OUTPUTS.md says."""
    with torch.no_grad():
        theirs = peft.eval()(input_ids=BATCH["input_ids"], attention_mask=BATCH["attention_mask"]).logits
        embeds, mask, _ = ours.eval()._inputs(BATCH["input_ids"], BATCH["attention_mask"])
        mine = ours.backbone(inputs_embeds=embeds, attention_mask=mask).logits
    real = torch.cat([torch.zeros_like(mask[:, :4]), BATCH["attention_mask"]], dim=1).bool()
    assert theirs.shape == mine.shape and (theirs[real] - mine[real]).abs().max() <= PEFT_TOL
    ids = BATCH["input_ids"][:1]
    text = peft.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                         use_cache=False)  # fmt: skip
    assert text[0, ids.shape[1] :].tolist() == ours.generate(ids, torch.ones_like(ids), 6, eos_id=-1)[0].tolist()


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_peft_loads_the_merged_export_as_the_trained_model(tmp_path, tie):
    from adept_dist.commands.export import main as export_main
    from adept_dist.export.peft import PEFT_FOLDER

    base = save_tiny_llama(tmp_path / "base", seed=3, tie=tie)
    adapter = perturbed_adept(64, seed=4)
    args = ["--adapter", str(saved_adapter(tmp_path, base, adapter)), "--merge", "--peft"]
    assert export_main([*args, "--output", str(tmp_path / "merged")]) == 0
    cfg = json.loads((tmp_path / "merged" / PEFT_FOLDER / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "PROMPT_TUNING" and cfg["task_type"] == "CAUSAL_LM" and cfg["num_virtual_tokens"] == 4
    assert cfg["base_model_name_or_path"] == str((tmp_path / "merged").resolve())
    ours = AdeptLM(load_backbone(str(base), "none", torch.device("cpu"), dtype=torch.float32), adapter)
    assert_peft_matches_ours(peft_model(tmp_path / "merged", tmp_path / "merged" / PEFT_FOLDER), ours)


def test_a_pt_adapter_is_a_plain_peft_adapter_of_its_base_and_refusals(tmp_path, tiny_model_dir, monkeypatch):
    from adept_dist.commands.export import main as export_main
    from adept_dist.export.merge import peft_adapter

    pt = build_adapter("pt", 4, 64)
    torch.nn.init.normal_(pt.prompt, generator=torch.Generator().manual_seed(5))
    folder = saved_adapter(tmp_path / "p", tiny_model_dir, pt)
    assert export_main(["--adapter", str(folder), "--peft", "--output", str(tmp_path / "peft")]) == 0
    ours = AdeptLM(load_backbone(str(tiny_model_dir), "none", torch.device("cpu"), dtype=torch.float32), pt)
    assert_peft_matches_ours(peft_model(tiny_model_dir, tmp_path / "peft"), ours)
    # an ADePT adapter needs --merge: its offset is no part of prompt tuning
    adept = saved_adapter(tmp_path / "a", tiny_model_dir, perturbed_adept(64))
    with pytest.raises(AdapterFileError, match="is a adept adapter: .* add --merge"):
        peft_adapter(str(adept), str(tmp_path / "x"))
    # without PEFT installed: one line naming the install, nothing written
    monkeypatch.setitem(__import__("sys").modules, "peft", None)
    with pytest.raises(AdapterFileError, match="pip install peft"):
        peft_adapter(str(folder), str(tmp_path / "y"))
    with pytest.raises(AdapterFileError, match="pip install peft"):
        merge(str(adept), str(tmp_path / "z"), log=lambda s: None, peft=True)
    assert not (tmp_path / "y").exists() and not (tmp_path / "z").exists()
