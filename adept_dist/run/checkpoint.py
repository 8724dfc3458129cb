"""Resume checkpoints and the adapters a run exports: safe to interrupt at any moment, and never
trusted blindly.

A checkpoint is written by DeepSpeed (trainable state only: adapter, optimizer, scheduler) into a
temporary folder ``checkpoints/.tmp-stepNNNNNNNN``; when every rank has finished, the main rank
adds ``adept_meta.json`` (step, data position, world size), renames the folder to
``stepNNNNNNNN`` and only then points ``latest`` at it. A folder without the meta file is
incomplete and never loaded. On resume the newest complete checkpoint is tried first; if any rank
fails to load it, all ranks fall back to the one before, and the skipped one is reported.

Each checkpoint also holds ``trainable_state.safetensors``: the whole fp32 adapter and its Adam
moments (tiny), with the Adam step and the scheduler state in the meta file. A run with another
number of ranks resumes from that instead of DeepSpeed's per-rank partitions.

A run saves and resumes through ``save_checkpoint`` / ``resume_state`` (which restores the best
adapter found so far with ``artifacts.restore_best``); ``export_checkpoint`` writes the adapter of
any checkpoint (adept-export). The run's other files are ``artifacts.py``'s.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Annotated

import torch
import torch.distributed as dist
from pydantic import Field

from adept_dist.common.errors import UserError, first_line
from adept_dist.common.fileio import WriteError, write_error, write_text
from adept_dist.common.schema import Count, Finite, PositiveInt, Record, check, check_tensors, load_json
from adept_dist.distributed.zero import ADAM_KEYS, adam_step_count, consolidated_state, restore_consolidated_state
from adept_dist.export.adapter import (
    AdapterFileError,
    adapter_config,
    adapter_shapes,
    check_adapter_config,
    save_adapter,
    shapes_source,
)
from adept_dist.run.artifacts import own_adapter_config, restore_best, run_fields, run_id
from adept_dist.run.context import Run, any_rank, log0

CKPT_DIR = "checkpoints"
META = "adept_meta.json"
PREFIX = "step"
CONSOLIDATED = "trainable_state.safetensors"
ADAPTER_PREFIX = "adapter."  # AdeptLM.adapter: the trainable part of the engine's module


class CheckpointError(UserError, RuntimeError):
    """No usable checkpoint; the message says what was found and what to do."""


class SchedulerState(Record):
    base_lrs: list[Finite]
    last_epoch: Annotated[int, Field(ge=-1)]


class CheckpointMeta(Record):
    """adept_meta.json: where the run stood (save_checkpoint, save) and, from 2026-12 on, the
    checkpoint's own identity: ``adapter``, the adapter config its export gets (the run's data
    settings, base model, encoding; export.AdapterConfigFile), and ``run_id``, the identity.id of
    the run's config.json. Checkpoints written before lack both: their export takes the settings of
    the config.json of the run folder they sit in (and says so)."""

    step: Count
    position: Count
    world: PositiveInt
    global_batch: PositiveInt = None  # absent before 2026-11: the run's own is assumed
    zero_stage: Annotated[int, Field(ge=0, le=3)] = None
    adam_step: Count = None  # with the scheduler: needed to resume at another world size
    scheduler: SchedulerState = None
    adapter: dict = None
    run_id: str = None


META_FIX = "resume or export another step (the damaged checkpoint folder can be deleted)"


def read_meta(folder: Path) -> dict:
    """A checkpoint's adept_meta.json, every field checked (its adapter config too); one
    CheckpointError line naming the file and field where it is damaged."""
    path = folder / META
    meta = load_json(path, META_FIX, CheckpointError)
    check(meta, CheckpointMeta, path, META_FIX, CheckpointError)
    if meta.get("adapter") is not None:
        try:
            check_adapter_config(meta["adapter"], f'{path} (its "adapter")', META_FIX)
        except AdapterFileError as exc:
            raise CheckpointError(str(exc)) from None
    return meta


def tag_of(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / META).is_file())


def save(engine, named_params, root: Path, meta: dict, keep: int, main: bool) -> Path:
    """Collective: every rank calls it. Returns the final folder. A failed write (disk full, quota,
    read-only) removes the partial folder and raises WriteError on every rank; the checkpoints
    before it and ``latest`` stay as they were."""
    whole = consolidated_state(engine, named_params)  # collective
    meta = {**meta, "adam_step": adam_step_count(engine), "scheduler": scheduler_state(engine)}
    tag = tag_of(meta["step"])
    tmp = root / f".tmp-{tag}"
    failure = None
    if main:
        try:
            root.mkdir(parents=True, exist_ok=True)  # DeepSpeed's own makedirs would fail on rank 0 alone
            shutil.rmtree(tmp, ignore_errors=True)  # leftovers of a save that was killed
        except OSError as exc:
            failure = exc
    agree(failure, tag, root, main)
    try:
        engine.save_checkpoint(str(root), tag=tmp.name, client_state=meta, save_latest=False,
                               exclude_frozen_parameters=True)  # fmt: skip
        failure = None
    except Exception as exc:  # noqa: BLE001 - torch.save reports a full disk as a RuntimeError
        failure = exc
        dist.barrier()  # the one DeepSpeed's save ends with, which this rank skipped
    agree(failure, tag, root, main)  # every rank's files are on disk, or all ranks raise
    final = root / tag

    def finish() -> None:
        from safetensors.torch import save_file

        save_file(whole, str(tmp / CONSOLIDATED))
        (tmp / META).write_text(json.dumps(meta) + "\n")
        if final.exists():  # the same step saved again (a resumed run): replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
        write_text(root / "latest", tag)
        for old in complete_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)

    failure = None
    if main:
        try:
            finish()
        except Exception as exc:  # noqa: BLE001 - safetensors and json report a full disk in their own ways
            failure = exc
    agree(failure, tag, root, main)
    return final


def agree(failure: BaseException | None, tag: str, root: Path, main: bool) -> None:
    """Collective: raise on every rank when the checkpoint write failed on any (the main rank removes
    the partial folder first); a failure that is not the disk's keeps its traceback."""
    if not any_rank(failure is not None):
        return
    kept = f"the checkpoints before {tag} are intact"
    error = write_error(failure, f"checkpoint {tag}", root, kept) if failure is not None else None  # before cleanup
    if main:
        shutil.rmtree(root / f".tmp-{tag}", ignore_errors=True)
    if failure is not None and error is None:
        raise failure
    raise error or WriteError(f"could not write checkpoint {tag} in {root} on another rank (see its line); {kept}")


