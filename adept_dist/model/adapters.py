"""Input-level adapters: ADePT, DePT and vanilla prompt tuning (PT).

Plain ``torch.nn``: this module imports neither deepspeed, bitsandbytes nor transformers, so the
maths tests in milliseconds on CPU. The spec is ``docs/METHOD.md`` (shapes, inits, budget, recipe).

Every adapter turns the frozen embeddings ``e`` (B, T, d) of a batch into ``inputs_embeds``
(B, m + T, d): a token offset (ADePT: per token id; DePT: per position; PT: none) and then the
soft prompt in front. Masks and labels are extended to match.
"""

from __future__ import annotations

import math

import torch
from torch import nn

METHODS = ("adept", "dept", "pt")
IGNORE_INDEX = -100
PT_BUDGET_TOKENS = 100  # ADePT and DePT are budget-matched to prompt tuning with 100 tokens
DEPT_ALPHA = 8.0


def adept_rank(m: int, d: int) -> int:
    """Largest r with m*d + 2*d*r + r + d <= 100*d (m=60 -> 19, m=40 -> 29, m=80 -> 9)."""
    r = ((PT_BUDGET_TOKENS - m) * d - d) // (2 * d + 1)
    if r < 1:
        raise ValueError(f"prompt length m={m} leaves no budget for the ADePT FFN: use m <= 98")
    return r


def dept_rank(m: int, d: int, max_length: int) -> int:
    """Largest r with m*d + s*r + r*d <= 100*d, s = max_length (s=256, d=768: m=60 -> 30)."""
    r = ((PT_BUDGET_TOKENS - m) * d) // (max_length + d)
    if r < 1:
        raise ValueError(f"prompt length m={m} leaves no budget for the DePT offset: use m <= 99")
    return r


def kaiming_uniform_fan_r(t: torch.Tensor) -> torch.Tensor:
    """Kaiming-uniform(a=sqrt(5)) on the tensor as laid out, so fan_in = t.shape[1] = r."""
    return nn.init.kaiming_uniform_(t, a=math.sqrt(5))


