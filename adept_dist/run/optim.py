"""What trains and how: the adapter's two parameter groups, AdamW, and the learning-rate schedule."""

from __future__ import annotations

import torch

from adept_dist.config.options import OptimConfig
from adept_dist.model.adapters import PromptAdapter


def lr_lambda(warmup: int, total: int):
    """Linear warmup to the peak over `warmup` steps, then linear decay to 0 at `total`."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return f


def trainable_groups(adapter: PromptAdapter, lr_prompt: float, lr_ffn: float) -> list[dict]:
    """The one place that decides what trains: the adapter's parameters, in two lr groups."""
    prompt = [adapter.prompt]
    rest = [p for n, p in adapter.named_parameters() if n != "prompt"]
    groups = [{"params": prompt, "lr": lr_prompt, "name": "prompt"}]
    if rest:
        groups.append({"params": rest, "lr": lr_ffn, "name": "offset"})
    return groups


def make_optimizer(adapter: PromptAdapter, o: OptimConfig):
    """AdamW over the adapter's groups and its warmup + linear-decay schedule (stepped per optimizer step)."""
    groups = trainable_groups(adapter, o.lr_prompt, o.lr_ffn)
    optimizer = torch.optim.AdamW(groups, eps=o.adam_eps, weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(o.warmup_steps, o.max_steps))
    return optimizer, scheduler
