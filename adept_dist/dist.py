"""Everything that touches DeepSpeed: process group, the DeepSpeed JSON, the engines, gathers,
and what ZeRO attaches to parameters (``ds_numel``, ``ds_tensor``).

This and ``loader.py`` (the layerwise loader, which partitions each layer with
``deepspeed.zero.Init``) are the only modules that import deepspeed; the DeepSpeed JSON is read
and resolved here only (``read_ds_config``, ``resolve_ds_config``, ``inference_ds_config``).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import io
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from . import traffic
from .config import Config, ConfigError
from .fileio import home, refuse_duplicate_keys

AUTO = "auto"
DEFAULT_DS_CONFIG = "ds_configs/zero3.json"  # the JSON behind --ds_config's default and --ds_config auto
STALE_BUILD_LOCK_S = 600  # building DeepSpeed's CPU comm op takes about a minute


@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    """A TCP port that is free on this machine now (for a rendezvous on 127.0.0.1)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(local_rank: int | None = None) -> Dist:
    """Join (or, for a plain `python` run, create) the process group; one rank per device."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    acc = get_accelerator()
    if acc.device_name() == "cpu":
        prepare_cpu_comm_op()  # before DeepSpeed's comm backend loads it
    if "RANK" not in os.environ and "OMPI_COMM_WORLD_RANK" not in os.environ:  # plain python: world of one
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))  # names only (DeepSpeed's shm buffers)
        if not dist.is_initialized():  # its store on a port the OS picks while binding: no port race
            dist.init_process_group(acc.communication_backend_name(), init_method="tcp://127.0.0.1:0", rank=0,
                                    world_size=1)  # fmt: skip
    if local_rank is None or local_rank < 0:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if acc.device_name() != "cpu":
        acc.set_device(local_rank)
    traffic.install()  # before DeepSpeed's comm backend, which keeps references to torch's collectives
    with without_op_banner():  # DeepSpeed's comm backend now (it creates the shm buffers), not at initialize
        deepspeed.init_distributed(verbose=False)
    atexit.unregister(close_process_group)  # once, however often a process joins
    atexit.register(close_process_group)
    device = torch.device(acc.device_name(local_rank)) if acc.device_name() != "cpu" else torch.device("cpu")
    if device.type == "cpu":
        share_cpu_cores(dist.get_world_size())
        unlink_shm_buffer()
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, device)


def extensions_dir() -> tuple[Path, bool]:
    """Where torch JIT-builds DeepSpeed's ops, and whether adept-dist owns that folder. One folder
    per Python environment: torch's default (~/.cache/torch_extensions/py311_cpu) is shared by
    every environment on the machine (or cluster, with a shared home), and each rebuilds the op
    (45-78 s) whenever another built it last. Inside the virtual environment when it is writable,
    else $ADEPT_DIST_HOME/torch_extensions/<hash of the environment's path>. TORCH_EXTENSIONS_DIR,
    when set, wins."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"]), False
    if sys.prefix != sys.base_prefix and os.access(sys.prefix, os.W_OK):
        return Path(sys.prefix) / "torch_extensions", True
    key = hashlib.sha256(sys.prefix.encode()).hexdigest()[:12]
    return home() / "torch_extensions" / key, True


