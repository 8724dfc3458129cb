"""One job per run folder: ``OUT/lock.json`` names the job that holds the folder (host, pid and
that process's start time, SLURM job id and restart count, start time). A second job is refused
while the holder lives; a lock whose holder is gone is taken over, with a line saying why:

- the holder ran on this host (same boot, same pid namespace) and its process has ended (or its
  pid now belongs to another process);
- the holder is an earlier run of this SLURM job (requeued: same job id, lower restart count);
- the holder's SLURM job (of this cluster) has ended by ``squeue`` (completed, cancelled, failed,
  ..., or no longer listed);
- the user says so (``--take_over``): a holder on another host without SLURM cannot be checked.
  ``--take_over`` never takes the lock from a holder the rules find alive (a process of this host
  whose pid and start time match, a SLURM job that squeue lists as pending or running).

The main process takes the lock before anything is written into the folder and gives it back when
the command ends (``release_held``, also after an error, and at exit); a killed job leaves it behind, which the rules above
handle. Creating the file is atomic (``O_EXCL``); taking one over renames it away first, so two
jobs taking over the same stale lock cannot both win. A job whose lock was taken over (by
``--take_over`` elsewhere) finds out before its next write (``check_held``, called by
``run.on_main`` and before each checkpoint) and stops with ``LockLost``, writing nothing more.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from adept_dist.common.errors import EXIT_LOCK_LOST, UserError, first_line
from adept_dist.common.fileio import now
from adept_dist.common.schema import LockFile, SchemaError, check

LOCK = "lock.json"
# the states of a job that will never run again (anything else, e.g. SIGNALING or STAGE_OUT, may)
ENDED_STATES = ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED", "SPECIAL_EXIT")  # fmt: skip


class LockError(UserError, RuntimeError):
    """The run folder belongs to a job that is still alive (or cannot be checked)."""


class LockLost(UserError, RuntimeError):
    """This job's lock was taken over by another job: it stops without writing anything more."""

    exit_code = EXIT_LOCK_LOST


