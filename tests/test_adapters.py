"""Adapter maths against docs/METHOD.md (plain torch, milliseconds)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from adept_dist.model.adapters import (
    IGNORE_INDEX,
    ADePT,
    DePT,
    PromptAdapter,
    adept_rank,
    build_adapter,
    count_parameters,
    dept_rank,
)


@pytest.mark.parametrize("m,r", [(60, 19), (40, 29), (80, 9)])
@pytest.mark.parametrize("d", [768, 1024, 4096])
def test_budget_matched_rank(m, r, d):
    # METHOD.md: r = floor(((100 - m) d - d) / (2d + 1)); m=60 -> 19, m=40 -> 29, m=80 -> 9 for any d
    assert adept_rank(m, d) == r
    assert count_parameters(build_adapter("adept", m, d)) <= 100 * d


@pytest.mark.parametrize("d,count", [(768, 76_051), (1024, 101_395), (4096, 405_523)])
def test_parameter_counts(d, count):
    # METHOD.md's counts: T5-base 76,051; d=1024 101,395; LLaMA-2-7B 405,523 (m=60, r=19)
    adapter = build_adapter("adept", 60, d)
    assert adapter.r == 19
    assert count_parameters(adapter) == count
    assert count_parameters(build_adapter("pt", 100, d)) == 100 * d  # PT-100: 409,600 at d=4096


@pytest.mark.parametrize("m,r", [(60, 30), (40, 45), (80, 15)])
def test_dept_rank(m, r):
    # METHOD.md: m*d + s*r + r*d = 100*d with s=256, d=768
    assert dept_rank(m, 768, 256) == r
    assert count_parameters(build_adapter("dept", m, 768, max_length=256)) == m * 768 + 256 * r + r * 768


def test_adept_init_distributions():
    torch.manual_seed(0)
    ad = ADePT(60, 4096, 19)
    bound = 1 / math.sqrt(19)  # kaiming_uniform(a=sqrt(5)) on a (d, r) tensor: fan_in = r
    assert ad.A.shape == (4096, 19)
    assert ad.A.abs().max() <= bound
    assert ad.A.abs().max() > 0.99 * bound
    # U(-b, b) has std b / sqrt(3); 77,824 draws pin it within 1%
    assert ad.A.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.01)
    assert ad.A.mean().abs() < 0.01 * bound
    for z in (ad.a, ad.B, ad.b):
        assert torch.count_nonzero(z) == 0
    assert ad.dropout.p == 0.1


def test_dept_init():
    torch.manual_seed(0)
    dp = DePT(60, 768, 30, 256)
    assert dp.A.shape == (256, 30) and dp.A.abs().max() <= 1 / math.sqrt(30)
    assert torch.count_nonzero(dp.B) == 0


def test_offset_exactly_zero_at_init():
    torch.manual_seed(0)
    e = torch.randn(3, 7, 32)
    for adapter in (ADePT(5, 32, 4), DePT(5, 32, 4, 16), PromptAdapter(5, 32)):
        adapter.train()  # dropout active, still exactly 0 because B = b = 0
        assert torch.equal(adapter.offset(e), e)


def _perturb(adapter):
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(torch.randn_like(p))
    return adapter.eval()


def test_adept_offset_depends_on_token_not_position():
    torch.manual_seed(0)
    table = torch.randn(10, 32)
    ids = torch.tensor([[5, 7, 5, 2, 5]])
    ad = _perturb(ADePT(4, 32, 3))
    delta = ad.offset(table[ids]) - table[ids]
    assert not torch.allclose(delta[0, 0], torch.zeros(32))
    torch.testing.assert_close(delta[0, 0], delta[0, 2], rtol=0, atol=0)
    torch.testing.assert_close(delta[0, 0], delta[0, 4], rtol=0, atol=0)
    # and it is the same whatever positions the tokens are given
    torch.testing.assert_close(ad.offset(table[ids], torch.tensor([[9, 3, 4, 0, 1]])), ad.offset(table[ids]))


def test_dept_offset_depends_on_position():
    torch.manual_seed(0)
    table = torch.randn(10, 32)
    ids = torch.tensor([[5, 7, 5]])
    dp = _perturb(DePT(4, 32, 3, 16))
    delta = dp.offset(table[ids]) - table[ids]
    assert not torch.allclose(delta[0, 0], delta[0, 2])  # same token, other position
    other = torch.tensor([[1, 1, 1]])
    delta_other = dp.offset(table[other]) - table[other]
    torch.testing.assert_close(delta, delta_other)  # same position, other token: same offset
    expected = (dp.A[:3] @ dp.B) * (8 / math.sqrt(3))
    torch.testing.assert_close(delta[0], expected)


def test_adept_forward_formula_and_prompt():
    torch.manual_seed(0)
    ad = _perturb(ADePT(4, 16, 3))
    e = torch.randn(2, 5, 16)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    labels = torch.tensor([[-100, 3, 4, -100, -100], [-100, -100, 1, 2, 3]])
    embeds, m2, l2 = ad(e, mask, labels)
    assert embeds.shape == (2, 9, 16)
    expected = e + torch.relu(e @ ad.A + ad.a) @ ad.B + ad.b  # METHOD.md forward, eval mode
    torch.testing.assert_close(embeds[:, 4:], expected)
    torch.testing.assert_close(embeds[:, :4], ad.prompt.expand(2, -1, -1))  # the prompt gets no offset
    assert torch.equal(m2[:, :4], torch.ones(2, 4, dtype=torch.long)) and torch.equal(m2[:, 4:], mask)
    assert torch.equal(l2[:, :4], torch.full((2, 4), IGNORE_INDEX)) and torch.equal(l2[:, 4:], labels)


def test_dropout_only_in_training():
    torch.manual_seed(0)
    ad = _perturb(ADePT(4, 16, 8))
    e = torch.randn(2, 50, 16)
    ad.eval()
    assert torch.equal(ad.offset(e), ad.offset(e))
    ad.train()
    assert not torch.equal(ad.offset(e), ad.offset(e))


def test_dtype_policy_fp32_adapter_bf16_backbone():
    ad = _perturb(ADePT(4, 16, 3))
    e = torch.randn(2, 5, 16).to(torch.bfloat16)
    embeds, _, _ = ad(e, torch.ones(2, 5, dtype=torch.long))
    assert embeds.dtype == torch.bfloat16


def test_unknown_method_and_impossible_budget():
    with pytest.raises(ValueError, match="unknown method 'lora'"):
        build_adapter("lora", 60, 768)
    with pytest.raises(ValueError, match="no budget"):
        adept_rank(99, 768)


def test_adapters_module_imports_no_heavy_libraries():
    code = (
        "import sys, adept_dist.model.adapters, adept_dist.model.lm; "
        "bad = [m for m in ('deepspeed', 'bitsandbytes', 'transformers') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("train_mode", [True, False], ids=["dropout", "eval"])
def test_ffn_on_distinct_ids_gives_the_same_outputs_and_gradients(train_mode):
    """The FFN computed once per distinct token id (ids given) equals the per-token FFN: the same
    outputs and the same gradients of every adapter tensor, with dropout (same seed: the same
    per-token masks) and without. Only summation order differs (fp32): measured max difference
    3.8e-6 on A's gradient of magnitude up to 25 (1.5e-7 relative), hence rtol 1e-6, atol 1e-5."""
    torch.manual_seed(0)
    ad = build_adapter("adept", 4, 32, dropout=0.3, distinct_ids_in_training=True)  # opt-in with gradients on
    with torch.no_grad():
        ad.B.normal_(0, 0.5)
        ad.b.normal_(0, 0.1)
    ad.train(train_mode)
    table = torch.randn(50, 32)
    ids = torch.randint(0, 10, (3, 7))  # many repeats among 21 tokens
    mask = torch.ones_like(ids)
    results = []
    for with_ids in (False, True):
        ad.zero_grad()
        torch.manual_seed(123)  # dropout draws
        out, _, _ = ad(table[ids], mask, ids=ids if with_ids else None)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in ad.named_parameters()}))
    (dense, g_dense), (dedup, g_dedup) = results
    torch.testing.assert_close(dedup, dense, rtol=0, atol=1e-6)
    for name in g_dense:
        torch.testing.assert_close(g_dedup[name], g_dense[name], rtol=1e-6, atol=1e-5, msg=name)
    assert g_dense["A"].abs().sum() > 0 and g_dense["B"].abs().sum() > 0  # the gradients are not trivially 0
    # and the offset is really per token: different ids get different offsets
    assert not torch.allclose(dense[0, 4 + 0], dense[0, 4 + 1]) or ids[0, 0] == ids[0, 1]