def prepare_cpu_comm_op() -> None:
    """Build (or load) DeepSpeed's CPU shared-memory comm op once per environment, one process at a
    time, and never hang on a dead build. torch's build lock is a bare file (`<dir>/<op>/lock`): a
    job killed while building leaves it, and every later launch waits on it forever. Here the
    build runs under an OS lock (flock, released when its holder dies) on a baton file beside it,
    which holds the host of a holder that died while building. A torch lock found while holding
    the baton is stale when that holder was a process of this host (it is gone: we hold the
    baton) in adept-dist's own folder; otherwise (another node, whose flock a shared filesystem
    may not honour, or a TORCH_EXTENSIONS_DIR the user chose, where other programs build) it is
    waited on and removed once older than STALE_BUILD_LOCK_S. A filesystem without flock loads
    as DeepSpeed would."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return  # DeepSpeed falls back to plain gloo collectives
    root, ours = extensions_dir()
    before = os.environ.get("TORCH_EXTENSIONS_DIR")
    os.environ["TORCH_EXTENSIONS_DIR"] = str(root)  # for this load only: the module stays loaded
    try:
        root.mkdir(parents=True, exist_ok=True)
        with open(root / ".adept-dist-build.lock", "a+") as baton:
            try:
                fcntl.flock(baton, fcntl.LOCK_EX)
            except OSError:  # no flock here (some Lustre / NFS mounts): as DeepSpeed alone would
                builder.load()
                return
            baton.seek(0)
            last = baton.read().strip()
            clear_stale_build_lock(root / builder.NAME / "lock", ours and last == socket.gethostname())
            baton.truncate(0)
            baton.write(socket.gethostname())  # while it builds: a holder that dies leaves its host here
            baton.flush()
            builder.load()  # DeepSpeed keeps the module: its comm backend reuses it
            baton.truncate(0)  # released normally: no holder to suspect
    finally:
        if before is None:
            os.environ.pop("TORCH_EXTENSIONS_DIR", None)
        else:
            os.environ["TORCH_EXTENSIONS_DIR"] = before


def clear_stale_build_lock(torch_lock: Path, dead_holder: bool) -> None:
    """Remove torch's build lock left by a killed build: at once when its holder is known dead, else
    once it is older than STALE_BUILD_LOCK_S (waiting meanwhile, as torch would, but not forever)."""
    said = False
    while True:
        try:
            age = time.time() - torch_lock.stat().st_mtime
        except FileNotFoundError:
            return
        if dead_holder or age > STALE_BUILD_LOCK_S:
            torch_lock.unlink(missing_ok=True)
            print(
                f"[adept-dist] removed {torch_lock}: a build lock left by a job killed while building", file=sys.stderr
            )
            return
        if not said:
            print(f"[adept-dist] waiting on {torch_lock} ({age:.0f} s old): another job may be building DeepSpeed's "
                  f"op; removed if it is older than {STALE_BUILD_LOCK_S} s", file=sys.stderr)  # fmt: skip
            said = True
        time.sleep(1.0)


@contextlib.contextmanager
def without_op_banner():
    """Everything printed inside, except DeepSpeed's "... built successfully" (every rank prints it
    on every launch, even when nothing was built)."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            yield
    finally:
        kept = [line for line in out.getvalue().splitlines(keepends=True) if "built successfully" not in line]
        sys.stdout.write("".join(kept))


def close_process_group() -> None:
    """Shut the process group down while the interpreter is still whole. A process that exits with
    it alive can abort in its last moment ("terminate called without an active exception", exit
    -6, seen in CI after a finished run): gloo's worker threads still hold work whose tensors are
    freed during finalisation. Registered at exit by `init_distributed`; a no-op once torn down."""
    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def unlink_shm_buffer() -> None:
    """DeepSpeed's CPU shared-memory allreduce creates /dev/shm/deepspeed_allreduce_buffer_{uid}_
    {addr}_{port}_{rank} (66 MB per rank) and never removes it. Each rank maps every peer's buffer
    while the process group starts, so once all ranks are past that (the barrier), each can unlink
    its own name; the mappings stay valid until the processes end. A world of one creates one too
    (under the deepspeed launcher): nothing to wait for then."""
    if dist.get_world_size() > 1:
        dist.barrier()
    port, rank = os.environ.get("MASTER_PORT", ""), dist.get_rank()
    for path in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_{rank}"):
        with contextlib.suppress(OSError):
            path.unlink()


