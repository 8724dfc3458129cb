"""Progress of long work on the main process: a live tqdm bar on a terminal; in a log file (SLURM,
nohup, a pipe) plain lines at a steady pace instead, so a log holds no carriage-return megalines
and no nested-bar escape codes.

    bar = Progress(150, "train", enabled=d.main)
    bar.update(loss="0.4072")   # once per step
    bar.close()
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm.auto import tqdm

LINE_EVERY_S = 60.0  # in a log file: at most one progress line a minute (and one at the end)


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def duration(seconds: float) -> str:
    """A rough human duration: 45 s, 7.5 min, 2.3 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """`total` units of work named `desc`; `initial` already done (a resumed run); `nested`: a bar
    shown while another is open (an evaluation inside training), removed when it closes. `stream`:
    where the bar goes (stderr); the lines of a log file go to stdout, with the other log lines."""

    def __init__(
        self,
        total: int,
        desc: str,
        enabled: bool = True,
        initial: int = 0,
        nested: bool = False,
        stream: TextIO | None = None,
        every_s: float = LINE_EVERY_S,
    ) -> None:
        stream = sys.stderr if stream is None else stream
        self.total, self.desc, self.initial, self.done, self.every_s = total, desc, initial, initial, every_s
        self.enabled = enabled and total > initial
        self.live = self.enabled and is_terminal(stream)
        self.out = stream if stream is not sys.stderr else sys.stdout
        self.start = self.last_line = time.perf_counter()
        self.first_s: float | None = None  # how long the first unit took
        self.postfix = ""
        self.bar = None
        if self.live:
            self.bar = tqdm(total=total, initial=initial, desc=desc, leave=not nested, dynamic_ncols=True, file=stream,
                            mininterval=0.5 if not nested else 2.0)  # fmt: skip

    def update(self, n: int = 1, **postfix) -> None:
        if not self.enabled:
            return
        self.done += n
        now = time.perf_counter()
        if self.first_s is None:
            self.first_s = now - self.start
        self.postfix = ", ".join(f"{k} {v}" for k, v in postfix.items())
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
        elif now - self.last_line >= self.every_s or self.done >= self.total:
            self.last_line = now
            self.line(now)

    def eta_s(self, now: float | None = None) -> float:
        """Seconds left at the pace so far (units done in this process only)."""
        now = time.perf_counter() if now is None else now
        return (now - self.start) / max(self.done - self.initial, 1) * (self.total - self.done)

    def line(self, now: float) -> None:
        pct = 100 * self.done / max(self.total, 1)
        left = "" if self.done >= self.total else f", about {duration(self.eta_s(now))} left"
        extra = f", {self.postfix}" if self.postfix else ""
        took = duration(now - self.start)
        print(f"[adept-dist] {self.desc} {self.done}/{self.total} ({pct:.0f}%) after {took}{left}{extra}",
              file=self.out, flush=True)  # fmt: skip

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
