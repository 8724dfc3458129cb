"""A run folder knows what it is and belongs to one job: the lock (lock.json) and the run's own
record (config.json: identity, history of changed options, finished)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adept_dist.common import lock
from tests.conftest import REPO, child_env, run_cmd, write_jsonl


# ----------------------------------------------------------------------------- the lock itself
def holder_record(pid: int, **more) -> dict:
    return {"host": socket.gethostname(), **lock.machine(), "pid": pid, "pid_start": lock.process_start(pid),
            "slurm_job_id": None, "slurm_restart": 0, "started": "earlier", **more}  # fmt: skip


def write_lock(folder: Path, record: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / lock.LOCK).write_text(json.dumps(record))
    return folder / lock.LOCK


@pytest.fixture
def live_process():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def test_lock_refuses_a_second_job_and_is_given_back(tmp_path):
    held = lock.acquire(tmp_path)
    assert json.loads((tmp_path / lock.LOCK).read_text())["pid"] == os.getpid()
    other = subprocess.run(  # another process (job) on the same folder
        [sys.executable, "-c", f"from pathlib import Path; from adept_dist.common.lock import acquire; acquire(Path({str(tmp_path)!r}))"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert other.returncode != 0 and f"is in use by pid {os.getpid()} on {socket.gethostname()}" in other.stderr
    lock.release_held()
    assert not (tmp_path / lock.LOCK).exists()
    held.release()  # a second release is harmless


def test_lock_of_a_live_process_is_never_taken_over(tmp_path, live_process):
    """A holder on this host whose pid and start time match is alive: --take_over is refused too."""
    path = write_lock(tmp_path, holder_record(live_process.pid))
    for take_over in (False, True):
        with pytest.raises(lock.LockError, match=f"in use by pid {live_process.pid} .*process {live_process.pid} is "
                                                 f"running on this host.*never takes a lock from a job that is alive"):  # fmt: skip
            lock.acquire(tmp_path, take_over=take_over)
    assert json.loads(path.read_text())["pid"] == live_process.pid  # refused: left as it was


def test_lock_of_a_dead_or_reused_pid_is_taken_over(tmp_path, live_process):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    said = []
    write_lock(tmp_path, holder_record(dead.pid))
    lock.acquire(tmp_path, log=said.append)
    assert f"process {dead.pid} has ended" in said[-1]
    lock.release_held()
    # a live pid whose process started at another time than the holder's: the pid was reused
    write_lock(tmp_path, holder_record(live_process.pid, pid_start="1"))
    lock.acquire(tmp_path, log=said.append)
    assert "pid now belongs to another process" in said[-1]
    lock.release_held()


def test_locks_that_cannot_be_checked_need_take_over(tmp_path):
    """A dead pid seen from another pid namespace (a container with the host's name) proves nothing;
    neither does an empty lock file (its writer died between creating and writing it)."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_lock(tmp_path, holder_record(dead.pid, pid_ns=1))
    with pytest.raises(lock.LockError, match=f"in use by pid {dead.pid}"):
        lock.acquire(tmp_path)
    (tmp_path / lock.LOCK).write_text("")
    with pytest.raises(lock.LockError, match="is unreadable .* pass --take_over"):
        lock.acquire(tmp_path)
    write_lock(tmp_path, {**holder_record(dead.pid), "pid": "12"})  # a field off its schema (schema.LockFile)
    with pytest.raises(lock.LockError, match=r"is unreadable \(.*lock.json: field pid: expected an integer, got "
                                             r"\"12\".* pass --take_over"):  # fmt: skip
        lock.acquire(tmp_path)
    said = []
    lock.acquire(tmp_path, take_over=True, log=said.append)
    assert "from an unreadable lock: --take_over" in said[-1]
    lock.release_held()


def test_lock_of_the_same_slurm_job_before_its_requeue_is_taken_over(tmp_path, monkeypatch):
    """A requeued job keeps its job id with a higher SLURM_RESTART_COUNT: the holder on another node
    is its own dead predecessor. A holder on another host without SLURM cannot be checked."""
    record = {"host": "node-elsewhere", "pid": 1234, "slurm_job_id": "777", "slurm_restart": 0, "started": "x"}
    write_lock(tmp_path, record)
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    said = []
    lock.acquire(tmp_path, log=said.append)
    assert "earlier run of this job (777, requeued)" in said[-1]
    lock.release_held()
    write_lock(tmp_path, {**record, "slurm_job_id": None})
    with pytest.raises(lock.LockError, match="in use by pid 1234 on node-elsewhere.* cannot be checked from here"):
        lock.acquire(tmp_path)
    lock.acquire(tmp_path, take_over=True, log=said.append)  # what --take_over is for
    assert "from pid 1234 on node-elsewhere" in said[-1] and said[-1].endswith("--take_over")
    lock.release_held()


@pytest.mark.parametrize(("state", "taken"), [("RUNNING", False), ("PENDING", False), ("COMPLETED", True)])
def test_lock_of_a_slurm_job_follows_squeue(tmp_path, monkeypatch, state, taken):
    """A holder on another node is judged by squeue (here a script on PATH answering as squeue -h -o %T
    does): listed as pending or running it is alive, and --take_over is refused; ended, it is taken."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text(f"#!/bin/sh\necho {state}\n")
    (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    run = tmp_path / "run"
    write_lock(run, {"host": "node-elsewhere", "pid": 1234, "slurm_job_id": "778", "slurm_restart": 0, "started": "x"})
    said = []
    if taken:
        lock.acquire(run, take_over=False, log=said.append)
        assert "SLURM job 778 is COMPLETED" in said[-1]
        lock.release_held()
        return
    with pytest.raises(lock.LockError, match=f"SLURM job 778 is {state} by squeue.*never takes a lock"):
        lock.acquire(run, take_over=True)


def test_a_job_whose_lock_was_taken_over_writes_nothing_more(tmp_path):
    """check_held, and through it every on_main write into the folder: once another job holds the
    lock, LockLost (exit code 5) and the write is not made; folders this process holds no lock of
    are not its concern."""
    import torch

    from adept_dist.common.errors import EXIT_LOCK_LOST
    from adept_dist.distributed.comm import Dist
    from adept_dist.run.context import on_main

    lock.acquire(tmp_path)
    lock.check_held(tmp_path / "checkpoints")  # held: nothing happens
    d = Dist(0, 1, 0, torch.device("cpu"))
    write_lock(tmp_path, holder_record(os.getppid(), host="node-elsewhere"))  # --take_over from elsewhere
    wrote = []
    with pytest.raises(lock.LockLost, match=f"{tmp_path} was taken over by pid {os.getppid()} on node-elsewhere"):
        on_main(d, lambda: wrote.append(1), "metrics.jsonl", tmp_path, "")
    assert wrote == [] and lock.LockLost.exit_code == EXIT_LOCK_LOST == 5
    lock.check_held(tmp_path.parent / "another-run")  # no lock of ours there
    (tmp_path / lock.LOCK).unlink()
    with pytest.raises(lock.LockLost, match="taken over by nobody"):
        lock.check_held(tmp_path)
    lock._held.clear()


def test_release_never_removes_a_lock_taken_over_by_another_job(tmp_path):
    held = lock.acquire(tmp_path)
    write_lock(tmp_path, holder_record(os.getppid()))  # taken over meanwhile (--take_over elsewhere)
    held.release()
    assert json.loads((tmp_path / lock.LOCK).read_text())["pid"] == os.getppid()
    lock._held.clear()


# ----------------------------------------------------------------------------- runs
def train_py(*args: str, **kw) -> subprocess.CompletedProcess:
    return run_cmd([sys.executable, "launch/train.py", "--ds_config", "ds_configs/zero2.json", *args], **kw)


def snapshot(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


@pytest.mark.slow
def test_resume_finished_run_history_reschedule_batch_and_lock(tmp_path, tiny_model_dir, live_process):
    """A finished 2-step run on the user's data: --resume says so and exits 0 touching nothing; another
    --method is refused; another --max_steps needs
    --reschedule; a changed global batch is refused; a live holder of the lock refuses the start; a
    resume with --reschedule continues and records what changed in config.json's history."""
    out = tmp_path / "out"
    train = write_jsonl(tmp_path / "train.jsonl", [{"input": "review : the food was great", "target": "positive"}] * 8)
    proc = train_py("--model", str(tiny_model_dir), "--train_file", str(train), "--output_dir", str(out),
                    "--max_steps", "2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    first = json.loads((out / "config.json").read_text())
    assert first["finished"]["step"] == 2 and first["history"] == [] and len(first["identity"]["id"]) == 32
    assert not (out / lock.LOCK).exists()  # given back at the end
    before = snapshot(out)

    proc = train_py("--output_dir", str(out), "--resume")
    assert proc.returncode == 0 and "finished at step 2" in proc.stdout and "nothing to do" in proc.stdout
    # it names what the run left (no evaluation data here: an adapter and metrics, no results.json)
    assert (
        not (out / "results.json").exists() and "nothing to do (adapter, metrics.jsonl in that folder)" in proc.stdout
    )
    proc = train_py("--output_dir", str(out), "--resume", "--method", "dept")
    assert proc.returncode == 2 and "started with other settings (method 'adept' -> 'dept')" in proc.stderr
    proc = train_py("--output_dir", str(out), "--resume", "--no-packing")  # the run packed (adept's default)
    assert proc.returncode == 2 and "started with other settings (packing True -> False)" in proc.stderr
    proc = train_py("--output_dir", str(out), "--resume", "--max_steps", "3")
    assert proc.returncode == 2 and "--max_steps 3 differs from this run's 2" in proc.stderr, proc.stderr[-2000:]
    assert "add --reschedule" in proc.stderr
    proc = train_py("--output_dir", str(out), "--resume", "--max_steps", "3", "--reschedule", "--micro_batch_size", "4")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "global batch would change from 8 to 4" in proc.stderr and "set --grad_accum 2 to keep 8" in proc.stderr
    write_lock(out, holder_record(live_process.pid))
    proc = train_py("--output_dir", str(out), "--resume", "--max_steps", "3", "--reschedule")
    assert proc.returncode == 2 and f"is in use by pid {live_process.pid}" in proc.stderr, proc.stderr[-2000:]
    (out / lock.LOCK).unlink()
    assert snapshot(out) == before  # every refusal above left the run as it was

    # a rescheduled start that died before its next checkpoint: config.json has the new schedule, the
    # checkpoint the old one; a plain --resume continues on the new schedule (0.3 * (4 - 2) / 4 at step 3)
    died = tmp_path / "died"
    shutil.copytree(out, died)
    record = json.loads((died / "config.json").read_text())
    record["optim"]["max_steps"] = 4
    del record["finished"]
    (died / "config.json").write_text(json.dumps(record))
    with open(died / "metrics.jsonl", "ab") as f:  # and it died mid-write: half a line, then NULs (NFS)
        f.write(b'{"step": 3, "lo\0\0\0\n')
    proc = train_py("--output_dir", str(died), "--resume", "--log_every", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "dropped 1 line(s) that are not records (line 2; line 2: not JSON" in proc.stdout, proc.stdout[-2000:]
    assert json.loads((died / "metrics.jsonl.broken").read_text())["text"] == '{"step": 3, "lo\0\0\0'
    lrs = {m["step"]: m["lr"] for m in map(json.loads, (died / "metrics.jsonl").read_text().splitlines()) if "lr" in m}
    assert lrs[3] == pytest.approx(0.15) and lrs[4] == pytest.approx(0.075)

    proc = train_py("--output_dir", str(out), "--resume", "--max_steps", "3", "--reschedule", "--log_every", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--reschedule: max_steps 2 -> 3" in proc.stdout
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["identity"] == first["identity"] and cfg["finished"]["step"] == 3
    assert [(h["step"], h["changed"]) for h in cfg["history"]] == [(2, {"log_every": [10, 1], "max_steps": [2, 3]})]
    assert (cfg["optim"]["max_steps"], cfg["run"]["log_every"], cfg["run"]["reschedule"]) == (3, 1, True)
    assert (cfg["model"]["model"], cfg["data"]["train_file"]) == (str(tiny_model_dir), str(train))  # the run's own
    metrics = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [2, 3]
    # linear decay to 0 at the new max_steps from the resumed step: step 3 of warmup 0, total 3 -> 1/3 of the peak
    assert metrics[-1]["lr"] == pytest.approx(0.3 / 3)  # the old schedule had reached 0 at step 2


def start_long_run(tmp_path: Path, model: Path, out: Path, *args: str, **popen) -> subprocess.Popen:
    """A run of 100000 steps (it never ends by itself) saving every 2 steps, returned once its first
    checkpoint is complete."""
    train = write_jsonl(tmp_path / "train.jsonl", [{"input": "review : the food was great", "target": "positive"}] * 8)
    job = subprocess.Popen(
        [sys.executable, "launch/train.py", "--ds_config", "ds_configs/zero2.json", "--model", str(model),
         "--train_file", str(train), "--output_dir", str(out), "--max_steps", "100000", "--warmup_steps", "0",
         "--save_every", "2", "--log_every", "1", *args],
        cwd=REPO, env=child_env(), **popen,
    )  # fmt: skip
    deadline = time.time() + 300
    while not (out / "checkpoints" / "latest").exists():
        if job.poll() is not None or time.time() > deadline:
            job.kill()
            raise AssertionError(f"the run did not reach a checkpoint (exit code {job.poll()})")
        time.sleep(0.2)
    return job


@pytest.mark.slow
def test_a_second_job_on_a_live_run_is_refused_and_a_dead_ones_lock_taken_over(tmp_path, tiny_model_dir):
    """Two real jobs: while the first trains, a second --resume on its folder is refused before it
    reads anything; after the first is killed (SIGKILL: its lock stays), the next --resume takes the
    lock over, names the dead holder and continues from the first job's checkpoint."""
    out = tmp_path / "out"
    first = start_long_run(tmp_path, tiny_model_dir, out, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for more in ([], ["--take_over"]):  # a holder alive on this host is never taken over
            proc = train_py("--output_dir", str(out), "--resume", *more)
            assert proc.returncode == 2 and f"is in use by pid {first.pid} on {socket.gethostname()}" in proc.stderr
            assert f"process {first.pid} is running on this host" in proc.stderr
        assert first.poll() is None  # the first job never noticed
    finally:
        first.kill()
        first.wait()
    assert json.loads((out / lock.LOCK).read_text())["pid"] == first.pid  # a killed job leaves its lock
    saved = int((out / "checkpoints" / "latest").read_text().removeprefix("step"))
    proc = train_py("--output_dir", str(out), "--resume", "--max_steps", str(saved + 1), "--reschedule")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"took over the lock of {out} from pid {first.pid}" in proc.stdout
    assert f"process {first.pid} has ended" in proc.stdout and f"resumed from step{saved:08d}" in proc.stdout


@pytest.mark.slow
def test_a_run_whose_lock_is_taken_over_stops_and_writes_nothing_more(tmp_path, tiny_model_dir):
    """A real run (a metrics line every step, a checkpoint every 2) whose lock.json another job takes
    over, as --take_over on another host does: it stops before its next write with exit code 5 and
    the one-line reason, leaves the other job's lock in place, and its metrics.jsonl and checkpoints
    get nothing more (at most the one write already under way when the lock changed)."""
    out = tmp_path / "out"
    first = start_long_run(tmp_path, tiny_model_dir, out, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        other = holder_record(os.getppid(), host="node-elsewhere", started="later")
        write_lock(out, other)
        lines_then = len((out / "metrics.jsonl").read_text().splitlines())
        _, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 5, err[-2000:]
    assert f"run folder {out} was taken over by pid {os.getppid()} on node-elsewhere" in err
    assert json.loads((out / lock.LOCK).read_text()) == other
    before = snapshot(out)
    time.sleep(1)
    assert snapshot(out) == before  # nothing of the first job is still writing
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) <= lines_then + 1, (lines_then, len(lines))


# ----------------------------------------------------------------------------- a full disk
@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs: a disk that really fills up (mounting needs root, as in CI)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {res.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of `disk`."""
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 2**16)
                f.flush()
        except OSError:
            pass
    return filler


def test_adapter_export_on_a_full_disk_leaves_the_old_adapter_and_no_temp_folder(small_disk):
    from adept_dist.common.fileio import write_error
    from adept_dist.export.adapter import WEIGHTS, adapter_config, save_adapter
    from adept_dist.model.adapters import build_adapter

    adapter = build_adapter("adept", 60, 64)
    out = save_adapter(small_disk / "adapter", adapter.state_dict(), adapter_config(adapter))
    before = (out / WEIGHTS).read_bytes()
    fill(small_disk)
    with pytest.raises(Exception) as caught:
        save_adapter(
            small_disk / "adapter", {k: v + 1 for k, v in adapter.state_dict().items()}, adapter_config(adapter)
        )
    assert (out / WEIGHTS).read_bytes() == before
    assert sorted(p.name for p in small_disk.iterdir()) == ["adapter", "filler"]  # no .adapter-* left behind
    error = write_error(caught.value, "the adapter", small_disk, "the adapter written before is intact")
    assert error is not None and error.exit_code == 4
    assert f"could not write the adapter in {small_disk}: no space left on the device" in str(error)


def test_a_read_only_folder_is_named_as_such(small_disk):
    from adept_dist.common.fileio import disk_problem

    assert disk_problem(small_disk) is None
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    assert disk_problem(small_disk) == "the file system is read-only"


@pytest.mark.slow
def test_disk_full_during_a_checkpoint_keeps_the_earlier_ones(tmp_path, tiny_model_dir, small_disk):
    """The disk fills while a run trains (checkpoints every 2 steps): the run stops with exit code 4
    and one line naming the checkpoint, the folder and the full disk; no partial checkpoint is left,
    `latest` names a complete one, and once space is freed --resume continues from it."""
    out = small_disk / "out"
    job = start_long_run(tmp_path, tiny_model_dir, out, "--log_every", "100000", stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        filler = fill(small_disk)
        _, err = job.communicate(timeout=300)
    finally:
        job.kill()
    lines = re.findall(r"error \(rank \d+\): [^\r\n]*", err)  # tqdm's bar may precede it on its line
    assert job.returncode == 4 and len(lines) == 1, err[-3000:]
    assert "could not write checkpoint step" in lines[0] and "no space left on the device" in lines[0], lines[0]
    assert f"in {out / 'checkpoints'}" in lines[0] and "are intact" in lines[0]
    ckpts = out / "checkpoints"
    assert not [p.name for p in ckpts.iterdir() if p.name.startswith(".tmp-")]
    latest = (ckpts / "latest").read_text()
    assert (ckpts / latest / "adept_meta.json").is_file()
    assert lines[0].endswith(
        f"free space (or make the folder writable) and rerun with --resume to continue from {latest}"
    )
    filler.unlink()
    saved = int(latest.removeprefix("step"))
    proc = train_py("--output_dir", str(out), "--resume", "--max_steps", str(saved + 1), "--reschedule")
    assert proc.returncode == 0 and f"resumed from {latest}" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.slow
def test_disk_full_before_the_first_checkpoint_says_resume_starts_again(tmp_path, tiny_model_dir, small_disk):
    """The disk fills after the run has started but before its first checkpoint (issue: the line said
    to rerun with --resume, which then had nothing to resume): exit code 4 and one line saying no
    checkpoint was saved, so --resume starts the run again from step 0; once space is freed it does."""
    out = small_disk / "out"
    train = write_jsonl(tmp_path / "train.jsonl", [{"input": "review : the food was great", "target": "positive"}] * 8)
    job = subprocess.Popen(
        [sys.executable, "launch/train.py", "--ds_config", "ds_configs/zero2.json", "--model", str(tiny_model_dir),
         "--train_file", str(train), "--output_dir", str(out), "--max_steps", "100000", "--save_every", "100000",
         "--log_every", "1", "--warmup_steps", "0"],
        cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 300
        while not (out / "metrics.jsonl").exists() and job.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        filler = fill(small_disk)
        _, err = job.communicate(timeout=300)
    finally:
        job.kill()
    lines = re.findall(r"error \(rank \d+\): [^\r\n]*", err)
    assert job.returncode == 4 and len(lines) == 1, err[-3000:]
    assert re.search(r"could not write metrics.jsonl \(step \d+\) in .*: no space left on the device; its earlier "
                     r"lines are intact: no checkpoint was saved yet, so free space \(or make the folder writable\) "
                     r"and run the same command with --resume added: it starts the run again from step 0$", lines[0])  # fmt: skip
    assert not (out / "checkpoints").exists()
    filler.unlink()
    # the advice, with a shorter run (2 steps, not 100000) to keep the test short
    proc = train_py("--output_dir", str(out), "--resume", "--max_steps", "2", "--reschedule")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"--resume: no checkpoint in {out / 'checkpoints'} yet, starting from step 0" in proc.stdout
    steps = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]  # the failed start's lines dropped, the new start's written


def test_write_error_says_what_to_do_by_what_the_run_folder_holds(tmp_path):
    """After a failed write (here ENOSPC, as the OS reports a full disk) the line says what to do:
    a training run (its folder holds the run's lock) reruns with --resume, which continues from the
    newest complete checkpoint or, with none yet, starts again from step 0 (the folder is no longer
    empty, so the same command without --resume would be refused); another command (adept-export's
    adapter, no lock) is run again."""
    import errno

    from adept_dist.common import fileio
    from adept_dist.common.fileio import write_error
    from adept_dist.run import checkpoint

    # fileio sits below lock.py and checkpoint.py: the names it looks for must be theirs
    assert fileio.RUN_LOCK == lock.LOCK
    assert (fileio.CHECKPOINTS, fileio.CHECKPOINT_PREFIX, fileio.CHECKPOINT_META) == (
        checkpoint.CKPT_DIR, checkpoint.PREFIX, checkpoint.META)  # fmt: skip

    full = OSError(errno.ENOSPC, "No space left on device")
    out = tmp_path / "run"
    out.mkdir()

    def advice(folder: Path) -> str:
        return str(write_error(full, "metrics.jsonl (step 3)", folder, "its earlier lines are intact"))

    assert advice(out).endswith("its earlier lines are intact: free space (or make the folder writable) and run the "
                                "command again")  # fmt: skip
    lock.acquire(out)
    try:
        start = ("no checkpoint was saved yet, so free space (or make the folder writable) and run the same command "
                 "with --resume added: it starts the run again from step 0")  # fmt: skip
        assert advice(out).startswith(f"could not write metrics.jsonl (step 3) in {out}: no space left on the device")
        assert advice(out).endswith(start)
        ckpts = out / "checkpoints"
        (ckpts / ".tmp-step00000002").mkdir(parents=True)  # being written
        (ckpts / "step00000004").mkdir()  # no adept_meta.json: incomplete, never loaded
        assert advice(out).endswith(start) and advice(ckpts).endswith(start)
        (ckpts / "step00000002").mkdir()
        (ckpts / "step00000002" / "adept_meta.json").write_text("{}")
        assert advice(out).endswith("rerun with --resume to continue from step00000002")
        (ckpts / "step00000004" / "adept_meta.json").write_text("{}")
        for folder in (out, ckpts, out / "predictions"):  # a run's writes: its folder, checkpoints, predictions
            assert advice(folder).endswith("free space (or make the folder writable) and rerun with --resume to "
                                           "continue from step00000004"), folder  # fmt: skip
    finally:
        lock.release_held()


def test_a_write_that_fills_the_disk_itself_is_named(small_disk):
    """The partial file is removed before anyone looks, so the disk has room again: the failure is
    recognised from the write's own error (safetensors: "os error 28")."""
    import torch

    from adept_dist.common.fileio import WriteError
    from adept_dist.export.adapter import save_adapter

    filler = fill(small_disk)
    os.truncate(filler, filler.stat().st_size - 3 * 2**20)  # 3 MB free, the adapter needs 8
    with pytest.raises(WriteError, match=f"could not write the adapter in {small_disk}: no space left on the device"):
        save_adapter(small_disk / "big", {"prompt": torch.zeros(2 * 2**20)}, {"method": "pt"})
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


def test_resume_from_the_final_checkpoint_drops_the_closing_evaluations(tmp_path):
    """A run that failed in its last writes (exit 4) resumes at its final step: the closing validation
    and the test record are run and logged again, so they are dropped, not duplicated."""
    import torch

    from adept_dist.distributed.comm import Dist
    from adept_dist.run.context import MetricsLog

    log = MetricsLog(tmp_path / "metrics.jsonl", Dist(rank=0, world=1, local_rank=0, device=torch.device("cpu")))
    records = [{"step": 5, "loss": 1.0}, {"step": 5, "split": "validation"}, {"step": 10, "loss": 0.5},
               {"step": 10, "split": "validation"}, {"step": 5, "split": "test"}]  # fmt: skip
    for r in records:
        log.write(r)
    log.drop_after(10, final=True)
    assert [json.loads(ln) for ln in log.path.read_text().splitlines()] == records[:3]
    log.drop_after(5)
    assert [json.loads(ln) for ln in log.path.read_text().splitlines()] == records[:2]


def test_resume_drops_lines_that_are_not_records_and_keeps_them_aside(tmp_path, capsys):
    """One broken line in metrics.jsonl (a crash mid-write on a network file system) ended --resume
    with a traceback. Now every line that is not a record (does not parse, is not UTF-8, is not an
    object, has no integer step) is dropped, kept in metrics.jsonl.broken (appended: line number,
    why, the exact text), and one line says so; the good lines up to the checkpoint stay as they were."""
    import torch

    from adept_dist.distributed.comm import Dist
    from adept_dist.run.context import MetricsLog

    path = tmp_path / "metrics.jsonl"
    lines = [
        b'{"step": 1, "loss": 1.0}',
        b'{"step": 2, "loss": 0.9}',
        b'{"step": 3, "lo{"step": 3, "loss": 0.8}',  # cut mid-write, the restart appended after it
        b"\0\0\0\0\0\0",  # a block never written (NFS after a client crash)
        b"[3, 0.8]",
        b'{"loss": 0.8}',
        b'{"step": "3", "loss": 0.8}',
        b"\xff\xfe\x00garbage",
        b'{"step": 3, "split": "validation", "eval_loss": 0.7}',
        b'{"step": 4, "loss": 0.7}',  # after the checkpoint: written again by the resumed run
        b'{"step": 5, "lo',  # the last line, cut
    ]
    path.write_bytes(b"\n".join(lines))
    log = MetricsLog(path, Dist(rank=0, world=1, local_rank=0, device=torch.device("cpu")))
    log.drop_after(3)
    assert path.read_bytes() == b"\n".join(lines[i] for i in (0, 1, 8)) + b"\n"
    aside = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl.broken").read_text().splitlines()]
    assert [(a["line"], a["reason"].split(" (")[0]) for a in aside] == [
        (3, "not JSON"), (4, "not JSON"), (5, "not a JSON object"), (6, 'no integer "step"'),
        (7, 'no integer "step"'), (8, "not UTF-8 text"), (11, "not JSON")]  # fmt: skip
    assert [a["text"].encode("utf-8", "surrogateescape") for a in aside] == [
        lines[i - 1] for i in (3, 4, 5, 6, 7, 8, 11)
    ]
    assert all(a["resumed_at_step"] == 3 for a in aside)
    said = capsys.readouterr().out
    assert f"{path}: dropped 7 line(s) that are not records (line 3, 4, 5, 6, 7, ...; line 3: not JSON" in said
    assert f"they are kept in {tmp_path / 'metrics.jsonl.broken'}" in said and len(said.splitlines()) == 1

    log.drop_after(3)  # nothing broken left: nothing more aside, nothing said
    assert len((tmp_path / "metrics.jsonl.broken").read_text().splitlines()) == 7 and not capsys.readouterr().out
    with open(path, "ab") as f:
        f.write(b"{oops\n")
    log.drop_after(2)  # a later resume appends to the file aside, never over it
    aside = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl.broken").read_text().splitlines()]
    assert len(aside) == 8 and (aside[-1]["line"], aside[-1]["text"]) == (4, "{oops")
    assert path.read_bytes() == b"\n".join(lines[:2]) + b"\n"


def test_metrics_and_results_writes_on_a_full_disk_keep_what_was_there(small_disk):
    """metrics.jsonl keeps its earlier lines; results.json (written whole, then renamed) stays the
    old one; both failures are WriteError (exit code 4) naming the file and the full disk."""
    import torch

    from adept_dist.common.fileio import WriteError, write_json
    from adept_dist.distributed.comm import Dist
    from adept_dist.run.context import MetricsLog, on_main

    d = Dist(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
    log = MetricsLog(small_disk / "metrics.jsonl", d)
    log.write({"step": 1, "loss": 1.0})
    write_json(small_disk / "results.json", {"test": 1})
    fill(small_disk)
    with pytest.raises(WriteError, match=r"could not write metrics.jsonl \(step 2\) in .*: no space left"):
        log.write({"step": 2, "loss": 0.5, "padding": "x" * 2**16})
    assert (small_disk / "metrics.jsonl").read_text() == '{"step": 1, "loss": 1.0}\n'  # no half line
    with pytest.raises(WriteError, match="could not write results.json in .*: no space left.*earlier results"):
        on_main(d, lambda: write_json(small_disk / "results.json", {"test": 2, "x": "y" * 2**16}), "results.json",
                small_disk, "earlier results are intact")  # fmt: skip
    assert json.loads((small_disk / "results.json").read_text()) == {"test": 1}
