"""Backbone loading (NF4, frozen, refusals), the trainable set, the loss and generation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adept_dist.data.examples import Example, collate, pack
from adept_dist.model.adapters import build_adapter
from adept_dist.model.backbone import ModelError, load_backbone, load_config, load_tokenizer
from adept_dist.model.lm import AdeptLM
from adept_dist.run.build import check_trainable
from adept_dist.run.context import TrainError
from adept_dist.run.optim import trainable_groups
from tests.conftest import tiny_shape

ADAPTER_NAMES = {"adapter.prompt", "adapter.A", "adapter.a", "adapter.B", "adapter.b"}


@pytest.fixture(scope="module")
def nf4_backbone(tiny_model_dir):
    return load_backbone(str(tiny_model_dir), "nf4", torch.device("cpu"))


def perturbed_adept(d: int, seed: int = 0):
    torch.manual_seed(seed)
    ad = build_adapter("adept", 4, d, dropout=0.0)
    with torch.no_grad():
        ad.prompt.normal_(0, 0.5)
        ad.B.normal_(0, 0.5)
        ad.b.normal_(0, 0.1)
    return ad.eval()


def test_bitsandbytes_imports_without_the_compiler_stack_and_its_compiles_still_happen():
    """import_bitsandbytes, and DeepSpeed's Muon module as zero.build_engine imports it: in a fresh
    process (pytest itself may have imported them), Inductor is not imported, torch.compile is the real one afterwards, NF4 round-trips; and
    deferred_compile's functions compile for real, once, on their first call (a backend that counts),
    or run uncompiled when compiling fails (an unknown backend)."""
    code = (
        "import sys, torch\n"
        "from adept_dist.common.imports import deferred_compile\n"
        "from adept_dist.model.backbone import import_bitsandbytes\n"
        "real = torch.compile\n"
        "bnb = import_bitsandbytes()\n"
        "assert torch.compile is real and 'torch._inductor.compile_fx' not in sys.modules\n"
        "from adept_dist.common.imports import import_deferring_compile\n"
        "import_deferring_compile('deepspeed.runtime.zero.muon.muon_optimizer')  # as zero.build_engine does\n"
        "assert torch.compile is real and 'torch._inductor.compile_fx' not in sys.modules\n"
        "import bitsandbytes.functional as F\n"
        "w = torch.randn(64, 64)\n"
        "q, s = F.quantize_4bit(w, quant_type='nf4', blocksize=64)\n"
        "err = (F.dequantize_4bit(q, s) - w).abs().max().item()\n"
        "assert 0 < err < 0.2 * w.abs().max().item(), err\n"
        "compiled = []\n"
        "def backend(gm, inputs):\n"
        "    compiled.append(len(inputs))\n"
        "    return gm.forward\n"
        "with deferred_compile():\n"
        "    f = torch.compile(lambda x: x * 2 + 1, backend=backend)\n"
        "    g = torch.compile(backend='no_such_backend')(lambda x: x - 1)\n"
        "assert torch.compile is real\n"
        "assert f(torch.ones(3)).tolist() == [3.0, 3.0, 3.0] and compiled == [1], compiled\n"
        "assert f(torch.ones(3)).tolist() == [3.0, 3.0, 3.0] and compiled == [1], compiled\n"
        "assert g(torch.ones(2)).tolist() == [0.0, 0.0]\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_nf4_backbone_is_quantized_and_frozen(nf4_backbone):
    import bitsandbytes as bnb

    linears = [m for m in nf4_backbone.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linears) == 2 * 7  # q, k, v, o, gate, up, down in each of the 2 layers
    w = linears[0].weight
    assert type(w).__name__ == "Params4bit" and w.quant_type == "nf4"
    assert w.dtype == torch.bfloat16  # quant storage == compute dtype, so DeepSpeed's bf16 cast keeps it
    assert all(not p.requires_grad for p in nf4_backbone.parameters())


def test_trainable_set_is_exactly_the_adapter(nf4_backbone):
    model = AdeptLM(nf4_backbone, build_adapter("adept", 4, 64))
    check_trainable(model)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == ADAPTER_NAMES
    groups = trainable_groups(model.adapter, 0.3, 1e-4)
    assert [(g["name"], g["lr"], len(g["params"])) for g in groups] == [("prompt", 0.3, 1), ("offset", 1e-4, 4)]
    assert [(g["name"], len(g["params"])) for g in trainable_groups(build_adapter("pt", 4, 64), 0.3, 1e-4)] == [
        ("prompt", 1)
    ]
    nf4_backbone.get_input_embeddings().weight.requires_grad_(True)
    try:
        with pytest.raises(TrainError, match="embed_tokens"):
            check_trainable(model)
    finally:
        nf4_backbone.requires_grad_(False)


def test_loss_matches_transformers_own_loss(nf4_backbone):
    """Our loss (head applied at target positions only) equals HF's loss on the same inputs_embeds."""
    model = AdeptLM(nf4_backbone, perturbed_adept(64))
    batch = collate([Example([1, 10, 11, 12, 13, 2], 3, 3), Example([1, 20, 21, 2], 2, 2)], pad_id=3)
    with torch.no_grad():
        loss_sum, n = model(**batch)
        embeds, mask, labels = model._inputs(**batch)
        hf = nf4_backbone(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss
    assert n.item() == 5
    torch.testing.assert_close(loss_sum / n, hf.float(), rtol=2e-3, atol=2e-3)


def test_gradient_reaches_only_the_adapter(nf4_backbone):
    model = AdeptLM(nf4_backbone, perturbed_adept(64))
    model.adapter.train()
    batch = collate([Example([1, 10, 11, 12, 13, 2], 3, 3)], pad_id=3)
    loss, _ = model(**batch)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.adapter.parameters())
    assert all(p.grad is None for p in nf4_backbone.parameters())


