"""A training run as the loop sees it: the `Run` record, its metrics file and rank-0 logging.

`build.build` makes a `Run` whole (engine started, resume state loaded, metrics file open); the
trainer, evaluation and checkpoint modules read and advance it.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from adept_dist.common import lock
from adept_dist.common.errors import UserError, first_line
from adept_dist.common.fileio import metrics_record, write_error, write_text
from adept_dist.distributed.comm import all_reduce_sum, broadcast_packed

if TYPE_CHECKING:
    from adept_dist.config.options import Config
    from adept_dist.data.examples import Example, LengthGroupedStream, SampleStream
    from adept_dist.data.splits import TaskData
    from adept_dist.distributed.comm import Dist
    from adept_dist.distributed.topology import Layout
    from adept_dist.model.lm import AdeptLM


class TrainError(UserError, RuntimeError):
    """A run that cannot go on; the message says why."""


def log0(d: Dist, msg: str) -> None:
    """One line on the main process's console (through tqdm, so progress bars stay intact), flushed:
    under srun or into a pipe stdout is block-buffered, and a job's log would show the line late,
    or never if the process is killed."""
    if d.main:
        tqdm.write(f"[adept-dist] {msg}")
        sys.stdout.flush()


class RankZeroError(UserError, RuntimeError):
    """A user error of the main process, raised on the other ranks too (its message says so)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def on_main(
    d: Dist, fn, what: str = "", where: Path | None = None, kept: str = "", returns: bool = False, tensors: bool = False
):
    """The one way ranks agree: run `fn` on the main process only and, with `returns`, return its
    result on every rank (collective), or raise the same error on every rank, so no rank waits for a
    main process that has given up. The result is a JSON value (the main process keeps its own
    object), or with `tensors` a pair (dict of named tensors, text) sent as they are; without either,
    None. A user error `fn` raises is raised on every rank (the others get it as RankZeroError, its
    exit code kept); when `fn` writes `what` into the folder `where`, a disk failure is a WriteError
    saying `kept` is intact, and a write into a run folder whose lock another job has taken over is
    not made (LockLost, lock.check_held). A bug keeps its traceback on the main process; the others
    stop too."""
    error, bug, value, sent = None, None, None, {}
    if d.main:
        try:
            if where is not None:
                lock.check_held(where)
            value = fn()
            if tensors:
                sent, value = value
            elif not returns:
                value = None
        except UserError as exc:
            error = exc
        except Exception as exc:
            error = write_error(exc, what, where, kept) if where is not None else None
            bug = exc if error is None else None
    if bug is not None:
        meta = {"message": f"the main process failed: {first_line(bug, 300)}", "code": 1}
    elif error is not None:
        meta = {"message": str(error), "code": error.exit_code}
    else:
        meta = {"value": value}
    if d.world > 1:
        try:
            text = json.dumps(meta)
        except (TypeError, ValueError) as exc:  # a result that is no JSON value: a bug, told to every rank
            bug = bug or exc
            text = json.dumps({"message": f"the main process failed: {first_line(exc, 300)}", "code": 1})
        sent, text = broadcast_packed(sent if error is None and bug is None else {}, text, d.device)
        meta = json.loads(text)
    if bug is not None:
        raise bug
    if error is not None:
        raise error
    if "message" in meta:
        raise RankZeroError(f"{meta['message']} (reported by rank 0)", meta["code"])
    result = value if d.main else meta["value"]
    return (sent, result) if tensors else result if returns else None


def any_rank(failed: bool) -> bool:
    """Whether `failed` holds on any rank (collective): on_main's partner for work every rank does
    (a checkpoint's files, loading one), where each must know whether all succeeded."""
    return all_reduce_sum(torch.tensor([1.0 if failed else 0.0])).item() > 0


