"""Files: written so that a reader (or a killed job) never sees half of one, and JSON read strictly.

A file is written next to its final name and renamed over it (``os.replace`` is atomic within a
folder); a folder is filled as a temporary sibling and renamed into place.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from adept_dist.common.errors import EXIT_WRITE_FAILED, UserError


def now() -> str:
    """Local time with its UTC offset, as every record of a run writes it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def home() -> Path:
    """adept-dist's own files (built-in demo, converted models, tokenised data): $ADEPT_DIST_HOME,
    default ~/.cache/adept_dist."""
    return Path(os.environ.get("ADEPT_DIST_HOME", Path.home() / ".cache" / "adept_dist"))


DISK_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EFBIG: "file too large for the file system or the job's limits",
}


class WriteError(UserError, OSError):
    """A write the disk refused; what was written before it is intact (the message says what)."""

    exit_code = EXIT_WRITE_FAILED


def disk_problem(folder: Path) -> str | None:
    """What keeps `folder` from being written, found by looking (torch.save and safetensors report a
    failed write without an errno): no space, not writable, or a probe write's error. None: nothing."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        st = os.statvfs(folder)
        if st.f_bavail * st.f_frsize < 2**20:
            return f"{DISK_ERRNOS[errno.ENOSPC]} ({st.f_bavail * st.f_frsize} bytes free)"
    except OSError:
        pass
    probe = folder / f".write-probe-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * 2**20)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        return DISK_ERRNOS.get(exc.errno, exc.strerror or str(exc))
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    return None


def write_error(exc: BaseException, what: str, folder: Path, kept: str) -> WriteError | None:
    """`exc` (raised writing `what` into `folder`) as one line when the disk caused it, else None
    (a bug keeps its traceback). `kept` says what is intact. Call it before removing the partial
    files: a full disk is seen by looking only while they still take the space."""
    if isinstance(exc, WriteError):
        return exc
    if not isinstance(exc, Exception):
        return None
    code = exc.errno if isinstance(exc, OSError) else None
    if code is None:  # safetensors says "(os error 28)"; torch.save only "file write failed"
        m = re.search(r"os error (\d+)|\[Errno (\d+)\]", str(exc))
        code = int(m.group(1) or m.group(2)) if m else None
    reason = DISK_ERRNOS.get(code) or disk_problem(folder)
    if reason is None:
        return None
    return WriteError(f"could not write {what} in {folder}: {reason}; {kept}: {after_freeing(folder)}")


# A training run's folder as lock.py and checkpoint.py lay it out (modules above this one; tests/test_runfolder.py
# checks that these names are theirs): the lock held from before its first write to its end, complete checkpoints.
RUN_LOCK = "lock.json"  # lock.LOCK
CHECKPOINTS, CHECKPOINT_PREFIX, CHECKPOINT_META = "checkpoints", "step", "adept_meta.json"  # checkpoint.py's


def after_freeing(folder: Path) -> str:
    """What to do once the disk has room again, for a write into `folder`: a training run's (it or its
    parent holds the run's lock) is rerun with --resume, which continues from its newest complete
    checkpoint or, with none yet, starts again from step 0; any other command is run again."""
    fix = "free space (or make the folder writable)"
    folder = Path(folder)
    run = next((f for f in (folder, folder.parent) if (f / RUN_LOCK).is_file()), None)
    if run is None:
        return f"{fix} and run the command again"
    try:
        saved = sorted(
            p.name
            for p in (run / CHECKPOINTS).iterdir()
            if p.name.startswith(CHECKPOINT_PREFIX) and (p / CHECKPOINT_META).is_file()
        )
    except OSError:  # no checkpoints folder yet (or it cannot be listed)
        saved = []
    if saved:
        return f"{fix} and rerun with --resume to continue from {saved[-1]}"
    return (
        f"no checkpoint was saved yet, so {fix} and run the same command with --resume added: it starts the run "
        f"again from step 0"
    )


def refuse_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    """json object_pairs_hook: a key given twice is an error (json would keep the last silently)."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice")
        out[key] = value
    return out


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` to fill a temporary file beside `path`, then rename it to `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2) + "\n")


def write_jsonl(path: str | Path, rows: list[dict], ensure_ascii: bool = False) -> Path:
    return write_text(path, "".join(json.dumps(row, ensure_ascii=ensure_ascii) + "\n" for row in rows))


def temp_folder_for(out: Path) -> Path:
    """A new private folder beside `out`, to be filled and then moved there with `replace_folder`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))


def make_readable(folder: Path) -> None:
    """mkdtemp folders (and files written into them) are private (0700/0600): give the folder and
    its files the modes a plain mkdir/open would have under the umask, for colleagues and jobs."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for p in folder.iterdir():
        if p.is_file():
            os.chmod(p, 0o666 & ~umask)


def replace_folder(tmp: Path, out: Path) -> Path:
    """Move the finished folder `tmp` to `out`, replacing an existing `out` (or an empty one)."""
    make_readable(tmp)
    if out.exists():
        old = out.with_name(f".{out.name}-old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
    return out


# ----------------------------------------------------------------------------- metrics.jsonl
def metrics_record(line: bytes) -> tuple[dict | None, str]:
    """One line of metrics.jsonl as its record, or (None, why it is not one): a line that does not
    parse (cut by a crash mid-write), or parses to something other than an object with an integer step."""
    try:
        rec = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    except ValueError as exc:
        return None, f"not JSON ({str(exc).splitlines()[0][:120]})"
    if not isinstance(rec, dict):
        return None, f"not a JSON object (a {type(rec).__name__})"
    if type(rec.get("step")) is not int:
        return None, 'no integer "step"'
    return rec, ""


def read_metrics(path: Path) -> tuple[list[dict], list[str]]:
    """The records of a metrics.jsonl and, for each line that is not one, "line N: why" (readers
    that only look, such as the plots, skip those with a warning; a resume keeps them aside)."""
    records, broken = [], []
    for number, line in enumerate(Path(path).read_bytes().split(b"\n"), 1):
        if not line.strip():
            continue
        rec, why = metrics_record(line)
        if rec is None:
            broken.append(f"line {number}: {why}")
        else:
            records.append(rec)
    return records, broken