def full_forward_logits(model: AdeptLM, src: dict, gen: torch.Tensor, row: int, k: int) -> torch.Tensor:
    """Last-position logits of one uncached forward over row's source + its first k generated tokens."""
    ids = src["input_ids"][row][src["attention_mask"][row].bool()].tolist()
    seq = torch.tensor([ids + gen[row, :k].tolist()])
    with torch.no_grad():
        embeds, mask, _ = model._inputs(seq, torch.ones_like(seq))
        h = model.backbone.get_decoder()(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        return model.backbone.get_output_embeddings()(h[0, -1]).float()


@pytest.mark.parametrize("quant", ["none", "nf4"])
def test_generation_step_logits_equal_a_full_forward(tiny_model_dir, quant):
    """The logits of cached decoding step k equal those of one forward pass over the same full
    sequence (source + the k tokens generated so far, every one offset), so the adapter sees the
    generated tokens exactly as training shows it targets (the reference code forgets their offset).

    fp32 compute: the cached and the full pass differ only by summation order; measured max
    difference 8.9e-8 (none) and 7.5e-8 (nf4), 2026-11-24, on logits up to 0.41 in magnitude, hence
    atol 1e-5."""
    backbone = load_backbone(str(tiny_model_dir), quant, torch.device("cpu"), dtype=torch.float32)
    model = AdeptLM(backbone, perturbed_adept(64)).eval()
    src = collate([Example([1, 10, 11, 12], 0, 4), Example([1, 20, 21, 22, 23, 24], 0, 6)], pad_id=3, left=True)
    gen, step_logits = model.generate(src["input_ids"], src["attention_mask"], 5, eos_id=-1, return_logits=True)
    assert gen.shape == (2, 5) and step_logits.shape == (2, 5, backbone.config.vocab_size)
    head = backbone.get_output_embeddings()
    for row in range(2):
        for k in range(5):
            full = full_forward_logits(model, src, gen, row, k)
            torch.testing.assert_close(step_logits[row, k], full, rtol=0, atol=1e-5)
            assert gen[row, k] == full.argmax()
    # the check can fail: the reference's way (generated tokens fed without their offset) gives
    # other step-3 logits, by far more than the tolerance
    ids = src["input_ids"][0][src["attention_mask"][0].bool()].tolist()
    with torch.no_grad():
        e = backbone.get_input_embeddings()(torch.tensor([ids + gen[0, :3].tolist()]))
        e = torch.cat([model.adapter.offset(e[:, : len(ids)]), e[:, len(ids) :]], dim=1)
        h = backbone.get_decoder()(inputs_embeds=torch.cat([model.adapter.prompt[None], e], dim=1)).last_hidden_state
    assert (head(h[0, -1]).float() - step_logits[0, 3]).abs().max() > 1e-2


def test_generation_applies_the_offset_to_generated_tokens(nf4_backbone):
    """bf16 NF4 (the GPU setting): cached decoding picks a (near-)argmax of the full forward."""
    model = AdeptLM(nf4_backbone, perturbed_adept(64)).eval()
    src = collate([Example([1, 10, 11, 12], 0, 4), Example([1, 20, 2 + 19, 22, 23, 24], 0, 6)], pad_id=3, left=True)
    gen = model.generate(src["input_ids"], src["attention_mask"], max_new_tokens=5, eos_id=-1)  # no EOS: 5 steps
    for row in range(2):
        for k in range(5):
            logits = full_forward_logits(model, src, gen, row, k)
            # bf16 KV cache vs full recompute may differ by rounding: the pick must be a (near-)argmax
            assert logits[gen[row, k]] >= logits.max() - 0.05, (row, k)
    # and the offset matters here: without it, decoding differs
    plain = AdeptLM(nf4_backbone, build_adapter("pt", 4, 64)).eval()
    with torch.no_grad():
        plain.adapter.prompt.copy_(model.adapter.prompt)
    assert not torch.equal(plain.generate(src["input_ids"], src["attention_mask"], 5, -1), gen)


@pytest.mark.parametrize("method", ["adept", "dept", "pt"])
def test_the_prompt_computed_once_gives_what_every_row_computing_it_gives(tiny_model_dir, method):
    """Generation runs the soft prompt once (batch 1) and every row's tokens on top of its keys and
    values, instead of running the m prompt positions again in every row. Same picks, greedy and
    sampled, and the same step logits within fp32 summation order: measured max differences 3.0e-8
    (adept, dept) and 1.5e-7 (pt) on logits up to 0.45-0.54 (2026-12-04), hence atol 1e-5 as in
    the test above."""
    from adept_dist.model.lm import Sampling

    backbone = load_backbone(str(tiny_model_dir), "nf4", torch.device("cpu"), dtype=torch.float32)
    torch.manual_seed(0)
    adapter = build_adapter(method, 4, 64, dropout=0.0, **({"max_length": 16} if method == "dept" else {}))
    with torch.no_grad():
        for p in adapter.parameters():
            p.normal_(0, 0.3)
    model = AdeptLM(backbone, adapter.eval()).eval()
    rows = [[1, 10, 11, 12], [1, 20, 21, 22, 23, 24], [1, 30]]
    src = collate([Example(r, 0, len(r)) for r in rows], pad_id=3, left=True)
    args = (src["input_ids"], src["attention_mask"], 6, -1)
    plain, plain_logits = model.generate(*args, return_logits=True, share_prompt=False)
    shared, shared_logits = model.generate(*args, return_logits=True)
    once, _ = model.generate(*args, return_logits=True, prompt_kv=model.prompt_kv(torch.device("cpu")))
    assert torch.equal(plain, shared) and torch.equal(plain, once)
    torch.testing.assert_close(shared_logits, plain_logits, rtol=0, atol=1e-5)
    draw = Sampling(True, temperature=1.5)
    sampled = [model.generate(*args, sampling=draw, generator=torch.Generator().manual_seed(7), share_prompt=share)
               for share in (False, True)]  # fmt: skip
    assert torch.equal(*sampled)


def test_our_calls_use_no_deprecated_transformers_api(nf4_backbone, caplog):
    """Training's forward and cached generation raise no deprecation warning: the project's
    pyproject filters those out of the test run, so they are caught here (in transformers 5.25
    generation passed `past_key_values=`, deprecated for `cache=`, removed in 5.40: a FutureWarning
    on every decoding step, and a logged warning)."""
    import logging
    import warnings

    model = AdeptLM(nf4_backbone, perturbed_adept(64)).eval()
    batch = collate([Example([1, 10, 11, 12], 2, 4), Example([1, 20, 21, 22, 23, 24], 4, 6)], pad_id=3, left=False)
    src = collate([Example([1, 10, 11, 12], 0, 4), Example([1, 20, 21, 22, 23, 24], 0, 6)], pad_id=3, left=True)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        model(batch["input_ids"], batch["attention_mask"], batch["labels"])
        model.generate(src["input_ids"], src["attention_mask"], max_new_tokens=4, eos_id=-1)
    deprecated = [
        f"{w.category.__name__}: {w.message}"
        for w in caught
        if issubclass(w.category, (DeprecationWarning, FutureWarning))
    ]
    deprecated += [r.getMessage() for r in caplog.records if "deprecat" in r.getMessage().lower()]
    assert deprecated == []


def test_sampling_rules():
    """pick(): greedy = argmax; top_k=1 and a tiny top_p reduce to the argmax; draws follow softmax(l/T)
    (20k draws from probabilities 0.5/0.3/0.2: each frequency within 0.015, > 4 standard errors);
    the same generator seed gives the same draws."""
    from adept_dist.model.lm import Sampling, pick

    logits = torch.log(torch.tensor([[0.2, 0.5, 0.3]])).repeat(20000, 1)
    assert pick(logits, None, None).eq(1).all()
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    assert pick(logits, Sampling(True, top_k=1), g(0)).eq(1).all()
    assert pick(logits, Sampling(True, top_p=0.4), g(0)).eq(1).all()  # 0.5 alone reaches 0.4
    drawn = pick(logits, Sampling(True), g(0))
    freq = torch.bincount(drawn, minlength=3).float() / len(drawn)
    torch.testing.assert_close(freq, torch.tensor([0.2, 0.5, 0.3]), rtol=0, atol=0.015)
    two = pick(logits, Sampling(True, top_p=0.75), g(1))  # keeps 0.5 and 0.3, renormalised: 0.625/0.375
    assert not two.eq(0).any()
    assert abs(two.eq(1).float().mean().item() - 0.625) < 0.015
    cold = pick(logits, Sampling(True, temperature=0.05), g(2))  # (0.5/0.3)^20 ~ 2e4: all argmax
    assert cold.eq(1).float().mean() > 0.999
    assert torch.equal(pick(logits, Sampling(True), g(5)), pick(logits, Sampling(True), g(5)))
    with pytest.raises(ValueError, match="temperature"):
        Sampling(True, temperature=0)
    with pytest.raises(ValueError, match="top_p"):
        Sampling(True, top_p=0)


def test_unknown_model_path_and_non_decoder_models(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_config(str(tmp_path / "no_such_model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="has no config.json"):
        load_config(str(tmp_path / "empty"))
    for cfg, kind in (
        (dict(model_type="bert", hidden_size=64, num_attention_heads=4), "bert"),
        (dict(model_type="t5", d_model=64, is_encoder_decoder=True), "t5"),
    ):
        folder = tmp_path / kind
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(ModelError, match=f"is a '{kind}' model, not a decoder-only LLaMA-family causal LM"):
            load_config(str(folder))


def test_unreachable_hub_id_is_a_clear_error(hub_offline):
    with pytest.raises(ModelError, match="cannot load model config for 'nobody/no-such-model'"):
        load_config("nobody/no-such-model")


def test_sentencepiece_tokenizer_folder(tmp_path, tiny_model_dir):
    """A LLaMA-2-style folder whose tokenizer is only a sentencepiece tokenizer.model loads through
    the same code (transformers converts it; that needs protobuf, a declared dependency)."""
    import shutil

    import sentencepiece as spm

    from adept_dist.model.builtin import corpus

    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(corpus(300, 0)))
    spm.SentencePieceTrainer.train(
        input=str(text),
        model_prefix=str(tmp_path / "sp"),
        vocab_size=90,
        model_type="bpe",
        bos_id=1,
        eos_id=2,
        unk_id=0,
        pad_id=-1,
        minloglevel=2,
    )
    folder = tmp_path / "sp_model"
    shutil.copytree(tiny_model_dir, folder)
    for f in folder.glob("tokenizer*"):
        f.unlink()
    shutil.copy(tmp_path / "sp.model", folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "legacy": False,
            }
        )
    )
    tok = load_tokenizer(str(folder))
    ids = tok("the food was great", add_special_tokens=False).input_ids
    assert len(tok) == 90 and ids and max(ids) < 90
    assert tok.decode(ids) == "the food was great"
    assert tok.eos_token_id == 2 and tok.pad_token_id is not None  # LLaMA has no pad: we set one


def test_activation_checkpointing_gives_the_same_loss_and_gradients(tiny_model_dir):
    """Recompute in backward (non-reentrant: the gradient flows in through inputs_embeds, the
    weights are frozen) must not change the maths, only the memory."""
    batch = collate([Example([1, 10, 11, 12, 13, 2], 3, 3), Example([1, 20, 21, 2], 2, 2)], pad_id=3)
    results = []
    for recompute in (False, True):
        backbone = load_backbone(str(tiny_model_dir), "nf4", torch.device("cpu"), activation_checkpointing=recompute)
        model = AdeptLM(backbone, perturbed_adept(64)).train()  # checkpointing is active in training mode only
        assert backbone.is_gradient_checkpointing == recompute
        loss, _ = model(**batch)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.adapter.named_parameters()}))
    (loss0, grads0), (loss1, grads1) = results
    torch.testing.assert_close(loss1, loss0, rtol=0, atol=0)
    for name in grads0:
        torch.testing.assert_close(grads1[name], grads0[name], rtol=0, atol=0)