def scheduler_state(engine) -> dict:
    state = engine.lr_scheduler.state_dict()
    state.pop("lr_lambdas", None)  # functions, rebuilt from the run config
    return state


def load_consolidated(engine, named_params, folder: Path, meta: dict) -> None:
    """Resume from the whole-state copy (another world size): weights, Adam moments and step, schedule."""
    from safetensors.torch import load_file

    restore_consolidated_state(engine, named_params, load_file(str(folder / CONSOLIDATED)), meta["adam_step"])
    sched = engine.lr_scheduler
    sched.load_state_dict({**meta["scheduler"], "lr_lambdas": [None] * len(sched.lr_lambdas)})
    for group, lr in zip(engine.optimizer.param_groups, sched.get_last_lr()):
        group["lr"] = lr  # the rate of the next step, as an uninterrupted run would use


def load_trainable_only(src: dict, dst: torch.nn.Module) -> None:
    """DeepSpeed's module load for our checkpoints. They are saved without the frozen parameters
    but with what frozen layers add to a state dict (NF4 quantisation statistics, a tied head),
    which stays as loaded. The saved adapter tensors must be exactly this run's trainable
    parameters (a plain non-strict load would ignore any mismatch); only they are loaded."""
    trainable = {n for n, p in dst.named_parameters() if p.requires_grad}  # the adapter's (build.check_trainable)
    saved = {k for k in src if k.startswith(ADAPTER_PREFIX)}
    if saved != trainable:
        missing, unexpected = sorted(trainable - saved), sorted(saved - trainable)
        raise CheckpointError(f"its adapter tensors do not match this run's (missing {missing[:5]}, unexpected "
                              f"{unexpected[:5]}): it was written with another --method or adapter shape")  # fmt: skip
    dst.load_state_dict({k: src[k] for k in trainable}, strict=False)


