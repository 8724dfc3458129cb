"""Backbone + adapter as one module: the loss of a batch, and greedy generation.

The adapter acts on every token the model reads, in training and in generation alike (the
reference code forgets the offset of generated tokens after the first step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .adapters import IGNORE_INDEX, PromptAdapter


def positions_of(mask: torch.Tensor) -> torch.Tensor:
    """Token positions from an attention mask (B, T): 0, 1, ... over real tokens, any padding side."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


class AdeptLM(nn.Module):
    def __init__(self, backbone: nn.Module, adapter: PromptAdapter) -> None:
        super().__init__()
        self.backbone = backbone
        self.adapter = adapter

    def _inputs(self, input_ids, attention_mask, labels=None):
        e = self.backbone.get_input_embeddings()(input_ids)  # (B, T, d)
        return self.adapter(e, attention_mask, labels, positions_of(attention_mask))

    def forward(self, input_ids, attention_mask, labels) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed next-token cross-entropy over target tokens, and the number of those tokens.

        The output head runs only at target positions: (N, V) logits instead of (B, T, V).
        """
        embeds, mask, labels = self._inputs(input_ids, attention_mask, labels)  # (B, m+T, d)
        hidden = self.backbone.get_decoder()(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions_of(mask), use_cache=False
        ).last_hidden_state
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        logits = self.backbone.get_output_embeddings()(hidden[:, :-1][keep]).float()  # (N, V)
        loss_sum = F.cross_entropy(logits, targets[keep], reduction="sum")
        return loss_sum, keep.sum()

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, max_new_tokens: int, eos_id: int, finished=None) -> torch.Tensor:
        """Greedy decoding of a LEFT-padded batch; returns (B, n <= max_new_tokens) ids, EOS-filled after EOS.

        `finished(done)` decides, after each step, whether to stop early given the (B,) done flags;
        default: once every sequence has ended. ZeRO-3 ranks must stop together (each forward is
        collective), so distributed callers pass a function that agrees across ranks.
        """
        finished = finished or (lambda done: bool(done.all()))
        decoder = self.backbone.get_decoder()
        head = self.backbone.get_output_embeddings()
        embeds, mask, _ = self._inputs(input_ids, attention_mask)
        out = decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=positions_of(mask), use_cache=True)
        token_pos = positions_of(attention_mask)[:, -1:]  # position of the last input token
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        generated = []
        for step in range(max_new_tokens):
            nxt = head(out.last_hidden_state[:, -1]).float().argmax(-1)  # (B,)
            nxt = nxt.masked_fill(done, eos_id)
            generated.append(nxt)
            done |= nxt == eos_id
            if step == max_new_tokens - 1 or finished(done):
                break
            token_pos = token_pos + 1
            e = self.backbone.get_input_embeddings()(nxt[:, None])  # (B, 1, d)
            e, _, _ = self.adapter(e, positions=token_pos, prepend=False)  # the offset, as in training
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            out = decoder(
                inputs_embeds=e,
                attention_mask=mask,
                position_ids=positions_of(mask)[:, -1:],
                past_key_values=out.past_key_values,
                use_cache=True,
            )
        return torch.stack(generated, dim=1)