def random_examples(n: int, seed: int, vocab: int = 90, lengths=(3, 30)) -> list[Example]:
    """n examples of random ids (4.. vocab-1) and lengths, 1-3 target tokens each; the first has no
    source at all (a target right after the prompt: predicted from the prompt's last slot)."""
    import random

    rng = random.Random(seed)
    out = []
    for k in range(n):
        n_ids, n_target = rng.randint(*lengths), rng.randint(1, 3)
        n_target = n_ids if k == 0 else n_target
        out.append(Example([rng.randrange(4, vocab) for _ in range(n_ids)], n_target, n_ids - n_target))
    return out


# A packed step against the padded one: the same sums in another order. fp32 on the tiny model,
# measured (2026-12-05): loss equal to 1e-7 relative, adapter gradients within 4e-7 of their largest
# element (sdpa and eager); bound 1e-5.
PACK_TOL = 1e-5


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("method", ["adept", "pt"])
def test_a_packed_step_equals_the_padded_step(tiny_model_dir, attn, method):
    backbone = load_backbone(str(tiny_model_dir), "none", torch.device("cpu"), attn, dtype=torch.float32)
    adapter = perturbed_adept(64) if method == "adept" else build_adapter("pt", 4, 64)
    with torch.no_grad():
        adapter.prompt.normal_(0, 0.5, generator=torch.Generator().manual_seed(3))
    model = AdeptLM(backbone, adapter)
    examples = random_examples(7, seed=1)

    def step(batch):
        model.adapter.zero_grad()
        loss, n = model(**batch)
        loss.backward()
        return loss.item(), int(n), {k: p.grad.clone() for k, p in model.adapter.named_parameters()}

    loss0, n0, grads0 = step(collate(examples, pad_id=3))
    longest = max(len(e.input_ids) for e in examples)
    for pack_tokens in (4 + longest, 4 + 2 * longest, 10_000):  # one example per row ... all in one row
        batch = pack(examples, 4, pack_tokens)
        loss, n, grads = step(batch)
        assert n == n0 == sum(e.n_target for e in examples)
        assert loss == pytest.approx(loss0, rel=PACK_TOL)
        for name, g in grads.items():
            assert grads0[name].abs().max() > 0, name  # a zero gradient would make the comparison vacuous
            assert (g - grads0[name]).abs().max() <= PACK_TOL * grads0[name].abs().max(), (name, pack_tokens)
    assert len(pack(examples, 4, 10_000)["slots"]) == 1  # the last layout did share one row


