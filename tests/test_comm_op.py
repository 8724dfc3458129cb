"""DeepSpeed's CPU comm op and its shared-memory buffers (issue 14): built once per environment,
no hang on a build lock a killed job left, quiet launches, nothing left in /dev/shm."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from adept_dist.commands.train import ONE_CPU_RANK
from adept_dist.distributed import buildlock as ddist
from tests.conftest import deepspeed_cmd, run_cmd


def test_the_op_is_built_inside_the_environment(monkeypatch, tmp_path):
    """Each virtual environment builds into its own folder (torch's default is one folder for every
    environment, so two environments rebuilt it in turn); outside a venv, a folder per interpreter
    under $ADEPT_DIST_HOME; a TORCH_EXTENSIONS_DIR the user set wins."""
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    venv = tmp_path / "venv"
    venv.mkdir()
    monkeypatch.setattr(sys, "prefix", str(venv))
    monkeypatch.setattr(sys, "base_prefix", "/usr")
    assert ddist.extensions_dir() == (venv / "torch_extensions", True)
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setattr(sys, "prefix", str(other))
    assert ddist.extensions_dir()[0] != venv / "torch_extensions"
    monkeypatch.setenv("ADEPT_DIST_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(sys, "base_prefix", str(other))  # no venv: the interpreter's own prefix
    where, ours = ddist.extensions_dir()
    assert ours and where.parent == tmp_path / "home" / "torch_extensions"
    monkeypatch.setattr(sys, "prefix", "/opt/python")
    assert ddist.extensions_dir()[0] != where  # another interpreter, another folder
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "mine"))
    assert ddist.extensions_dir() == (tmp_path / "mine", False)


BUILD = """
import sys
from pathlib import Path
from adept_dist.distributed import buildlock as dist
import os
root = Path(sys.argv[1])
dist.extensions_dir = lambda: (root, True)
before = os.environ.get("TORCH_EXTENSIONS_DIR"), os.environ.get("PATH")
dist.prepare_cpu_comm_op()
assert (os.environ.get("TORCH_EXTENSIONS_DIR"), os.environ.get("PATH")) == before  # set for the build only
from deepspeed.ops.op_builder.builder import OpBuilder
assert "deepspeed_shm_comm" in OpBuilder._loaded_ops
print("loaded")
"""


@pytest.mark.slow
def test_a_build_lock_left_by_a_killed_job_does_not_hang_the_next_launch(tmp_path):
    """torch waits forever while `<dir>/deepspeed_shm_comm/lock` exists (a job killed while building
    leaves it). Removed once older than STALE_BUILD_LOCK_S when its holder cannot be told (an old job
    elsewhere: this launch builds the op), and at once when the baton names this host (its holder
    died: the launch holds the baton now; the op built before is loaded, not rebuilt). The op this
    environment built (an earlier test's launch) is copied in when there is one: torch then finds it
    up to date and skips the minute's compile, but still waits forever on a lock left in place."""
    import shutil
    import socket
    import time

    root = tmp_path / "ext"
    lock = root / "deepspeed_shm_comm" / "lock"
    built = ddist.extensions_dir()[0] / "deepspeed_shm_comm"
    if (built / "deepspeed_shm_comm.so").is_file() and not (built / "lock").exists():
        shutil.copytree(built, lock.parent)  # mtimes kept: ninja sees nothing to rebuild
    lock.parent.mkdir(parents=True, exist_ok=True)
    for left_by in ("an old job elsewhere", "a job of this host"):
        lock.touch()
        if left_by == "a job of this host":
            (root / ".adept-dist-build.lock").write_text(socket.gethostname())
        else:
            old = time.time() - ddist.STALE_BUILD_LOCK_S - 60
            os.utime(lock, (old, old))
        proc = run_cmd([sys.executable, "-c", BUILD, str(root)], timeout=400)
        assert proc.returncode == 0, (left_by, proc.stderr[-3000:])
        assert "loaded" in proc.stdout, left_by
        assert f"removed {lock}: a build lock left by a job killed while building" in proc.stderr, left_by
        assert not lock.exists() and (lock.parent / "deepspeed_shm_comm.so").is_file(), left_by
        assert (root / ".adept-dist-build.lock").read_text() == "", left_by  # released normally: nobody to suspect


@pytest.mark.slow
def test_a_launch_without_the_venv_on_path_reuses_the_op_the_venv_built():
    """A SLURM batch script may run the venv's python without activating the venv: its PATH then
    finds the system's ninja (1.11 here; the venv's pip ninja is 1.13), which found the other
    ninja's build log and recompiled the op for a minute (CI, after the SLURM tests), and again at
    the next activated launch. The build now runs with the environment's own ninja first on PATH."""
    import subprocess
    import sysconfig

    scripts = Path(sysconfig.get_path("scripts"))
    if not (scripts / "ninja").is_file():
        pytest.skip(f"no ninja in {scripts}: PATH's ninja builds every launch")
    log = ddist.extensions_dir()[0] / "deepspeed_shm_comm" / ".ninja_log"
    code = "from adept_dist.distributed.buildlock import prepare_cpu_comm_op as p; p(); print('loaded')"
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONPATH=str(Path(__file__).resolve().parents[1]), DS_ACCELERATOR="cpu")
    runs = {}
    for name, path in (("activated", env["PATH"]), ("not activated", "/usr/local/bin:/usr/bin:/bin")):
        env["PATH"] = path
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=400)
        assert proc.returncode == 0 and "loaded" in proc.stdout, (name, proc.stderr[-3000:])
        runs[name] = log.read_text().splitlines()
    assert runs["not activated"] == runs["activated"]  # nothing compiled again


def test_a_young_lock_of_unknown_origin_is_waited_on_then_removed(tmp_path, monkeypatch, capsys):
    """A torch lock that may belong to a live build elsewhere (another node, another program) is
    waited on, and removed once older than STALE_BUILD_LOCK_S, never waited on forever."""
    lock = tmp_path / "lock"
    lock.touch()
    monkeypatch.setattr(ddist, "STALE_BUILD_LOCK_S", 1.5)
    ddist.clear_stale_build_lock(lock, dead_holder=False)
    assert not lock.exists()
    err = capsys.readouterr().err
    assert "waiting on" in err and "removed" in err
    ddist.clear_stale_build_lock(lock, dead_holder=False)  # none: nothing to do, at once


def shm_buffers(port: str) -> set[str]:
    return {p.name for p in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*")}


@pytest.mark.dist
def test_a_world_of_one_under_the_launcher_leaves_no_shm_buffer_and_no_banner(tmp_path):
    """DeepSpeed creates a 66 MB /dev/shm buffer per rank and never removes it; at world size 1 under
    the deepspeed launcher adept-dist left it too (until reboot). Every rank also printed "...
    built successfully" on every launch."""
    cmd = deepspeed_cmd("launch/train.py", "--output_dir", str(tmp_path / "run"), "--max_steps", "2",
                        "--max_eval_samples", "8", num_gpus=1)  # fmt: skip
    port = cmd[cmd.index("--master_port") + 1]
    before = shm_buffers(port)  # normally none: the port is new
    proc = run_cmd(cmd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "accuracy" in (tmp_path / "run" / "results.md").read_text()
    assert shm_buffers(port) <= before
    assert "built successfully" not in proc.stdout + proc.stderr
    assert proc.stdout.count(ONE_CPU_RANK) == 1  # one rank on a CPU machine: the hint, once