def process_start(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot (Linux), telling a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the command name may hold spaces


def machine() -> dict:
    """What makes a pid comparable: the same boot of the same kernel and the same pid namespace
    (containers with the host's hostname have their own pids)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        boot, ns = None, None
    return {"boot_id": boot, "pid_ns": ns}


def me() -> dict:
    pid = os.getpid()
    env = os.environ
    return {
        "host": socket.gethostname(),
        **machine(),
        "pid": pid,
        "pid_start": process_start(pid),
        "slurm_cluster": env.get("SLURM_CLUSTER_NAME"),
        "slurm_job_id": env.get("SLURM_JOB_ID"),
        "slurm_restart": int(env.get("SLURM_RESTART_COUNT", "0") or 0),
        "started": now(),
    }


def describe(holder: dict) -> str:
    if holder.get("unreadable"):
        return "an unreadable lock"
    job = f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    return f"pid {holder.get('pid')} on {holder.get('host')}{job}, started {holder.get('started')}"


def slurm_job_state(job_id: str) -> str | None:
    """The job's state from squeue ("" when squeue no longer knows it), None without squeue. Only
    meaningful for a job of this cluster."""
    if shutil.which("squeue") is None:
        return None
    try:
        res = subprocess.run(
            ["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if res.returncode != 0:
        return "" if "invalid job id" in res.stderr.lower() else None
    return res.stdout.strip().splitlines()[0] if res.stdout.strip() else ""


def judge(holder: dict, mine: dict) -> tuple[str, str]:
    """("gone", why) when the holder can never write again, ("alive", why) when it can be seen
    running, ("unknown", "") when it cannot be checked from here."""
    same_pids = holder.get("host") == mine["host"] and all(
        holder.get(k) == mine[k] for k in ("boot_id", "pid_ns") if mine[k] is not None
    )
    if same_pids and isinstance(holder.get("pid"), int):
        pid = holder["pid"]
        if pid == mine["pid"]:
            return "gone", "it is this process (an earlier start in it)"
        start = process_start(pid)
        if start is None:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return "gone", f"process {pid} has ended"
            except PermissionError:
                return "alive", f"process {pid} of another user is running on this host"
            return "alive", f"process {pid} is running on this host"
        if holder.get("pid_start") not in (None, start):
            return "gone", f"process {pid} has ended (its pid now belongs to another process)"
        return "alive", f"process {pid} is running on this host"
    job = holder.get("slurm_job_id")
    theirs, ours = holder.get("slurm_cluster"), mine["slurm_cluster"]
    if job and (theirs is None or ours is None or theirs == ours):  # squeue answers for its own cluster only
        if job == mine["slurm_job_id"] and int(holder.get("slurm_restart", 0)) < mine["slurm_restart"]:
            return "gone", f"it is an earlier run of this job ({job}, requeued)"
        state = slurm_job_state(job)
        if state == "":
            return "gone", f"SLURM job {job} has ended (squeue no longer knows it)"
        if state is not None and state.split()[0] in ENDED_STATES:
            return "gone", f"SLURM job {job} is {state}"
        if state is not None:
            return "alive", f"SLURM job {job} is {state} by squeue"
    return "unknown", ""


_held: list[RunLock] = []


def release_held() -> None:
    """Give back every lock this process holds (a command's end, normal or not)."""
    while _held:
        _held.pop().release()


atexit.register(release_held)


class RunLock:
    def __init__(self, path: Path, record: dict) -> None:
        self.path, self.record = path, record

    def release(self) -> None:
        """Remove the lock if it is still ours (never one that another job has taken over)."""
        try:
            if json.loads(self.path.read_text()) == self.record:
                self.path.unlink()
        except (OSError, ValueError):
            pass


def check_held(where: Path) -> None:
    """Raise LockLost when `where` lies in a run folder whose lock this process took and no longer
    holds (another job took it over); nothing for a folder this process holds no lock of."""
    where = Path(where).resolve()
    for held in _held:
        folder = held.path.parent.resolve()
        if where != folder and folder not in where.parents:
            continue
        holder = read_holder(held.path)
        if holder != held.record:
            who = "nobody (lock.json was removed)" if holder is None else describe(holder)
            raise LockLost(
                f"run folder {folder} was taken over by {who}: this job stops here and writes nothing more "
                f"there; its last checkpoint is the other job's to resume"
            )


def read_holder(path: Path) -> dict | None:
    """The lock's record; None when it vanished. A file still empty after a moment (its writer died
    between creating and writing it) reads as a holder nobody can check."""
    why = ""
    for _ in range(2):
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            why = f"{path} is not JSON ({first_line(exc, 120)})"
            time.sleep(0.5)  # being written right now
            continue
        try:
            check(record, LockFile, path, "")
        except SchemaError as exc:  # written by something else, or damaged: its holder cannot be judged
            return {"unreadable": True, "why": str(exc).removesuffix("; fix: ")}
        return record
    return {"unreadable": True, "why": why}


def acquire(folder: Path, take_over: bool = False, log: Callable[[str], None] = print) -> RunLock:
    """Take the run folder's lock (the main process, before it writes anything there)."""
    path, mine = folder / LOCK, me()
    for _ in range(10):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_holder(path)
            if holder is None:
                continue
            verdict, why = ("unknown", "") if holder.get("unreadable") else judge(holder, mine)
            if verdict == "alive":
                raise LockError(
                    f"run folder {folder} is in use by {describe(holder)} ({why}): wait for that job to end or stop "
                    f"it; --take_over never takes a lock from a job that is alive"
                ) from None
            if verdict == "unknown" and not take_over and holder.get("unreadable"):
                raise LockError(
                    f"run folder {folder}: its lock {path} is unreadable ({holder.get('why') or 'empty'}: a job died "
                    f"writing it?): if no job runs in that folder, pass --take_over"
                ) from None
            if verdict == "unknown" and not take_over:
                raise LockError(
                    f"run folder {folder} is in use by {describe(holder)}, which cannot be checked from here: wait "
                    f"for that job to end or cancel it; if it is gone, pass --take_over"
                ) from None
            if not steal(path, holder):
                continue  # another job took it over first: look again
            log(
                f"took over the lock of {folder} from {describe(holder)}: {why if verdict == 'gone' else '--take_over'}"
            )
            continue
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(mine) + "\n")
        except OSError:
            path.unlink(missing_ok=True)  # a full disk: no empty lock that later starts cannot check
            raise
        lock = RunLock(path, mine)
        _held.append(lock)
        return lock
    raise LockError(f"run folder {folder}: could not take its lock {path} (other jobs keep taking it): try again")


def steal(path: Path, holder: dict) -> bool:
    """Move the judged lock away; False (and nothing lost) when it is no longer that holder's."""
    aside = path.with_name(f".{LOCK}.{os.getpid()}.stale")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    taken = read_holder(aside)
    if taken is not None and taken != holder and not taken.get("unreadable"):
        try:
            os.link(aside, path)  # a fresh lock of a live job: put it back unless yet another exists
        except OSError:
            pass
        aside.unlink(missing_ok=True)
        return False
    aside.unlink(missing_ok=True)
    return True