def unreadable_files(folder: Path, rank: int) -> str:
    """The first of DeepSpeed's files that this rank loads from `folder` (its own ZeRO partition files
    and the shared model states) that cannot be read, as a short reason; "" when all can. They hold
    the adapter and its optimizer state only (the frozen backbone is not saved): small to read twice."""
    for path in sorted(folder.glob("*.pt")):
        own = f"zero_pp_rank_{rank}_" in path.name
        if own or ("zero_pp_rank_" not in path.name and path.name.endswith("model_states.pt")):
            try:
                torch.load(path, map_location="cpu", weights_only=False)
            except Exception as exc:  # noqa: BLE001 - a truncated or garbled file raises many kinds
                return f"{path.name}: {first_line(exc, 120)}"
    return ""


def load_one(engine, named_params, root: Path, folder: Path, meta: dict, world: int, log) -> None:
    """Load one checkpoint: DeepSpeed's own files at the world size and ZeRO stage that wrote it,
    else its whole-state copy."""
    same_stage = meta.get("zero_stage", engine.zero_optimization_stage()) == engine.zero_optimization_stage()
    if meta["world"] == world and same_stage:
        # every rank reads its own files first and all agree before any enters DeepSpeed's load, whose
        # collectives would otherwise wait forever for a rank that failed on a damaged file of its own
        mine = unreadable_files(folder, dist.get_rank() if dist.is_initialized() else 0)
        problems = [mine]
        if world > 1:
            problems = [None] * world
            dist.all_gather_object(problems, mine)
        bad = [f"{text} (rank {r})" for r, text in enumerate(problems) if text]
        if bad:
            raise CheckpointError("; ".join(bad[:2]))
        path, _ = engine.load_checkpoint(str(root), tag=folder.name, custom_load_fn=load_trainable_only)
        if path is None:
            raise CheckpointError("DeepSpeed found nothing to load")
    else:
        what = (f"{meta['world']} ranks, this run has {world}" if meta["world"] != world else
                f"ZeRO stage {meta['zero_stage']}, this run uses {engine.zero_optimization_stage()}")  # fmt: skip
        log(f"{folder.name} was written by {what}: loading its whole-state copy")
        load_consolidated(engine, named_params, folder, meta)


def resume(engine, named_params, root: Path, world: int, log) -> dict | None:
    """Load the newest checkpoint that every rank can load; return its meta (None: no checkpoint)."""
    candidates = complete_checkpoints(root)
    if not candidates:
        return None
    skipped: list[str] = []
    for folder in reversed(candidates):
        try:
            meta, error = read_meta(folder), ""
        except CheckpointError as exc:  # damaged metadata: skipped like a checkpoint that fails to load
            meta, error = None, str(exc).split("; fix:")[0]
        try:
            if meta is not None:
                load_one(engine, named_params, root, folder, meta, world, log)
        except Exception as exc:  # noqa: BLE001 - torch/DeepSpeed raise many kinds for a damaged file
            error = first_line(exc, 200)
        if not any_rank(bool(error)):
            if skipped:
                log(f"resumed from {folder.name} after skipping unusable checkpoint(s): {'; '.join(skipped)}")
            return meta
        skipped.append(f"{folder.name} is corrupt ({error or 'on another rank'})")
    raise CheckpointError(
        f"no usable checkpoint in {root}: {'; '.join(skipped)}; delete the folder to start again from step 0"
    )


# ----------------------------------------------------------------------------- a run's checkpoints
def save_checkpoint(run: Run) -> None:
    """Resume state of the run at its current step (collective)."""
    meta = {"step": run.step, "position": run.position, "world": run.d.world, "global_batch": run.global_batch,
            "zero_stage": run.engine.zero_optimization_stage(), "adapter": own_adapter_config(run)}  # fmt: skip
    if run.d.main:  # only the main process writes adept_meta.json
        meta["run_id"] = run_id(run.out)
    adapter_params = list(run.model.adapter.named_parameters())
    save(run.engine, adapter_params, run.out / CKPT_DIR, meta, run.cfg.run.keep_checkpoints, run.d.main)


