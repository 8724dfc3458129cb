"""Resume checkpoints: safe to interrupt at any moment, and never trusted blindly.

A checkpoint is written by DeepSpeed (trainable state only: adapter, optimizer, scheduler) into a
temporary folder ``checkpoints/.tmp-stepNNNNNNNN``; when every rank has finished, the main rank
adds ``adept_meta.json`` (step, data position, world size), renames the folder to
``stepNNNNNNNN`` and only then points ``latest`` at it. A folder without the meta file is
incomplete and never loaded. On resume the newest complete checkpoint is tried first; if any rank
fails to load it, all ranks fall back to the one before, and the skipped one is reported.

Each checkpoint also holds ``trainable_state.safetensors``: the whole fp32 adapter and its Adam
moments (tiny), with the Adam step and the scheduler state in the meta file. A run with another
number of ranks resumes from that instead of DeepSpeed's per-rank partitions.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from .dist import adam_step_count, all_reduce_sum, consolidated_state, restore_consolidated_state

CKPT_DIR = "checkpoints"
META = "adept_meta.json"
PREFIX = "step"
CONSOLIDATED = "trainable_state.safetensors"


class CheckpointError(RuntimeError):
    """No usable checkpoint; the message says what was found and what to do."""


def tag_of(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / META).is_file())


def save(engine, named_params, root: Path, meta: dict, keep: int, main: bool) -> Path:
    """Collective: every rank calls it. Returns the final folder."""
    whole = consolidated_state(engine, named_params)  # collective
    meta = {**meta, "adam_step": adam_step_count(engine), "scheduler": scheduler_state(engine)}
    tag = tag_of(meta["step"])
    tmp_tag = f".tmp-{tag}"
    if main:
        shutil.rmtree(root / tmp_tag, ignore_errors=True)  # leftovers of a save that was killed
    dist.barrier()
    engine.save_checkpoint(str(root), tag=tmp_tag, client_state=meta, save_latest=False, exclude_frozen_parameters=True)
    dist.barrier()  # every rank's files are on disk
    final = root / tag
    if main:
        from safetensors.torch import save_file

        save_file(whole, str(root / tmp_tag / CONSOLIDATED))
        (root / tmp_tag / META).write_text(json.dumps(meta) + "\n")
        if final.exists():  # the same step saved again (a resumed run): replace it whole
            shutil.rmtree(final)
        os.replace(root / tmp_tag, final)
        (root / "latest.tmp").write_text(tag)
        os.replace(root / "latest.tmp", root / "latest")
        for old in complete_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


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


def resume(engine, named_params, root: Path, world: int, log) -> dict | None:
    """Load the newest checkpoint that every rank can load; return its meta (None: no checkpoint)."""
    candidates = complete_checkpoints(root)
    if not candidates:
        return None
    skipped: list[str] = []
    for folder in reversed(candidates):
        meta = json.loads((folder / META).read_text())
        error = ""
        try:
            if meta["world"] == world:
                path, _ = engine.load_checkpoint(str(root), tag=folder.name, load_module_strict=False)
                if path is None:
                    error = "DeepSpeed found nothing to load"
            else:
                log(
                    f"{folder.name} was written by {meta['world']} ranks, this run has {world}: loading its whole-state copy"
                )
                load_consolidated(engine, named_params, folder, meta)
        except Exception as exc:  # noqa: BLE001 - torch/DeepSpeed raise many kinds for a damaged file
            error = _first_line(exc)
        failed = all_reduce_sum(torch.tensor([1.0 if error else 0.0])).item()
        if not failed:
            if skipped:
                log(f"resumed from {folder.name} after skipping unusable checkpoint(s): {'; '.join(skipped)}")
            return meta
        skipped.append(f"{folder.name} is corrupt ({error or 'on another rank'})")
    raise CheckpointError(
        f"no usable checkpoint in {root}: {'; '.join(skipped)}; delete the folder to start again from step 0"
    )