class MetricsLog:
    """metrics.jsonl: one JSON object per line, written by the main process (every rank calls)."""

    def __init__(self, path: Path, d: Dist) -> None:
        self.path, self.d = path, d
        self.trackers: list = []  # main process only: trackers.start's, fed every record written here

    def start_trackers(self, names: tuple[str, ...], config: dict, step: int, run_id: str) -> None:
        """Start the --report_to trackers at `step` (collective: a missing package stops every rank)."""
        from adept_dist.common import trackers

        def start() -> None:
            self.trackers = trackers.start(names, self.path.parent, config, step, run_id)

        if names:
            on_main(self.d, start, "the trackers' files", self.path.parent, "metrics.jsonl is intact")

    def close(self) -> None:
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:  # each on its own: one that fails to close leaves the others' files whole
            try:
                tracker.close()
            except Exception as exc:  # noqa: BLE001 - never hides the error the run may be ending with
                tqdm.write(f"[adept-dist] warning: closing {type(tracker).__name__} failed: {first_line(exc, 200)}")

    @staticmethod
    def append(path: Path, data: bytes) -> None:
        """Add `data` to the end of `path` whole, or not at all (a full disk: no half line for a reader
        or a resume to trip over)."""
        with open(path, "ab", buffering=0) as f:  # unbuffered: nothing is written later, at close
            size = f.seek(0, os.SEEK_END)
            try:
                if f.write(data) != len(data):
                    raise OSError(errno.ENOSPC, "short write")
            except OSError:
                f.truncate(size)
                raise

    @property
    def aside(self) -> Path:
        """Where a resume keeps the lines of metrics.jsonl it could not read (appended, never rewritten)."""
        return self.path.with_name(self.path.name + ".broken")

    def drop_after(self, step: int, final: bool = False) -> None:
        """Resume: forget the lines of steps after the checkpoint (the resumed run writes them again);
        from the final checkpoint (`final`: a run that failed in its last writes) also the closing
        evaluations, which run again. Lines that are not records (`parse`) are dropped too, kept in
        `aside` with their line number and why, and said in one line."""

        def keep(rec: dict) -> bool:
            if final and (rec.get("split") == "test" or (rec.get("split") == "validation" and rec["step"] == step)):
                return False
            return rec["step"] <= step

        def drop() -> None:
            if not self.path.is_file():
                return
            from adept_dist.common.fileio import now

            kept, broken = [], []
            for number, line in enumerate(self.path.read_bytes().split(b"\n"), 1):
                if not line.strip():
                    continue
                rec, why = metrics_record(line)
                if rec is None:
                    broken.append({"at": now(), "line": number, "reason": why, "resumed_at_step": step,
                                   "text": line.decode("utf-8", "surrogateescape")})  # fmt: skip
                elif keep(rec):
                    kept.append(line.strip().decode())
            if broken:  # first, so that a failure here leaves metrics.jsonl as it was
                self.append(self.aside, "".join(json.dumps(b) + "\n" for b in broken).encode())
            write_text(self.path, "".join(ln + "\n" for ln in kept))
            if broken:
                where = ", ".join(str(b["line"]) for b in broken[:5]) + (", ..." if len(broken) > 5 else "")
                log0(self.d, f"{self.path}: dropped {len(broken)} line(s) that are not records (line {where}; line "
                             f"{broken[0]['line']}: {broken[0]['reason']}); they are kept in {self.aside}")  # fmt: skip

        on_main(self.d, drop, self.path.name, self.path.parent, "it is as it was")

    def write(self, record: dict) -> None:
        def append() -> None:
            self.append(self.path, (json.dumps(record) + "\n").encode())
            for tracker in list(self.trackers):  # after the line: metrics.jsonl is the record
                try:
                    tracker.log(record)
                except Exception as exc:  # noqa: BLE001 - a live view must not stop the run it shows
                    self.trackers.remove(tracker)
                    tqdm.write(f"[adept-dist] warning: {type(tracker).__name__} stopped reporting "
                               f"({first_line(exc, 200)}); metrics.jsonl goes on")  # fmt: skip

        on_main(self.d, append, f"{self.path.name} (step {record.get('step')})", self.path.parent,
                "its earlier lines are intact")  # fmt: skip


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
    layout: Layout  # the nodes of the ranks and the backbone's shard groups

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