def test_no_attention_crosses_examples_in_a_packed_row(nf4_backbone):
    """Changing one example of a row leaves the outputs at every other example's slots (and the
    prompt's) as they were, bitwise; the changed example's own outputs do change."""
    model = AdeptLM(nf4_backbone, perturbed_adept(64))
    examples = random_examples(4, seed=2, lengths=(8, 12))
    other = list(examples)
    other[1] = Example([(t + 7) % 86 + 4 for t in examples[1].input_ids], examples[1].n_target,
                       examples[1].source_len)  # fmt: skip
    with torch.no_grad():
        a, b = (pack(ex, 4, 10_000) for ex in (examples, other))
        assert torch.equal(a["slots"], b["slots"]) and len(a["slots"]) == 1  # same layout, one row
        ha = model.packed_hidden(**{k: a[k] for k in ("input_ids", "positions", "slots", "segments", "position_ids")})
        hb = model.packed_hidden(**{k: b[k] for k in ("input_ids", "positions", "slots", "segments", "position_ids")})
    changed = a["segments"] == 2  # example 1 is the row's second example
    assert torch.equal(ha[~changed], hb[~changed])
    assert (ha[changed] - hb[changed]).abs().amax(-1).min() > 0  # every slot of the changed example moved


@pytest.mark.parametrize("family", ["mistral", "qwen2"])
def test_llama_layout_families_train_in_nf4(tmp_path, family):
    """Mistral and Qwen2 share LLaMA's layout: they load in NF4, freeze, and pass gradient to the adapter."""
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    cls, cfg_cls = {"mistral": (MistralForCausalLM, MistralConfig), "qwen2": (Qwen2ForCausalLM, Qwen2Config)}[family]
    cfg = cfg_cls(**tiny_shape(96, hidden=64, layers=2, max_positions=256))
    torch.manual_seed(0)
    cls(cfg).save_pretrained(tmp_path / family)
    backbone = load_backbone(str(tmp_path / family), "nf4", torch.device("cpu"))
    assert backbone.config.model_type == family and all(not p.requires_grad for p in backbone.parameters())
    model = AdeptLM(backbone, perturbed_adept(64)).train()
    loss, n = model(**collate([Example([1, 10, 11, 12, 13, 2], 3, 3)], pad_id=3))
    loss.backward()
    assert n.item() == 3 and torch.isfinite(loss)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.adapter.parameters())