def resume_state(run: Run) -> None:
    """Load the newest usable checkpoint of the output folder, if there is one (collective)."""
    root = run.out / CKPT_DIR
    adapter_params = list(run.model.adapter.named_parameters())
    meta = resume(run.engine, adapter_params, root, run.d.world, lambda m: log0(run.d, m))
    if meta is None:
        log0(run.d, f"--resume: no checkpoint in {root} yet, starting from step 0")
        return
    if meta["step"] > run.cfg.optim.max_steps:
        raise CheckpointError(
            f"--max_steps {run.cfg.optim.max_steps} is below the step of the checkpoint ({meta['step']}) in {root}: "
            f"give --max_steps {meta['step']} or more"
        )
    saved_batch, batch = meta.get("global_batch", run.global_batch), run.global_batch
    if saved_batch != batch:
        dc, world = run.cfg.data, run.d.world
        accum, rest = divmod(saved_batch, dc.micro_batch_size * world)
        fix = f"--grad_accum {accum}" if accum and not rest else "--micro_batch_size and --grad_accum"
        raise CheckpointError(
            f"the global batch would change from {saved_batch} to {batch} examples per step (micro_batch_size "
            f"{dc.micro_batch_size} x grad_accum {dc.grad_accum} x {world} ranks), which changes the optimisation: "
            f"set {fix} to keep {saved_batch}"
        )
    run.step, run.position = meta["step"], meta["position"]
    # the rate of the next step from this run's schedule (what LambdaLR computes; the same value as
    # the one restored unless --reschedule changed the schedule, now or in a start that died since)
    sched = run.engine.lr_scheduler
    for group, base, f in zip(run.engine.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
        group["lr"] = base * f(sched.last_epoch)
    if "max_steps" in run.cfg.changes:
        old, new = run.cfg.changes["max_steps"]
        log0(run.d, f"--reschedule: max_steps {old} -> {new}; the learning rate at step {run.step + 1} is now "
                    f"{run.engine.get_lr()[0]:.4g} and decays to 0 at step {new}")  # fmt: skip
    log0(run.d, f"resumed from {tag_of(run.step)}: step {run.step}, {run.position} samples seen")
    restore_best(run)


def export_checkpoint(folder: str | Path, out_dir: str | Path, model: str | None = None, log=print) -> Path:
    """The adapter of one checkpoint, OUT/checkpoints/stepN, written to `out_dir` as a run writes
    OUT/adapter (the same files and config keys), from the checkpoint's whole fp32 adapter state
    alone: no DeepSpeed engine and no model weights, whatever the world size that wrote it.

    A checkpoint carries its own identity (adept_meta.json's "adapter": its run's separator,
    max_length, task, method and shapes, base model, encoding): that config is exported as it is,
    wherever the folder sits, and a line says so when the run folder around it is another run's
    (its config.json's identity.id is not the checkpoint's run_id) or has no readable config.json.
    A checkpoint written before (no "adapter") is described by its run folder's config.json, and
    the base model's config (`model`, else the run's) gives its vocabulary size, as before; a line
    says that this cannot be checked. A missing, partial or corrupt checkpoint is one CheckpointError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from adept_dist.export.adapter import adapter_args
    from adept_dist.model.adapters import build_adapter

    ckpt, out = Path(folder), Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"--output {out} exists and is not empty: choose a new folder (nothing was written)")
    if not ckpt.is_dir():
        raise CheckpointError(f"checkpoint {ckpt} not found: give a folder OUT/checkpoints/stepN of a run")
    if not (ckpt / META).is_file():
        raise CheckpointError(f"{ckpt} is not a complete checkpoint (it has no {META}: it was being written when its "
                              f"run stopped, or is no checkpoint): export another step of {ckpt.parent}")  # fmt: skip
    meta = read_meta(ckpt)
    path = ckpt / CONSOLIDATED
    if not path.is_file():
        raise CheckpointError(f"{ckpt} has no {CONSOLIDATED} (written by adept-dist 2026-11-27 and later): "
                              f"export another step, or the run's OUT/adapter")  # fmt: skip
    try:
        state = load_file(str(path))
    except (OSError, ValueError, SafetensorError) as exc:
        raise CheckpointError(f"{ckpt} is corrupt ({first_line(exc)}): export another step") from None
    params = {k.removeprefix("param."): v for k, v in state.items() if k.startswith("param.")}  # the adapter's own
    run_dir = ckpt.parent.parent
    if meta.get("adapter") is not None:
        cfg, where = dict(meta["adapter"]), f"its {META}"
        note = identity_note(ckpt, run_dir, meta.get("run_id"), cfg)
    else:
        cfg, where = settings_of_run(ckpt, run_dir, params, meta["step"], model), f"{run_dir}/config.json"
        note = (f"{ckpt} predates checkpoints that carry their own settings: exported with those of {where} "
                f"(separator, max_length, task), which cannot be checked against it")  # fmt: skip
    shapes = adapter_shapes(cfg)
    adam = {f"{key}.{name}": shape for key in ADAM_KEYS for name, shape in shapes.items()}
    check_tensors(path, {f"param.{k}": v for k, v in shapes.items()}, "export another step", CheckpointError,
                  shapes_source(cfg, where), optional=adam)  # fmt: skip
    if not all(torch.isfinite(v).all() for v in params.values()):
        raise CheckpointError(f"{path}: the adapter holds NaN or inf: export another step")
    adapter = build_adapter(*adapter_args(cfg))
    adapter.load_state_dict(params)
    cfg["parameter_count"] = sum(v.numel() for v in params.values())
    written = save_adapter(out, dict(adapter.state_dict()), cfg)
    if note:
        log(note)
    return written


def identity_note(ckpt: Path, run_dir: Path, own_id: str | None, cfg: dict) -> str | None:
    """A line when the folder a checkpoint sits in is not its run's (None: it is, or cannot be told)."""
    from adept_dist.common.errors import ConfigError
    from adept_dist.config.options import CONFIG_FILE
    from adept_dist.config.record import read_run_config

    settings = f"separator {cfg.get('separator')!r}, max_length {cfg.get('max_length')}, task {cfg.get('task')}"
    used = f"exported with the settings saved in its own {META} ({settings})"
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return f"{ckpt} sits in no run folder ({path} not found): {used}"
    try:
        theirs = (read_run_config(path).get("identity") or {}).get("id")
    except ConfigError as exc:
        return f"{ckpt}: {used}; its folder's config.json is unreadable ({first_line(exc, 200)})"
    if own_id is None or theirs == own_id:
        return None
    return f"{ckpt} was written by run {own_id}, not by the run of {run_dir} ({theirs}): {used}, not {path}'s"


def settings_of_run(ckpt: Path, run_dir: Path, params: dict, step: int, model: str | None) -> dict:
    """The adapter config of a checkpoint without its own: the run folder's config.json and the
    checkpoint's tensors (m, d, r)."""
    from adept_dist.common.errors import ConfigError
    from adept_dist.config.options import CONFIG_FILE
    from adept_dist.config.record import read_run_config
    from adept_dist.model.adapters import build_adapter
    from adept_dist.model.backbone import load_config
    from adept_dist.model.builtin import builtin_dir

    if not (run_dir / CONFIG_FILE).is_file():
        raise CheckpointError(f"{run_dir / CONFIG_FILE} not found: give the checkpoint inside its run folder "
                              f"(OUT/checkpoints/stepN), where the run's config says how its adapter was built")  # fmt: skip
    try:
        record = read_run_config(run_dir / CONFIG_FILE)
    except ConfigError as exc:
        raise CheckpointError(str(exc).removeprefix("--resume: ")) from None
    try:
        a, data, model_path = record["adapter"], record["data"], record["model"]["model"]
        method, max_length, dropout = a["method"], data["max_length"], a["dropout"]
        missing = [k for k in ("task", "separator") if k not in data] + [
            k for k in ("compute_dtype", "quant") if k not in record["model"]
        ]
        if missing:
            raise KeyError(missing[0])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{run_dir / CONFIG_FILE} lacks {exc} of a run record: restore it from a backup"
        ) from None
    prompt, offset = params.get("prompt"), params.get("A")
    if prompt is None or prompt.dim() != 2 or (offset is not None and offset.dim() != 2):
        raise CheckpointError(f"{ckpt / CONSOLIDATED} holds no usable adapter (no 2-D prompt): export another step")
    m, d = prompt.shape
    try:
        adapter = build_adapter(method, m, d, None if offset is None else offset.shape[1], max_length, dropout)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{ckpt} does not hold the {method} adapter its run's config describes "
                              f"({first_line(exc)}): export another step") from None  # fmt: skip
    builtin = str(builtin_dir() / "model")
    base = "builtin" if model_path == builtin and data.get("train_file") is None else model_path
    encoding = record.get("identity", {}).get("encoding", 1)
    vocab_size = load_config(model or model_path).vocab_size  # a model gone from this machine: --model
    return adapter_config(adapter, **run_fields(record, base, vocab_size, encoding, step))
