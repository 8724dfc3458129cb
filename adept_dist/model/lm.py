"""Backbone + adapter as one module: the loss of a batch, and generation (greedy or sampled).

The adapter acts on every token the model reads, in training and in generation alike (the
reference code forgets the offset of generated tokens after the first step).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from adept_dist.model.adapters import IGNORE_INDEX, PromptAdapter


def positions_of(mask: torch.Tensor) -> torch.Tensor:
    """Token positions from an attention mask (B, T): 0, 1, ... over real tokens, any padding side."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def new_cache(decoder: nn.Module):
    """An empty KV cache for `decoder` (transformers' DynamicCache, imported here: this module stays
    plain torch for the modules that import it) and the keyword that passes it to
    `decoder.forward`: `cache` from transformers 5.x on (`past_key_values` is deprecated there,
    removed in 5.40), `past_key_values` before. The cache is filled in place by every call."""
    from transformers import DynamicCache

    cache = DynamicCache(config=decoder.config)
    name = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
    return cache, {name: cache}


PACK_TARGETS = ("predict_at", "targets")
PACKED_ATTENTION = ("sdpa", "eager")  # the kernels that take packed_mask's 4D mask


def packed_mask(segments: torch.Tensor, attn_implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """The (R, 1, L, L) attention mask of packed rows from their segments (0: the shared prompt, k:
    the k-th example, -1: padding): causal, and each slot sees its own segment and the prompt only.
    Padding sees the prompt too, so no query row is empty (an empty one gives NaN in sdpa). Boolean
    (True = attend) for sdpa; additive (0 / dtype's lowest) for eager, which adds it to the scores."""
    if attn_implementation not in PACKED_ATTENTION:
        raise ValueError(f"packed batches need attention {' or '.join(PACKED_ATTENTION)}, not {attn_implementation}")
    col = torch.arange(segments.shape[1], device=segments.device)
    causal = col[:, None] >= col[None, :]
    seen = (segments[:, :, None] == segments[:, None, :]) | (segments[:, None, :] == 0)
    allowed = (causal & seen)[:, None]
    if attn_implementation == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=segments.device).masked_fill(~allowed, torch.finfo(dtype).min)