def test_prompt_init_text_vocab_normal(tokenizer):
    """METHOD.md: text init copies E at the init text's ids, repeated/truncated to m; vocab init
    copies random vocabulary rows; normal init draws at the table's scale."""
    from adept_dist.config.resolve import make_config
    from adept_dist.run.build import prompt_init_rows

    torch.manual_seed(0)
    emb = torch.nn.Embedding(len(tokenizer), 32)
    text = "the food was great"
    ids = tokenizer(text, add_special_tokens=False).input_ids  # 4 ids
    rows = prompt_init_rows(make_config({"prompt_init_text": text}), emb, tokenizer, 10)
    expected = emb.weight[(ids * 3)[:10]]  # 4 + 4 + 2
    torch.testing.assert_close(rows, expected.detach(), rtol=0, atol=0)
    vocab_rows = prompt_init_rows(make_config({"prompt_init": "vocab"}), emb, tokenizer, 10)
    assert all(any(torch.equal(r, e) for e in emb.weight.detach()) for r in vocab_rows)
    normal = prompt_init_rows(make_config({"prompt_init": "normal"}), emb, tokenizer, 200)
    assert normal.std().item() == pytest.approx(emb.weight.std().item(), rel=0.1)


def test_nonfinite_check_covers_the_gradient_norm_and_clipping_uses_it():
    """The step's gradient norm is read from the reduced gradients before the optimizer step: an inf
    gradient under a finite loss is caught as a NaN loss is; a finite norm above --grad_clip gives
    the factor that brings it to grad_clip, as torch.nn.utils.clip_grad_norm_ does."""
    from adept_dist.distributed.zero import full_grads, scale_grads, total_norm
    from adept_dist.run.loop import clip_factor, nonfinite

    adapter = build_adapter("adept", 4, 32)
    params = list(adapter.parameters())
    for p in params:
        p.grad = torch.full_like(p, 0.5)
    norm = total_norm(full_grads(params))
    assert norm == pytest.approx(0.5 * sum(p.numel() for p in params) ** 0.5, rel=1e-12)
    assert nonfinite(1.5, norm) is None and nonfinite(float("nan"), norm) == "loss nan"
    factor = clip_factor(norm, 1.0)
    reference = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for ref, p in zip(reference, params):
        ref.grad = p.grad.clone()
    torch.nn.utils.clip_grad_norm_(reference, 1.0)
    scale_grads(params, full_grads(params), factor)
    for p, ref in zip(params, reference):
        torch.testing.assert_close(p.grad, ref.grad, rtol=1e-6, atol=0)
    assert clip_factor(0.5, 1.0) is None and clip_factor(norm, 0.0) is None  # within the limit; clipping off
    adapter.B.grad[0, 0] = float("inf")
    assert nonfinite(1.5, total_norm(full_grads(params))) == "gradient norm inf"