def share_cpu_cores(world: int) -> None:
    """CPU ranks on one machine must split its cores: with every rank running as many threads as
    there are cores, OpenMP threads spin against each other. An explicit OMP_NUM_THREADS is left alone."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    local = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or world)
    threads = max(1, len(os.sched_getaffinity(0)) // max(1, local))
    if torch.get_num_threads() > threads:
        torch.set_num_threads(threads)


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
        repo_copy = Path(__file__).resolve().parent / path
        if not repo_copy.is_file():
            raise ConfigError(
                f"DeepSpeed config {path} not found: pass --ds_config ds_configs/zero3.json or a path to your JSON"
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


def check_optimizer_block(opt, cfg: Config, path: str) -> None:
    """adept-dist always builds the optimizer itself (AdamW over two parameter groups, from the
    options), so an optimizer block never reaches DeepSpeed: it is accepted only where it says what
    runs anyway. Each key set to anything else ("auto" aside) is named in one line; ignoring it
    would silently train with other settings than the file asks for."""
    o = cfg.optim
    kind = opt.get("type") if isinstance(opt, dict) else None
    if str(kind).lower() not in ("adamw", "adam"):
        raise ConfigError(
            f"DeepSpeed config optimizer {kind!r}: adept-dist trains with AdamW; remove the optimizer block"
        )
    params = opt.get("params", {})
    if not isinstance(params, dict):
        raise ConfigError(f"DeepSpeed config {path}: optimizer.params must be an object; remove the optimizer block")
    groups = (
        {"--lr_prompt": o.lr_prompt}
        if cfg.adapter.method == "pt"
        else {"--lr_prompt": o.lr_prompt, "--lr_ffn": o.lr_ffn}
    )
    run = {  # key -> (the run's value(s), how the run sets it)
        "lr": (set(groups.values()), ", ".join(f"{k} {v}" for k, v in groups.items())),
        "eps": ({o.adam_eps}, f"--adam_eps {o.adam_eps}"),
        "weight_decay": ({o.weight_decay}, f"--weight_decay {o.weight_decay}"),
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
            f"--ds_config ds_configs/zero3.json, or --shard_scope none"
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


def resolve_ds_config(path: str, cfg: Config, world: int) -> dict:
    """Read the DeepSpeed JSON and fill its 'auto' values from the run config (the one place this
    happens). The optimizer and schedule are always built by adept-dist (two parameter groups)."""
    ds = read_ds_config(path)
    d, o = cfg.data, cfg.optim
    _fill(ds, "train_micro_batch_size_per_gpu", d.micro_batch_size, "")
    _fill(ds, "gradient_accumulation_steps", d.grad_accum, "")
    _fill(ds, "train_batch_size", d.global_batch(world), "")
    _fill(ds, "gradient_clipping", o.grad_clip, "")
    opt = ds.pop("optimizer", None)
    if opt is not None:
        check_optimizer_block(opt, cfg, path)
    if "scheduler" in ds:
        raise ConfigError(
            "DeepSpeed config has a scheduler block: remove it; set --warmup_steps and --max_steps instead"
        )
    if ds.get("fp16", {}).get("enabled") not in (None, False, AUTO):
        raise ConfigError(
            "DeepSpeed config enables fp16: adept-dist computes in bf16 or fp32 (--compute_dtype); set fp16.enabled false"
        )
    if cfg.model.compute_dtype not in ("bf16", "fp32"):
        raise ConfigError(f"compute_dtype {cfg.model.compute_dtype!r} must be resolved to bf16 or fp32 first")
    bf16 = ds.setdefault("bf16", {})
    _fill(bf16, "enabled", cfg.model.compute_dtype == "bf16", "bf16.")
    zero = ds.setdefault("zero_optimization", {})
    if zero.get("stage", 0) not in (0, 1, 2, 3):
        raise ConfigError(f"DeepSpeed config zero_optimization.stage={zero.get('stage')!r}: use 0, 1, 2 or 3")
    for key in ("zero_quantized_weights", "zero_quantized_nontrainable_weights"):
        if zero.get(key) and cfg.model.quant == "nf4":
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


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


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
    steps = [int(s["step"]) for s in engine.optimizer.optimizer.state.values() if "step" in s]
    return steps[0] if steps else 0


def broadcast_packed(tensors: dict[str, torch.Tensor] | None, meta: str | None, device: torch.device):
    """Send rank 0's named tensors and a text from rank 0 to every rank (collective). NCCL moves
    device tensors only, so they travel through `device` and come back to the CPU."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return tensors, meta
    if dist.get_rank() == 0:
        header = json.dumps({"meta": meta, "tensors": [[k, str(v.dtype), list(v.shape)] for k, v in tensors.items()]})
        raw = torch.frombuffer(bytearray(header.encode()), dtype=torch.uint8)
        size = torch.tensor([raw.numel()], dtype=torch.int64)
    else:
        size = torch.zeros(1, dtype=torch.int64)
    size = size.to(device)
    dist.broadcast(size, 0)
    buf = raw.to(device) if dist.get_rank() == 0 else torch.empty(int(size.item()), dtype=torch.uint8, device=device)
    dist.broadcast(buf, 0)
    header = json.loads(buf.cpu().numpy().tobytes().decode())
    out = {}
    for name, dtype, shape in header["tensors"]:
        dt = getattr(torch, dtype.removeprefix("torch."))
        t = tensors[name].to(device) if dist.get_rank() == 0 else torch.empty(shape, dtype=dt, device=device)
        dist.broadcast(t, 0)
        out[name] = t.cpu()
    return out, header["meta"]


def set_full_weights(named_params, state: dict[str, torch.Tensor]) -> None:
    """Overwrite the working (compute-dtype) copies of parameters with whole tensors, for evaluation
    (collective). The optimizer's fp32 masters are left as they are."""
    named_params = list(named_params)
    with gathered([p for _, p in named_params], modifier_rank=0):
        for name, p in named_params:
            p.data.copy_(state[name].to(p.device, p.dtype))


def broadcast_object(obj, src: int = 0):
    """A small picklable object from `src` to every rank (collective)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
