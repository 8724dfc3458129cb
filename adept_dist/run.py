"""A training run as the loop sees it: the `Run` record, its metrics file and rank-0 logging.

`build.build` makes a `Run` whole (engine started, resume state loaded, metrics file open); the
trainer, evaluation and checkpoint modules read and advance it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from .errors import UserError
from .fileio import write_text

if TYPE_CHECKING:
    from .config import Config
    from .data import Example, LengthGroupedStream, SampleStream
    from .dist import Dist
    from .model import AdeptLM
    from .taskdata import TaskData


class TrainError(UserError, RuntimeError):
    """A run that cannot go on; the message says why."""


def log0(d: Dist, msg: str) -> None:
    """One line on the main process's console (through tqdm, so progress bars stay intact)."""
    if d.main:
        tqdm.write(f"[adept-dist] {msg}")


class MetricsLog:
    """metrics.jsonl: one JSON object per line, written by the main process only."""

    def __init__(self, path: Path, main: bool) -> None:
        self.path, self.main = path, main

    def drop_after(self, step: int) -> None:
        """Resume: forget the lines of steps after the checkpoint (the resumed run writes them again)."""
        if self.main and self.path.is_file():
            lines = [ln for ln in self.path.read_text().splitlines() if ln.strip()]
            kept = [ln for ln in lines if json.loads(ln).get("step", 0) <= step]
            write_text(self.path, "".join(ln + "\n" for ln in kept))

    def write(self, record: dict) -> None:
        if self.main:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


@dataclass
class RunParts:
    """What a run is built from, before DeepSpeed starts (build.prepare)."""

    cfg: Config
    d: Dist
    out: Path
    tokenizer: object
    data: TaskData
    model: AdeptLM  # frozen backbone + adapter, the trainable set checked
    stream: SampleStream | LengthGroupedStream  # the training data order
    ds_config: dict  # the resolved DeepSpeed JSON
    base_model: str  # --model as given ("builtin" for the demo model): recorded in exported adapters
    model_path: str  # the model actually loaded (the built-in model's folder for "builtin")

    @property
    def train_examples(self) -> list[Example]:
        return self.data.train


@dataclass
class Run(RunParts):
    """A run ready to train (build.assemble): engine started, resume state loaded."""

    engine: object  # the DeepSpeed engine around `model`
    metrics: MetricsLog
    step: int = 0
    position: int = 0  # samples of the stream consumed so far
    best: dict | None = None  # validation scores of the best step so far (written to best.json)
    best_state: dict | None = None  # that step's adapter weights (fp32, whole), on every rank

    @property
    def global_batch(self) -> int:
        return self.cfg.data.global_batch(self.d.world)
