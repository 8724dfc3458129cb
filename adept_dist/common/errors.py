"""User errors and exit codes, shared by every command line (train, predict, export).

Every expected failure (a bad option, data file, model, adapter, checkpoint, or a run that cannot
go on) is a subclass of ``UserError``, raised by the module that owns the concern. A command turns
it into one line on stderr and exit code 2; anything else is a bug and keeps its traceback. This
module imports nothing of the package, so every module may import it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import NoReturn

EXIT_OK = 0
EXIT_USER_ERROR = 2  # bad input: one line says what and how to fix it
EXIT_STOPPED = 3  # stopped by SIGUSR1/SIGTERM after saving a checkpoint: rerun with --resume
EXIT_WRITE_FAILED = 4  # a write failed (disk full, quota, read-only): what was written before is intact
EXIT_LOCK_LOST = 5  # another job took the run folder's lock over (--take_over): this one wrote nothing more


class UserError(Exception):
    """A problem with the user's input or files; the message names it and the fix. A subclass that
    is not a failure (nothing to do) sets exit_code to EXIT_OK: its line goes to stdout."""

    exit_code = EXIT_USER_ERROR


class ConfigError(UserError, ValueError):
    """A bad option (or DeepSpeed JSON); the message names it and says how to fix it."""


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (or its type's name), cut to `limit` characters."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]


def guarded(rank: int, fn):
    """(0, fn()) or, for a user error, (its exit code, None) after printing it as one line (on the
    main rank only when it is not a failure); the process group is torn down either way."""
    import torch.distributed as dist

    try:
        return EXIT_OK, fn()
    except UserError as exc:
        if exc.exit_code != EXIT_OK:
            print(f"error (rank {rank}): {exc}", file=sys.stderr)
        elif rank == 0:
            print(f"[adept-dist] {exc}")
        return exc.exit_code, None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def exit_process(code: int) -> NoReturn:
    """End a command that joined a process group with `code`: the exit hooks run (the run folder's
    lock, trackers, logging), the streams are flushed, and `os._exit` then skips the interpreter's
    finalisation. A finalised process that ran gloo collectives can abort after a finished run
    ("terminate called without an active exception", exit -6; CI saw it once in some hundred
    two-rank runs, with the process group already destroyed): C++ threads (gloo's workers) and
    daemon threads (tqdm's monitor, the launcher watch) may still release tensors or take the GIL
    while the interpreter is torn down."""
    import atexit

    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)
