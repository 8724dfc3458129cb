"""Preemption and exact resume at world size 2 (ZeRO-3, CPU, gloo, the deepspeed launcher)."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import psutil
import pytest
import torch
from safetensors.torch import load_file

from adept_dist.commands.train import ONE_CPU_RANK
from tests.conftest import REPO, child_env, deepspeed_cmd, run_cmd

pytestmark = [pytest.mark.dist, pytest.mark.slow]

COMMON = [
    "launch/train.py",
    "--ds_config",
    "ds_configs/zero3.json",
    "--max_steps",
    "40",
    "--log_every",
    "1",
    "--max_eval_samples",
    "32",
    "--save_every",
    "1000",
]


def losses(out):
    return [json.loads(ln)["loss"] for ln in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in ln]


def last_step(out) -> int:
    path = out / "metrics.jsonl"
    return len(losses(out)) if path.is_file() else 0


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    ref = tmp_path_factory.mktemp("resume") / "uninterrupted"
    proc = run_cmd(deepspeed_cmd(*COMMON, "--output_dir", str(ref)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return ref


def job_of(pid: int) -> list[psutil.Process]:
    """The processes below `pid` that still run (one may end while they are listed)."""
    procs = []
    for p in psutil.Process(pid).children(recursive=True):
        try:
            p.cmdline()
            procs.append(p)
        except psutil.Error:
            pass
    return procs


def same_adapter(a_dir, b_dir) -> bool:
    a, b = (load_file(str(d / "adapter" / "adapter_model.safetensors")) for d in (a_dir, b_dir))
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_signal_to_one_rank_stops_all_and_resume_is_exact(tmp_path, uninterrupted):
    """SIGUSR1 reaches rank 1 only (mid-run): both ranks finish the step, save and exit 3; --resume
    then reproduces the uninterrupted run bitwise (losses of every step and the final adapter), with
    dropout on, because each micro-batch's RNG is seeded from (seed, step, slot) and the data position is saved."""
    ref, cut = uninterrupted, tmp_path / "preempted"

    env = child_env()
    log = open(tmp_path / "preempted.log", "w")
    launcher = subprocess.Popen(
        deepspeed_cmd(*COMMON, "--output_dir", str(cut)), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    deadline = time.time() + 300
    while last_step(cut) < 3 and launcher.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    ranks = [p for p in job_of(launcher.pid) if "--local_rank=1" in " ".join(p.cmdline())]
    assert len(ranks) == 1, "rank 1 not found"
    ranks[0].send_signal(signal.SIGUSR1)
    code = launcher.wait(timeout=300)
    log.close()
    text = (tmp_path / "preempted.log").read_text()
    assert code != 0 and "stopped by a signal after step" in text, text[-3000:]
    stopped_at = len(losses(cut))
    assert 3 <= stopped_at < 40  # it stopped mid-run, at a step boundary
    assert (cut / "checkpoints" / f"step{stopped_at:08d}" / "adept_meta.json").is_file()
    assert not (cut / "adapter").exists()

    resumed = run_cmd(deepspeed_cmd(*COMMON, "--output_dir", str(cut), "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from step{stopped_at:08d}" in resumed.stdout + resumed.stderr
    assert losses(cut) == losses(ref)  # bitwise, every step
    assert same_adapter(ref, cut)


def test_a_signal_to_the_launcher_alone_leaves_no_rank_behind(tmp_path, uninterrupted):
    """SIGTERM, then SIGINT, then SIGHUP sent to the `deepspeed` command only (the top process, as
    `kill`, a container stop or a scheduler that signals one process does): DeepSpeed's runner ends
    at once; the ranks see their launcher gone (watchdog.py), finish the step, save and exit, and so
    does DeepSpeed's per-node launcher: no process of the job is left a few seconds later, the lock
    is free, and the last --resume ends exactly as the uninterrupted run (losses and adapter bitwise)."""
    out = tmp_path / "killed"
    stops = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        log = open(tmp_path / f"{sig.name}.log", "w")
        resume = ["--resume"] if stops else []
        top = subprocess.Popen(deepspeed_cmd(*COMMON, "--output_dir", str(out), *resume), cwd=REPO, env=child_env(),
                               stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.time() + 300
        while last_step(out) <= (stops[-1] if stops else 2) and top.poll() is None and time.time() < deadline:
            time.sleep(0.05)  # a step of this start done (3 at first): then the signal
        job = job_of(top.pid)
        assert len([p for p in job if "--local_rank=" in " ".join(p.cmdline())]) == 2, "ranks not found"
        top.send_signal(sig)
        top.wait(timeout=60)
        _, alive = psutil.wait_procs(job, timeout=60)
        log.close()
        text = (tmp_path / f"{sig.name}.log").read_text()
        assert alive == [], f"{sig.name}: {[p.cmdline()[:4] for p in alive]} outlived the launcher\n{text[-3000:]}"
        assert "its launcher (deepspeed, pid" in text and "stopped by a signal after step" in text, text[-3000:]
        stops.append(last_step(out))
        assert (out / "checkpoints" / f"step{stops[-1]:08d}" / "adept_meta.json").is_file()
        assert not (out / "lock.json").exists()  # given back
    assert stops == sorted(stops) and stops[-1] < 40, stops
    resumed = run_cmd(deepspeed_cmd(*COMMON, "--output_dir", str(out), "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert losses(out) == losses(uninterrupted) and same_adapter(uninterrupted, out)


@pytest.mark.parametrize("stage", ["zero3", "zero2"])
def test_resume_at_another_world_size_is_exact(tmp_path, stage):
    """A world-size-2 run's step-8 checkpoint resumed by ONE process with --grad_accum 2 (the same
    global batch, made of the same micro-batches) continues exactly: every loss and the final adapter
    equal the uninterrupted world-2 run's bitwise (measured on CPU, fp32). The whole-state copy in the
    checkpoint is re-partitioned; DeepSpeed's own per-rank files could not be loaded at world size 1."""
    import shutil
    import sys

    opts = [
        "--ds_config",
        f"ds_configs/{stage}.json",
        "--max_steps",
        "16",
        "--log_every",
        "1",
        "--save_every",
        "8",
        "--max_eval_samples",
        "16",
        "--micro_batch_size",
        "4",
    ]
    ref, cut = tmp_path / "world2", tmp_path / "world1"
    proc = run_cmd(deepspeed_cmd("launch/train.py", *opts, "--output_dir", str(ref)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ONE_CPU_RANK not in proc.stdout  # two ranks: no hint to use two
    shutil.copytree(ref, cut)  # then forget everything after step 8, as if the job had died there
    shutil.rmtree(cut / "checkpoints" / "step00000016")
    shutil.rmtree(cut / "adapter")
    record = json.loads((cut / "config.json").read_text())
    del record["finished"]  # written at the run's end, which the "dead" job never reached
    (cut / "config.json").write_text(json.dumps(record))
    resumed = run_cmd(
        [sys.executable, "launch/train.py", *opts, "--grad_accum", "2", "--output_dir", str(cut), "--resume"]
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "written by 2 ranks, this run has 1: loading its whole-state copy" in resumed.stdout + resumed.stderr
    assert len(losses(cut)) == 16 and losses(cut) == losses(ref)
    a, b = (
        load_file(str(ref / "adapter" / "adapter_model.safetensors")),
        load_file(str(cut / "adapter" / "adapter_model.safetensors")),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
