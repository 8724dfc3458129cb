"""DeepSpeed's CPU comm op, built once per Python environment and never waited on forever:
torch's JIT build lock is a bare file that a killed build leaves behind, which this module
detects and removes (`prepare_cpu_comm_op`)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import socket
import sys
import sysconfig
import time
from pathlib import Path

from adept_dist.common.fileio import home

STALE_BUILD_LOCK_S = 600  # building DeepSpeed's CPU comm op takes about a minute


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
    path_before = os.environ.get("PATH")
    os.environ["TORCH_EXTENSIONS_DIR"] = str(root)  # for this load only: the module stays loaded
    os.environ["PATH"] = ninja_first_path(path_before or "")
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
        if path_before is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = path_before


def ninja_first_path(path: str) -> str:
    """PATH with this Python environment's scripts folder first when it holds ninja (pip's ninja
    package, which torch's extension builds want), so that every launch builds with the same ninja.
    torch runs whichever `ninja` PATH finds first, and ninja recompiles everything when the build
    log was written by another ninja: a venv used activated (its pip ninja, 1.13 here) and through
    its python alone, as a SLURM batch script may (the system's ninja, 1.11), rebuilt the op for a
    minute at every switch (seen in CI after the SLURM tests)."""
    scripts = sysconfig.get_path("scripts")
    if not scripts or not (Path(scripts) / "ninja").is_file():
        return path
    rest = [p for p in path.split(os.pathsep) if p and os.path.realpath(p) != os.path.realpath(scripts)]
    return os.pathsep.join([scripts, *rest])


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
