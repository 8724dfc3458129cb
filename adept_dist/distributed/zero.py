"""What ZeRO attaches to parameters and optimizer state (``ds_numel``, ``ds_tensor``, the fp32
masters and Adam moments) read and written whole at any stage and world size, the engines
(`build_engine`, `build_inference_engine`) and gathers. With loader.py, comm.py and
buildlock.py, the only modules that import deepspeed."""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from adept_dist.common.errors import ConfigError
from adept_dist.common.imports import import_deferring_compile


def build_inference_engine(model: torch.nn.Module, ds: dict):
    import deepspeed

    engine, *_ = deepspeed.initialize(model=model, config=ds)
    return engine


def is_zero3_param(p: torch.nn.Parameter) -> bool:
    return hasattr(p, "ds_id")


def full_numel(p: torch.nn.Parameter) -> int:
    """Elements of the whole parameter (a ZeRO-3 partitioned one holds an empty placeholder)."""
    return getattr(p, "ds_numel", p.numel())


def local_numel(p: torch.nn.Parameter) -> int:
    """Elements this rank holds (its ZeRO-3 partition, or the whole parameter)."""
    return p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel()


def gathered(params, modifier_rank: int | None = None):
    """Full tensors of (possibly ZeRO-3 partitioned) parameters inside the block; a no-op otherwise."""
    params = [p for p in params if is_zero3_param(p)]
    if not params:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)


def build_engine(model: torch.nn.Module, optimizer, scheduler, ds_config: dict):
    """deepspeed.initialize with DeepSpeed's own gradient clipping off: its norm is summed over the
    ZeRO partitions, so it (and every update after a clipped step) changes in the last bits with
    the number of ranks. The trainer clips the whole gradient itself (``gradient_clipping`` of the
    resolved JSON, the run's --grad_clip)."""
    import deepspeed

    with contextlib.suppress(ImportError):  # the ZeRO optimizers import it; older DeepSpeed has none
        import_deferring_compile("deepspeed.runtime.zero.muon.muon_optimizer")
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config={**ds_config, "gradient_clipping": 0.0}
    )
    return engine, optimizer, scheduler


def full_fp32_state(named_params) -> dict[str, torch.Tensor]:
    """Whole fp32 master copies of trainable parameters (collective: every rank must call)."""
    from deepspeed.utils import safe_get_full_fp32_param

    out = {}
    for name, p in named_params:
        full = safe_get_full_fp32_param(p)
        out[name] = (full if full is not None else p.detach()).float().cpu().clone()
    return out


def full_grads(params) -> list[torch.Tensor | None]:
    """The whole reduced gradients of trainable parameters, read after backward and before the
    optimizer step, whatever the ZeRO partitioning (collective: every rank must call). They are
    the same bitwise at any number of ranks (each is assembled from its partitions)."""
    from deepspeed.utils import safe_get_full_grad

    return [safe_get_full_grad(p) for p in params]


def total_norm(grads: list[torch.Tensor | None]) -> float:
    """The global L2 norm, summed in float64 in parameter order: the same at any world size."""
    squares = torch.zeros((), dtype=torch.float64)
    for grad in grads:
        if grad is not None:
            squares += grad.double().pow(2).sum().cpu()
    return squares.sqrt().item()


def scale_grads(params, grads: list[torch.Tensor | None], factor: float) -> None:
    """Multiply the reduced gradients by `factor` before the optimizer step (gradient clipping).
    ZeRO-3: each rank scales its own partition; ZeRO-0/1/2: the whole gradient from `full_grads`
    is written back (each rank keeps its fragment). Element-wise, so exact at any world size."""
    from deepspeed.utils import safe_get_local_grad, safe_set_full_grad, safe_set_local_grad

    for p, grad in zip(params, grads):
        if grad is None:
            continue
        if is_zero3_param(p):
            safe_set_local_grad(p, safe_get_local_grad(p) * factor)
        else:
            safe_set_full_grad(p, grad * factor)


ADAM_KEYS = ("exp_avg", "exp_avg_sq")


def _link_adam_state(zero_opt) -> None:
    """ZeRO-1/2 map each parameter to its slice of Adam's state once, after the first parameter
    group's first step, when the other groups have no state yet (DeepSpeed 0.19.8): with two groups
    the offset's moments then stay unreachable. Link every group whose state exists, again."""
    from deepspeed.utils import lazy_init_hp_params_optimizer_state

    groups, flats = getattr(zero_opt, "bit16_groups", None), getattr(zero_opt, "single_partition_of_fp32_groups", None)
    if groups is None or flats is None:
        return  # ZeRO-3 keeps its own mapping
    for params, flat in zip(groups, flats):
        if zero_opt.optimizer.state.get(flat):
            lazy_init_hp_params_optimizer_state(params, flat, zero_opt.optimizer.state)


