"""Experiment trackers (``--report_to tensorboard,wandb``): live views of what metrics.jsonl holds.

metrics.jsonl stays the record of a run; a tracker gets the same records as they are written, on
the main process only: the train lines (``train/loss``, ``train/lr``, ...), the validation and test
lines (``validation/accuracy``, ``test/loss``, ...) and, once at the start, the resolved
configuration as hyperparameters. Both work offline: TensorBoard writes event files into
OUT/tensorboard; Weights & Biases runs in offline mode into OUT/wandb unless WANDB_MODE says
otherwise (``wandb sync OUT/wandb/offline-run-*`` uploads it later).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from adept_dist.common.errors import UserError

TRACKERS = ("tensorboard", "wandb")


class TrackerError(UserError, RuntimeError):
    """A tracker that cannot start; the message names the package to install."""


def parse_report_to(value: str) -> tuple[str, ...]:
    """'none', or a comma list of TRACKERS -> the trackers, in order, each once; a tracker whose package
    is not installed is a TrackerError here, before anything is loaded."""
    names = [v.strip() for v in value.split(",") if v.strip()]
    if names in ([], ["none"]):
        return ()
    unknown = [n for n in names if n not in TRACKERS]
    if unknown or "none" in names:
        raise ValueError(f"--report_to {value!r}: give none, or a comma list of {', '.join(TRACKERS)}")
    import importlib.util

    for name in names:
        if importlib.util.find_spec(name) is None:
            raise TrackerError(missing(name))
    return tuple(dict.fromkeys(names))


def missing(name: str) -> str:
    return f'--report_to {name} needs the {name} package: pip install {name} (or pip install -e ".[{name}]")'


def flat_scalars(record: dict) -> tuple[int, dict[str, float]]:
    """(step, {"split/key": value}) of a metrics.jsonl record: its numbers, under train/ for a train
    line and under its split's name for an evaluation line (the eval_ / test_ prefixes dropped)."""
    split = record.get("split", "train")
    prefix = "eval_" if split == "validation" else f"{split}_"
    out = {}
    for key, value in record.items():
        if key in ("step", "split") or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[f"{split}/{key.removeprefix(prefix)}"] = float(value)
    return int(record.get("step", 0)), out


class TensorBoard:
    def __init__(self, out: Path, config: dict, step: int) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TrackerError(missing("tensorboard")) from None
        # a resumed run writes its steps after the checkpoint again: purge_step drops the old ones
        self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=step + 1 if step else None)
        if not step:
            self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```", 0)
            self.writer.add_hparams(hparams(config), {}, run_name=".")

    def log(self, record: dict) -> None:
        step, scalars = flat_scalars(record)
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandB:
    def __init__(self, out: Path, config: dict, step: int, run_id: str, name: str) -> None:
        try:
            import wandb
        except ImportError:
            raise TrackerError(missing("wandb")) from None
        (out / "wandb").mkdir(parents=True, exist_ok=True)
        mode = os.environ.get("WANDB_MODE", "offline")  # offline unless the user asks for more
        self.run = wandb.init(dir=str(out), id=run_id, name=name, config=config, mode=mode, resume="allow",
                              project=os.environ.get("WANDB_PROJECT", "adept-dist"))  # fmt: skip
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")  # plotted over the run's steps, as in metrics.jsonl

    def log(self, record: dict) -> None:
        step, scalars = flat_scalars(record)
        self.run.log({**scalars, "step": step})

    def close(self) -> None:
        self.run.finish()


def hparams(config: dict) -> dict:
    """The configuration by sections as flat name -> value with TensorBoard's types (None as text)."""
    out = {}
    for section in config.values():
        if isinstance(section, dict):
            for key, value in section.items():
                out[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


def start(names: tuple[str, ...], out: Path, config: dict, step: int, run_id: str) -> list:
    """The trackers of `names`, started for the run in `out` at `step` (main process only)."""
    made = []
    for name in names:
        made.append(TensorBoard(out, config, step) if name == "tensorboard" else WandB(out, config, step, run_id,
                                                                                       out.name))  # fmt: skip
    return made