def test_checkpoint_module_load_checks_the_adapter_tensors(nf4_backbone):
    """Resume's module load (checkpoint.load_trainable_only) on a state dict saved as DeepSpeed's
    exclude_frozen_parameters saves it (frozen parameters dropped, the NF4 layers' quantisation
    statistics kept): the adapter loads exactly; another method's tensors are refused by name."""
    from adept_dist.run.checkpoint import CheckpointError, load_trainable_only

    model = AdeptLM(nf4_backbone, perturbed_adept(64))
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    saved = {k: v.clone() for k, v in model.state_dict().items() if k not in frozen}
    assert any(k.endswith(".absmax") for k in saved)  # what the frozen NF4 layers add
    fresh = AdeptLM(nf4_backbone, perturbed_adept(64, seed=1))
    load_trainable_only(saved, fresh)
    for name, value in model.adapter.state_dict().items():
        assert torch.equal(fresh.adapter.state_dict()[name], value), name
    with pytest.raises(CheckpointError, match=r"missing \[\], unexpected \['adapter.A', 'adapter.B'"):
        load_trainable_only(saved, AdeptLM(nf4_backbone, build_adapter("pt", 4, 64)))


def _save_on_rank(rank: int, port: int, folder: str) -> None:
    import torch.distributed as dist
    from transformers import LlamaForCausalLM

    from adept_dist.model.builtin import build_tokenizer, model_config, save_model_folder

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    if rank == 1:  # the first rank of a second node builds the built-in model where its home is
        torch.manual_seed(0)
        save_model_folder(LlamaForCausalLM(model_config(len(build_tokenizer()))), Path(folder))
    dist.barrier()
    dist.destroy_process_group()
    from adept_dist.common.errors import exit_process

    exit_process(0)  # past gloo's threads without the interpreter's finalisation, as every rank script ends