def consolidated_state(engine, named_params) -> dict[str, torch.Tensor]:
    """Whole fp32 weights and Adam moments of the trainable parameters, whatever the ZeRO
    partitioning (collective: every rank must call). Tiny for an adapter (3 x 0.4M floats at 7B)."""
    from deepspeed.utils import safe_get_full_optimizer_state

    named_params = list(named_params)
    _link_adam_state(engine.optimizer)
    out = {f"param.{name}": value for name, value in full_fp32_state(named_params).items()}
    for name, p in named_params:
        for key in ADAM_KEYS:
            value = safe_get_full_optimizer_state(p, key)
            if value is not None:  # None before the first optimizer step
                out[f"{key}.{name}"] = value.float().cpu().clone()
    return out


def restore_consolidated_state(engine, named_params, state: dict[str, torch.Tensor], adam_step: int) -> None:
    """Load a consolidated state into an engine of any world size (collective).

    DeepSpeed creates Adam's state lazily at the first step, so the entries of this rank's fp32
    flat partitions are created here before DeepSpeed's own mapping fills them."""
    zero_opt = engine.optimizer
    flats = getattr(zero_opt, "fp32_partitioned_groups_flat", None) or getattr(
        zero_opt, "single_partition_of_fp32_groups", None
    )
    if flats is None:
        raise ConfigError("resuming at another world size needs a ZeRO stage 1-3 DeepSpeed config")
    for flat in flats:
        zero_opt.optimizer.state[flat] = {
            "step": torch.tensor(float(adam_step)),
            **{key: torch.zeros_like(flat) for key in ADAM_KEYS},
        }
    _link_adam_state(zero_opt)
    named_params = list(named_params)
    with gathered([p for _, p in named_params], modifier_rank=0):  # the working (compute-dtype) copies
        for name, p in named_params:
            p.data.copy_(state[f"param.{name}"].to(p.device, p.dtype))
    for name, p in named_params:
        set_full_hp(p, state[f"param.{name}"].to(p.device))  # the fp32 masters
        for key in ADAM_KEYS:
            if f"{key}.{name}" in state:  # absent before the first step: zeros are Adam's fresh state
                set_full_hp(p, state[f"{key}.{name}"].to(p.device), key)


def set_full_hp(p: torch.nn.Parameter, value: torch.Tensor, key: str | None = None) -> None:
    """Set a parameter's fp32 master (or Adam moment `key`) from its whole value. A ZeRO-3 parameter
    gets this rank's slice, zero-padded at the end: DeepSpeed's own full setter (0.19.8) cuts the
    last rank's slice past the end whenever the size is not a multiple of the ranks (a 19-element
    tensor on 2 ranks failed to resume)."""
    from deepspeed.utils import (
        safe_set_full_fp32_param,
        safe_set_full_optimizer_state,
        safe_set_local_fp32_param,
        safe_set_local_optimizer_state,
    )

    if not is_zero3_param(p):
        if key is None:
            safe_set_full_fp32_param(p, value)
        else:
            safe_set_full_optimizer_state(p, value, key)
        return
    n = p.ds_tensor.numel()
    start = n * dist.get_rank(group=p.ds_process_group)
    flat = value.flatten()
    local = torch.zeros(n, dtype=flat.dtype, device=flat.device)
    if start < flat.numel():
        stop = min(start + n, flat.numel())
        local[: stop - start] = flat[start:stop]
    if key is None:
        safe_set_local_fp32_param(p, local)
    else:
        safe_set_local_optimizer_state(p, local, key)


def adam_step_count(engine) -> int:
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)  # ZeRO's wrapper, or a stage-0 fp32 bare AdamW
    steps = [int(s["step"]) for s in inner.state.values() if "step" in s]
    return steps[0] if steps else 0


def set_full_weights(named_params, state: dict[str, torch.Tensor]) -> None:
    """Overwrite the working (compute-dtype) copies of parameters with whole tensors, for evaluation
    (collective). The optimizer's fp32 masters are left as they are."""
    named_params = list(named_params)
    with gathered([p for _, p in named_params], modifier_rank=0):
        for name, p in named_params:
            p.data.copy_(state[name].to(p.device, p.dtype))