class AdeptLM(nn.Module):
    def __init__(self, backbone: nn.Module, adapter: PromptAdapter) -> None:
        super().__init__()
        self.backbone = backbone
        self.adapter = adapter

    def _inputs(self, input_ids, attention_mask, labels=None):
        e = self.backbone.get_input_embeddings()(input_ids)  # (B, T, d)
        return self.adapter(e, attention_mask, labels, positions_of(attention_mask), ids=input_ids)

    def forward(
        self, input_ids, attention_mask=None, labels=None, **packed: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed next-token cross-entropy over target tokens, and the number of those tokens, of a
        padded batch (`data.collate`: input_ids, attention_mask, labels) or a packed one (`data.pack`:
        its keys, passed as keywords; the DeepSpeed engine calls this forward either way).

        The output head runs only at target positions: (N, V) logits instead of (B, T, V).
        """
        if packed:
            hidden = self.packed_hidden(input_ids, **{k: v for k, v in packed.items() if k not in PACK_TARGETS})
            logits = self.backbone.get_output_embeddings()(hidden.flatten(0, 1)[packed["predict_at"]]).float()
            targets = packed["targets"]
            return F.cross_entropy(logits, targets, reduction="sum"), targets.new_tensor(targets.numel())
        embeds, mask, labels = self._inputs(input_ids, attention_mask, labels)  # (B, m+T, d)
        hidden = self.backbone.get_decoder()(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions_of(mask), use_cache=False
        ).last_hidden_state
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        logits = self.backbone.get_output_embeddings()(hidden[:, :-1][keep]).float()  # (N, V)
        loss_sum = F.cross_entropy(logits, targets[keep], reduction="sum")
        return loss_sum, keep.sum()

    def packed_hidden(self, input_ids, positions, slots, segments, position_ids) -> torch.Tensor:
        """The decoder's last hidden states (R, L, d) of a packed micro-batch (`data.pack`): the
        adapter runs once over all tokens, with the prompt in front, and the rows are gathered from
        its output; attention stays inside each example and the prompt its row shares."""
        e = self.backbone.get_input_embeddings()(input_ids)  # (1, N, d)
        embeds, _, _ = self.adapter(e, torch.ones_like(input_ids), None, positions, ids=input_ids)  # (1, m+N, d)
        table = torch.cat([embeds[0], embeds.new_zeros(1, embeds.shape[-1])])  # the last row: padding
        mask = packed_mask(segments, self.backbone.config._attn_implementation, embeds.dtype)
        return self.backbone.get_decoder()(
            inputs_embeds=table[slots], attention_mask=mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state

    @torch.no_grad()
    def prompt_kv(self, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The soft prompt's keys and values at every layer, batch 1: [(k, v)], each (1, heads, m,
        head_dim). They are the same for every row (the prompt comes first, at positions 0..m-1,
        and attends only to itself), so generation computes them once and runs each row's own
        tokens on top. A collective under ZeRO-3: every rank calls it."""
        decoder = self.backbone.get_decoder()
        none = torch.zeros(1, 0, dtype=torch.long, device=device)
        e = self.backbone.get_input_embeddings()(none)  # (1, 0, d): the adapter's forward gives the prompt
        prompt, mask, _ = self.adapter(e, none, None, none, ids=none)  # (1, m, d), through ZeRO-3's hooks
        cache, kv = new_cache(decoder)
        decoder(inputs_embeds=prompt, attention_mask=mask, position_ids=positions_of(mask), use_cache=True, **kv)
        return [(layer.keys, layer.values) for layer in cache.layers]

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        max_new_tokens: int,
        eos_id: int,
        finished=None,
        sampling: Sampling | None = None,
        generator: torch.Generator | None = None,
        return_logits: bool = False,
        prompt_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        share_prompt: bool = True,
    ):
        """Decode a LEFT-padded batch: (B, n <= max_new_tokens) ids, EOS-filled after EOS (and, with
        return_logits, the (B, n, V) fp32 logits each pick was made from).

        Greedy unless `sampling.do_sample` (then drawn with `generator`, a CPU generator, so a batch's
        draws do not depend on the device or on other batches). `finished(done)` decides, after each
        step, whether to stop early given the (B,) done flags; default: once every sequence has
        ended. ZeRO-3 ranks must stop together (each forward is collective), so distributed callers
        pass a function that agrees across ranks.

        The soft prompt's keys and values come from `prompt_kv` (see `prompt_kv()`: callers decoding
        many batches with one adapter compute them once), else are computed here for the batch; the
        rows' tokens then run on top of them. `share_prompt=False` runs the prompt again in every
        row instead (the plain path, kept as the reference the shared one is tested against).
        """
        finished = finished or (lambda done: bool(done.all()))
        decoder = self.backbone.get_decoder()
        head = self.backbone.get_output_embeddings()
        cache, kv = new_cache(decoder)
        if share_prompt:
            bsz = input_ids.shape[0]
            for layer, (k, v) in enumerate(prompt_kv or self.prompt_kv(input_ids.device)):
                cache.update(k.expand(bsz, -1, -1, -1), v.expand(bsz, -1, -1, -1), layer)
            e = self.backbone.get_input_embeddings()(input_ids)
            rows, _, _ = self.adapter(e, positions=positions_of(attention_mask), prepend=False, ids=input_ids)
            mask = torch.cat([attention_mask.new_ones(bsz, self.adapter.m), attention_mask], dim=1)
            out = decoder(inputs_embeds=rows, attention_mask=mask, position_ids=positions_of(mask)[:, self.adapter.m :],
                          use_cache=True, **kv)  # fmt: skip
        else:
            embeds, mask, _ = self._inputs(input_ids, attention_mask)
            out = decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=positions_of(mask), use_cache=True,
                          **kv)  # fmt: skip
        token_pos = positions_of(attention_mask)[:, -1:]  # position of the last input token
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        generated, all_logits = [], []
        for step in range(max_new_tokens):
            logits = head(out.last_hidden_state[:, -1]).float()  # (B, V)
            if return_logits:
                all_logits.append(logits)
            nxt = pick(logits, sampling, generator).masked_fill(done, eos_id)  # (B,)
            generated.append(nxt)
            done |= nxt == eos_id
            if step == max_new_tokens - 1 or finished(done):
                break
            token_pos = token_pos + 1
            e = self.backbone.get_input_embeddings()(nxt[:, None])  # (B, 1, d)
            e, _, _ = self.adapter(e, positions=token_pos, prepend=False, ids=nxt[:, None])  # offset, as in training
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            out = decoder(
                inputs_embeds=e,
                attention_mask=mask,
                position_ids=positions_of(mask)[:, -1:],
                use_cache=True,
                **kv,
            )
        ids = torch.stack(generated, dim=1)
        return (ids, torch.stack(all_logits, dim=1)) if return_logits else ids

    @torch.no_grad()
    def option_logprobs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        options: list[list[list[int]]],
        prompt_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> list[list[tuple[float, int]]]:
        """Each option's log-probability after its row's source: [[(summed log-prob, tokens)]] per row
        of a LEFT-padded batch of sources, `options[b]` the token ids of row b's options (each
        ending in EOS, as a target does in training). Teacher-forced, in two forwards: the rows'
        sources on top of the soft prompt's keys and values (computed once, `prompt_kv`), then every
        option of every row at once on top of its row's cached keys and values, so neither the
        prompt nor a source runs again per option. Equal to scoring each source + option with its
        own full forward (tests/test_rank.py). Collective under ZeRO-3 (two forwards per call)."""
        decoder = self.backbone.get_decoder()
        head = self.backbone.get_output_embeddings()
        bsz, m = input_ids.shape[0], self.adapter.m
        cache, kv = new_cache(decoder)
        for layer, (k, v) in enumerate(prompt_kv or self.prompt_kv(input_ids.device)):
            cache.update(k.expand(bsz, -1, -1, -1), v.expand(bsz, -1, -1, -1), layer)
        e = self.backbone.get_input_embeddings()(input_ids)
        rows, _, _ = self.adapter(e, positions=positions_of(attention_mask), prepend=False, ids=input_ids)
        mask = torch.cat([attention_mask.new_ones(bsz, m), attention_mask], dim=1)
        out = decoder(inputs_embeds=rows, attention_mask=mask, position_ids=positions_of(mask)[:, m:], use_cache=True,
                      **kv)  # fmt: skip
        first = F.log_softmax(head(out.last_hidden_state[:, -1]).float(), dim=-1)  # (B, V): each option's 1st token
        owner = [b for b, opts in enumerate(options) for _ in opts]
        flat = [ids for opts in options for ids in opts]
        if any(len(ids) < 1 for ids in flat):
            raise ValueError("an option without tokens")
        width = max(len(ids) for ids in flat) - 1  # the tokens each option feeds in after its first
        scores = [first[owner[i], ids[0]].item() for i, ids in enumerate(flat)]
        if width > 0:
            device = input_ids.device
            rows_of = torch.tensor(owner, device=device)
            fed = torch.zeros(len(flat), width, dtype=torch.long, device=device)
            fed_mask = torch.zeros(len(flat), width, dtype=attention_mask.dtype, device=device)
            for i, ids in enumerate(flat):
                fed[i, : len(ids) - 1] = torch.tensor(ids[:-1])
                fed_mask[i, : len(ids) - 1] = 1
            opt_cache, opt_kv = new_cache(decoder)
            for layer, entry in enumerate(cache.layers):
                opt_cache.update(entry.keys[rows_of], entry.values[rows_of], layer)
            src_mask = torch.cat([attention_mask[rows_of], fed_mask], dim=1)
            e = self.backbone.get_input_embeddings()(fed)
            e, _, _ = self.adapter(e, positions=positions_of(src_mask)[:, -width:], prepend=False, ids=fed)
            full = torch.cat([mask[rows_of], fed_mask], dim=1)
            hidden = decoder(inputs_embeds=e, attention_mask=full, position_ids=positions_of(full)[:, -width:],
                             use_cache=True, **opt_kv).last_hidden_state  # fmt: skip
            logp = F.log_softmax(head(hidden).float(), dim=-1)  # (K, width, V)
            for i, ids in enumerate(flat):
                if len(ids) > 1:
                    nxt = torch.tensor(ids[1:], device=device)
                    scores[i] += logp[i, torch.arange(len(ids) - 1, device=device), nxt].sum().item()
        out_rows: list[list[tuple[float, int]]] = [[] for _ in options]
        for i, ids in enumerate(flat):
            out_rows[owner[i]].append((scores[i], len(ids)))
        return out_rows


@dataclass(frozen=True)
class Sampling:
    """Sampled decoding: temperature, then top-k (0 = off), then nucleus top-p (1.0 = off)."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature {self.temperature} must be > 0 (for greedy decoding drop --do_sample)")
        if self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"top_k {self.top_k} must be >= 0 and top_p {self.top_p} in (0, 1]")


def pick(logits: torch.Tensor, sampling: Sampling | None, generator: torch.Generator | None) -> torch.Tensor:
    """Next token ids from (B, V) logits: the argmax, or a draw under `sampling`."""
    if sampling is None or not sampling.do_sample:
        return logits.argmax(-1)
    x = logits.float() / sampling.temperature
    if sampling.top_k:
        kth = x.topk(min(sampling.top_k, x.shape[-1]), dim=-1).values[:, -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_x, order = x.sort(dim=-1, descending=True)
        probs = sorted_x.softmax(-1)
        drop = probs.cumsum(-1) - probs >= sampling.top_p  # mass before this token already reaches p
        x = x.scatter(-1, order, sorted_x.masked_fill(drop, float("-inf")))
    probs = x.softmax(-1).cpu()
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1).to(logits.device)