class PromptAdapter(nn.Module):
    """Soft prompt only (PT); the base class of ADePT and DePT."""

    method = "pt"

    def __init__(self, m: int, d: int) -> None:
        super().__init__()
        self.m, self.d = m, d
        self.prompt = nn.Parameter(torch.zeros(m, d))

    @torch.no_grad()
    def init_prompt(self, rows: torch.Tensor) -> None:
        """Copy (m, d) rows into the prompt: vocabulary embeddings or random normal."""
        if tuple(rows.shape) != (self.m, self.d):
            raise ValueError(f"prompt init rows have shape {tuple(rows.shape)}, need {(self.m, self.d)}")
        self.prompt.copy_(rows.to(self.prompt.dtype))

    def offset(
        self, e: torch.Tensor, positions: torch.Tensor | None = None, ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Offset the embeddings e (B, T, d) of tokens `ids` (B, T) at `positions` (B, T; default 0..T-1)."""
        return e

    def forward(
        self,
        e: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        prepend: bool = True,
        ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(B, T, d) embeddings -> (B, m + T, d) inputs_embeds, with mask and labels extended.

        prepend=False only offsets the tokens (generation steps after the first). Going through
        forward (not offset()) matters under ZeRO-3, whose hooks gather parameters per forward.
        `ids`, the token ids of e, let ADePT compute its FFN once per distinct id.
        """
        bsz = e.shape[0]
        e = self.offset(e, positions, ids)
        if not prepend:
            return e, attention_mask, labels
        prompt = self.prompt.to(e.dtype).unsqueeze(0).expand(bsz, -1, -1)  # (B, m, d)
        embeds = torch.cat([prompt, e], dim=1)
        ones = attention_mask.new_ones(bsz, self.m)
        mask = torch.cat([ones, attention_mask], dim=1)
        if labels is not None:
            labels = torch.cat([labels.new_full((bsz, self.m), IGNORE_INDEX), labels], dim=1)
        return embeds, mask, labels

    def extra_config(self) -> dict:
        return {}


class ADePT(PromptAdapter):
    """Soft prompt + token-wise offset FFN: e' = e + relu(e @ A + a) @ B + b (dropout on h)."""

    method = "adept"

    def __init__(self, m: int, d: int, r: int, dropout: float = 0.1, distinct_ids_in_training: bool = False) -> None:
        super().__init__(m, d)
        self.r = r
        self.distinct_ids_in_training = distinct_ids_in_training  # see offset()
        self.A = nn.Parameter(torch.empty(d, r))
        self.a = nn.Parameter(torch.zeros(r))
        self.B = nn.Parameter(torch.zeros(r, d))
        self.b = nn.Parameter(torch.zeros(d))
        self.dropout = nn.Dropout(dropout)
        kaiming_uniform_fan_r(self.A)

    def offset(
        self, e: torch.Tensor, positions: torch.Tensor | None = None, ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """e + FFN(e), computed in the adapter's dtype and returned in the backbone's.

        The FFN depends on the token id alone, so with `ids` the first layer (e A + a) runs once per
        distinct id of the batch and is gathered back to the tokens. Dropout still draws one mask
        per token (the same draws as without `ids`); without dropout (p=0, or eval) the whole FFN
        runs per distinct id. Gradients are the same up to summation order (a repeated id's row sums
        its tokens' gradients). With gradients on, the per-token FFN is used unless the adapter was
        built with `distinct_ids_in_training`: the changed summation order breaks bitwise resume at
        another world size, which the per-token path keeps (docs/SPEED.md).
        """
        if ids is not None and torch.is_grad_enabled() and not self.distinct_ids_in_training:
            ids = None
        d = e.shape[-1]
        if ids is None:
            h = e.to(self.A.dtype) @ self.A + self.a  # (B, T, r)
        else:
            flat = ids.reshape(-1)
            uniq, inverse = torch.unique(flat, return_inverse=True)
            first = torch.full_like(uniq, flat.numel()).scatter_reduce_(
                0, inverse, torch.arange(flat.numel(), device=flat.device), "amin"
            )  # a token position holding each distinct id
            rows = e.reshape(-1, d)[first].to(self.A.dtype)  # (U, d)
            h_rows = rows @ self.A + self.a  # (U, r)
            if not (self.training and self.dropout.p > 0):
                delta = torch.relu(h_rows) @ self.B + self.b  # (U, d): the whole FFN per distinct id
                return e + delta[inverse].reshape(e.shape).to(e.dtype)
            h = h_rows[inverse].reshape(*e.shape[:-1], h_rows.shape[-1])  # (B, T, r); T may be 0
        h = self.dropout(h)
        return e + (torch.relu(h) @ self.B + self.b).to(e.dtype)

    def extra_config(self) -> dict:
        return {"r": self.r, "dropout": self.dropout.p}


class DePT(PromptAdapter):
    """Soft prompt + position-wise low-rank offset (alpha / sqrt(r)) * (A @ B)[position]."""

    method = "dept"

    def __init__(self, m: int, d: int, r: int, max_length: int, alpha: float = DEPT_ALPHA) -> None:
        super().__init__(m, d)
        self.r, self.max_length, self.alpha = r, max_length, alpha
        self.A = nn.Parameter(torch.empty(max_length, r))
        self.B = nn.Parameter(torch.zeros(r, d))
        kaiming_uniform_fan_r(self.A)

    def offset(
        self, e: torch.Tensor, positions: torch.Tensor | None = None, ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        if positions is None:
            positions = torch.arange(e.shape[1], device=e.device).expand(e.shape[0], -1)
        inside = (positions < self.max_length).unsqueeze(-1)  # tokens past s get no offset
        rows = self.A[positions.clamp(max=self.max_length - 1)]  # (B, T, r)
        delta = (rows @ self.B) * (self.alpha / math.sqrt(self.r)) * inside  # (B, T, d)
        return e + delta.to(e.dtype)

    def extra_config(self) -> dict:
        return {"r": self.r, "max_length": self.max_length, "alpha": self.alpha}


def build_adapter(
    method: str,
    m: int,
    d: int,
    r: int | None = None,
    max_length: int = 256,
    dropout: float = 0.1,
    distinct_ids_in_training: bool = False,
) -> PromptAdapter:
    """Build an adapter; r=None picks the budget-matched rank."""
    if method == "adept":
        return ADePT(m, d, r if r is not None else adept_rank(m, d), dropout, distinct_ids_in_training)
    if method == "dept":
        return DePT(m, d, r if r is not None else dept_rank(m, d, max_length), max_length)
    if method == "pt":
        return PromptAdapter(m, d)
    raise ValueError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
