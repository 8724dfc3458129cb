"""No rank outlives its launcher. ``deepspeed launch/train.py`` runs three kinds of process: DeepSpeed's
runner (the command the user started), its per-node launcher (``deepspeed.launcher.launch``) and the
ranks. A SIGTERM, SIGINT or SIGHUP sent to the runner alone (``kill``, a container stop, a
scheduler that signals only the top process) ends it at once without telling the others, and
the ranks would train on, orphaned, holding the run folder's lock.

So each rank looks up, once, the launcher processes above it (each by pid and start time, which
tells a reused pid apart) and a thread checks every second that they are all still there. When
one has gone, the rank sends itself SIGTERM: in the training loop that is the stop the trainer
already knows (every rank finishes the step, saves a checkpoint, exits 3: ``trainer.StopRequest``);
before it (while loading), the process ends. A rank that has not ended `GRACE_S` seconds later
(a collective that can no longer complete) is ended by the thread. Ranks started by srun or by hand
have no launcher above them, and nothing is watched.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

from adept_dist.common.lock import process_start

LAUNCHERS = ("deepspeed", "torchrun", "ds")  # console scripts that start ranks
LAUNCHER_MODULES = ("deepspeed.launcher", "torch.distributed.run", "torch.distributed.launch")
POLL_S = 1.0
GRACE_S = float(os.environ.get("ADEPT_ORPHAN_GRACE_S", "300"))  # from the stop to a forced end


def parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # field 4, after the command name (which may hold spaces)


def cmdline(pid: int) -> list[str]:
    try:
        return [a for a in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0") if a]
    except OSError:
        return []


def launcher_name(args: list[str]) -> str | None:
    """The launcher a command line runs (`python .../deepspeed ...`, `torchrun ...`,
    `python -u -m deepspeed.launcher.launch ...`), or None."""
    for i, arg in enumerate(args[:3]):
        if Path(arg).name in LAUNCHERS:
            return Path(arg).name
        if arg == "-m" and i + 1 < len(args) and args[i + 1].startswith(LAUNCHER_MODULES):
            return args[i + 1]
    return None


def launcher_chain(pid: int | None = None) -> list[tuple[int, str, str]]:
    """(pid, start time, command) of the launcher processes above `pid` (default: this process),
    nearest first, up to the first process that is not a launcher (a shell, slurmstepd, init)."""
    chain = []
    parent = parent_of(pid or os.getpid())
    while parent and parent > 1:
        name, start = launcher_name(cmdline(parent)), process_start(parent)
        if name is None or start is None:
            break
        chain.append((parent, start, name))
        parent = parent_of(parent)
    return chain


def gone(chain: list[tuple[int, str, str]]) -> tuple[int, str] | None:
    """The first launcher of `chain` that no longer runs (pid ended or reused), as (pid, command)."""
    for pid, start, cmd in chain:
        if process_start(pid) != start:
            return pid, cmd
    return None


def watch_launchers() -> threading.Thread | None:
    """Start the watch (a daemon thread) when this process has launchers above it; None otherwise."""
    chain = launcher_chain()
    if not chain:
        return None

    def run() -> None:
        while (lost := gone(chain)) is None:
            time.sleep(POLL_S)
        pid, cmd = lost
        print(f"[adept-dist] rank pid {os.getpid()}: its launcher ({cmd}, pid {pid}) has ended: saving and "
              f"stopping as on SIGTERM", file=sys.stderr, flush=True)  # fmt: skip
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(GRACE_S)
        print(f"[adept-dist] rank pid {os.getpid()}: still running {GRACE_S:.0f} s after its launcher ended: "
              f"ending it now", file=sys.stderr, flush=True)  # fmt: skip
        os._exit(1)

    thread = threading.Thread(target=run, name="adept-launcher-watch", daemon=True)
    thread.start()
    return thread
