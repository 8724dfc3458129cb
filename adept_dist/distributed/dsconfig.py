"""The DeepSpeed JSON: read (the packaged ds_configs/ for the defaults), its "auto" values
filled and its explicit ones checked against the run's settings (`RunSettings`: plain values,
no app config), the sharding scope applied (stage 3 or 2), and the inference JSON. Imports no
deepspeed: the engines are zero.py's."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from adept_dist.common.errors import ConfigError
from adept_dist.common.fileio import refuse_duplicate_keys

AUTO = "auto"


DEFAULT_DS_CONFIG = "ds_configs/zero3.json"  # the JSON behind --ds_config's default and --ds_config auto


def _fill(section: dict, key: str, value, where: str) -> None:
    """Set an 'auto' (or absent) value; an explicit value must agree with the run config."""
    current = section.get(key, AUTO)
    if current == AUTO:
        section[key] = value
    elif current != value:
        raise ConfigError(
            f"DeepSpeed config sets {where}{key}={current!r} but the run asks for {value!r}: "
            f'set it to "auto" in the JSON (the run\'s option wins) or change the option'
        )


def read_ds_config(path: str) -> dict:
    """The DeepSpeed JSON at `path`, or for ds_configs/NAME.json the one shipped in the package (the
    checkout's ds_configs/ is a link to it), so the defaults work from any folder and any install."""
    p = Path(path)
    if not p.is_file():
        repo_copy = Path(__file__).resolve().parents[1] / path  # adept_dist/ds_configs/NAME.json
        if not repo_copy.is_file():
            raise ConfigError(
                f"DeepSpeed config {path} not found: pass --ds_config {DEFAULT_DS_CONFIG} or a path to your JSON"
            )
        p = repo_copy
    try:
        return json.loads(p.read_text(), object_pairs_hook=refuse_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"DeepSpeed config {p} is not valid JSON ({exc.msg} at line {exc.lineno}); comments are not allowed"
        ) from None
    except ValueError as exc:  # a key given twice: DeepSpeed would silently keep the last
        raise ConfigError(f"DeepSpeed config {p}: {exc}; give each key once") from None


# optim.make_optimizer leaves torch's AdamW default betas (tests/test_bad_input.py ties the two)


ADAMW_BETAS = (0.9, 0.999)


def _differs(value, ours) -> bool:
    """Whether a JSON value is not the run's: numbers compare as floats, betas as a pair, flags exactly."""
    if isinstance(ours, bool) or isinstance(value, bool):
        return value is not ours
    try:
        if isinstance(ours, tuple):
            return len(value) != len(ours) or any(float(v) != b for v, b in zip(value, ours))
        return float(value) != ours
    except (TypeError, ValueError):
        return True


@dataclass(frozen=True)
class RunSettings:
    """What the DeepSpeed JSON must agree with, as plain values (config.Config.ds_settings)."""

    micro_batch: int
    grad_accum: int
    global_batch: int
    grad_clip: float
    compute_dtype: str  # bf16 or fp32, resolved
    quant: str
    lrs: dict[str, float]  # the learning rate of each parameter group, by the option that sets it
    adam_eps: float
    weight_decay: float


def check_optimizer_block(opt, s: RunSettings, path: str) -> None:
    """adept-dist always builds the optimizer itself (AdamW over two parameter groups, from the
    options), so an optimizer block never reaches DeepSpeed: it is accepted only where it says what
    runs anyway. Each key set to anything else ("auto" aside) is named in one line; ignoring it
    would silently train with other settings than the file asks for."""
    kind = opt.get("type") if isinstance(opt, dict) else None
    if str(kind).lower() not in ("adamw", "adam"):
        raise ConfigError(
            f"DeepSpeed config optimizer {kind!r}: adept-dist trains with AdamW; remove the optimizer block"
        )
    params = opt.get("params", {})
    if not isinstance(params, dict):
        raise ConfigError(f"DeepSpeed config {path}: optimizer.params must be an object; remove the optimizer block")
    groups = s.lrs
    run = {  # key -> (the run's value(s), how the run sets it)
        "lr": (set(groups.values()), ", ".join(f"{k} {v}" for k, v in groups.items())),
        "eps": ({s.adam_eps}, f"--adam_eps {s.adam_eps}"),
        "weight_decay": ({s.weight_decay}, f"--weight_decay {s.weight_decay}"),
        "betas": ({ADAMW_BETAS}, f"{list(ADAMW_BETAS)}, fixed"),
        "adam_w_mode": ({True}, "true: decoupled weight decay"),
        "amsgrad": ({False}, "false"),
        "bias_correction": ({True}, "true"),
        "torch_adam": ({True}, "torch's AdamW"),
    }
    differ = []
    for key, value in params.items():
        if value == AUTO:
            continue
        if key not in run:
            differ.append(f"optimizer.params.{key}={value!r} (adept-dist's AdamW has no such setting)")
        elif any(_differs(value, ours) for ours in run[key][0]):  # one lr for two groups agrees only if both equal it
            differ.append(f"optimizer.params.{key}={value!r} (the run: {run[key][1]})")
    if differ:
        raise ConfigError(
            f"DeepSpeed config {path} disagrees with the run's AdamW: {'; '.join(differ)}; adept-dist builds the "
            f'optimizer from its options: remove the optimizer block (or set those keys to "auto"), or set the '
            f"matching options"
        )


def zero_stage(ds: dict) -> int:
    return ds.get("zero_optimization", {}).get("stage", 0)


def apply_shard_scope(ds: dict, scope: str | None, path: str) -> tuple[dict, str, str | None]:
    """The DeepSpeed JSON for a sharding scope of the frozen backbone, the scope (None: global for a
    stage-3 JSON, none for stage 0-2) and a line saying what changed, if anything. global and node
    need ZeRO-3; none on a stage-3 JSON runs it as stage 2 (its stage-3 keys dropped): the backbone
    replicated, the adapter's optimizer state still partitioned."""
    stage = zero_stage(ds)
    if scope is None:
        return ds, "global" if stage == 3 else "none", None
    if scope in ("global", "node") and stage != 3:
        raise ConfigError(
            f"--shard_scope {scope} partitions the backbone with ZeRO-3, but {path} is stage {stage}: pass "
            f"--ds_config {DEFAULT_DS_CONFIG}, or --shard_scope none"
        )
    zero = ds.get("zero_optimization", {})
    if scope == "node" and zero.get("zero_hpz_partition_size", 1) > 1:
        raise ConfigError(f"--shard_scope node and zero_hpz_partition_size in {path} both choose a secondary "
                          f"partition: remove zero_hpz_partition_size")  # fmt: skip
    if scope != "none" or stage != 3:
        return ds, scope, None
    if "offload_param" in zero:
        raise ConfigError(f"--shard_scope none replicates the backbone on every rank, but {path} offloads parameters "
                          f"(offload_param, ZeRO-3 only): use a config without it, e.g. ds_configs/zero2.json")  # fmt: skip
    kept = {k: v for k, v in zero.items() if not k.startswith("stage3_") and k not in ("stage",)}
    ds = {**ds, "zero_optimization": {"stage": 2, **kept}}
    return ds, "none", f"--shard_scope none: {path} runs as ZeRO stage 2 (backbone replicated on every rank)"


def resolve_ds_config(path: str, s: RunSettings) -> dict:
    """Read the DeepSpeed JSON and fill its 'auto' values from the run's settings (the one place this
    happens). The optimizer and schedule are always built by adept-dist (two parameter groups)."""
    ds = read_ds_config(path)
    _fill(ds, "train_micro_batch_size_per_gpu", s.micro_batch, "")
    _fill(ds, "gradient_accumulation_steps", s.grad_accum, "")
    _fill(ds, "train_batch_size", s.global_batch, "")
    _fill(ds, "gradient_clipping", s.grad_clip, "")
    opt = ds.pop("optimizer", None)
    if opt is not None:
        check_optimizer_block(opt, s, path)
    if "scheduler" in ds:
        raise ConfigError(
            "DeepSpeed config has a scheduler block: remove it; set --warmup_steps and --max_steps instead"
        )
    if ds.get("fp16", {}).get("enabled") not in (None, False, AUTO):
        raise ConfigError(
            "DeepSpeed config enables fp16: adept-dist computes in bf16 or fp32 (--compute_dtype); set fp16.enabled false"
        )
    if s.compute_dtype not in ("bf16", "fp32"):
        raise ConfigError(f"compute_dtype {s.compute_dtype!r} must be resolved to bf16 or fp32 first")
    bf16 = ds.setdefault("bf16", {})
    _fill(bf16, "enabled", s.compute_dtype == "bf16", "bf16.")
    zero = ds.setdefault("zero_optimization", {})
    if zero.get("stage", 0) not in (0, 1, 2, 3):
        raise ConfigError(f"DeepSpeed config zero_optimization.stage={zero.get('stage')!r}: use 0, 1, 2 or 3")
    for key in ("zero_quantized_weights", "zero_quantized_nontrainable_weights"):
        if zero.get(key) and s.quant == "nf4":
            raise ConfigError(f"DeepSpeed {key} would re-quantize packed NF4 bytes: turn it off or use --quant none")
    ds.setdefault("steps_per_print", 10**9)  # progress is ours (tqdm + metrics.jsonl)
    ds.setdefault("wall_clock_breakdown", False)
    return ds


def inference_ds_config(path: str, batch_size: int, world: int, bf16: bool) -> dict | None:
    """The DeepSpeed JSON for prediction: ZeRO-3 partitions the frozen model over the ranks
    (gathered layer by layer in each forward); None for stage 0-2 (the model stays replicated).
    No optimizer, no schedule, no clipping."""
    ds = read_ds_config(path)
    if zero_stage(ds) != 3:
        return None
    for key in ("optimizer", "scheduler", "gradient_clipping"):
        ds.pop(key, None)
    ds.update(
        train_micro_batch_size_per_gpu=batch_size,
        gradient_accumulation_steps=1,
        train_batch_size=batch_size * world,
        steps_per_print=10**9,
    )
    ds["bf16"] = {"enabled": bf16}
    return ds