def test_the_builtin_model_is_written_whole_on_any_rank(tmp_path):
    """transformers' save_pretrained writes no config or weights on a global rank other than 0; the
    built-in model is built by every node's first rank, so it writes its folder itself (rank 1 here)."""
    from transformers import LlamaForCausalLM

    from adept_dist.distributed.comm import free_port

    torch.multiprocessing.spawn(_save_on_rank, args=(free_port(), str(tmp_path / "model")), nprocs=2)
    model = LlamaForCausalLM.from_pretrained(tmp_path / "model")
    torch.manual_seed(0)
    from adept_dist.model.builtin import build_tokenizer, model_config

    fresh = LlamaForCausalLM(model_config(len(build_tokenizer())))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))


def test_a_second_process_waits_for_the_builtin_build_instead_of_repeating_it(tmp_path, monkeypatch):
    """While one process builds the built-in model (it holds the build's flock), another that needs
    it says so, waits, and takes the finished folder without building; with the lock free and no
    folder it builds itself."""
    import fcntl
    import shutil
    import threading

    from adept_dist.model import builtin

    monkeypatch.setenv("ADEPT_DIST_HOME", str(tmp_path))
    root = builtin.builtin_dir()
    said, got = [], []
    with open(tmp_path / f".builtin-{builtin.VERSION}.lock", "a") as other:
        fcntl.flock(other, fcntl.LOCK_EX)  # another process's build, under way
        waiter = threading.Thread(target=lambda: got.append(builtin.ensure_builtin(pretrain_steps=1, log=said.append)))
        waiter.start()
        waiter.join(1.0)
        assert waiter.is_alive() and said == [f"waiting for another process building the built-in model in {root}"]
        (root / "model").mkdir(parents=True)  # that build finishes
        (root / "COMPLETE").write_text("ok\n")
    waiter.join(10)
    assert got == [root] and len(said) == 1  # nothing built here
    shutil.rmtree(root)
    builtin.ensure_builtin(pretrain_steps=1, log=said.append)
    assert said[1].startswith("building the built-in tiny LLaMA") and (root / "model" / "model.safetensors").is_file()
