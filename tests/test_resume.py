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
from tests.conftest import REFERENCE_RUN, REPO, child_env, deepspeed_cmd, ranks_cmd, run_cmd

pytestmark = [pytest.mark.dist, pytest.mark.slow]

COMMON = [*REFERENCE_RUN, "--save_every", "1000"]  # a checkpoint only where a run is stopped


def losses(out):
    return [json.loads(ln)["loss"] for ln in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in ln]


def last_step(out) -> int:
    path = out / "metrics.jsonl"
    return len(losses(out)) if path.is_file() else 0


def default_signals() -> None:
    """As a user's shell starts the launcher: pytest itself may run with SIGINT or SIGHUP ignored
    (started by `cmd &` in a script, or under nohup), and ignored signals stay ignored in children."""
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


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


def test_stops_by_a_signal_to_one_rank_or_to_the_launcher_alone_resume_exactly(tmp_path, world2_reference):
    """One run stopped four times, resumed after each stop, then to its end:
    1. SIGUSR1 reaches rank 1 only (mid-run): both ranks finish the step, save and exit 3.
    2-4. SIGTERM, then SIGINT, then SIGHUP sent to the `deepspeed` command only (the top process, as
    `kill`, a container stop or a scheduler that signals one process does): DeepSpeed's runner ends
    at once; the ranks see their launcher gone (watchdog.py), finish the step, save and exit, and so
    does DeepSpeed's per-node launcher: no process of the job is left a few seconds later.
    After each stop the lock is free and the step's checkpoint is there; the last --resume ends
    exactly as the uninterrupted run (losses of every step and the adapter bitwise), with dropout on,
    because each micro-batch's RNG is seeded from (seed, step, slot) and the data position is saved."""
    out = tmp_path / "stopped"
    stops = []
    for sig, to in ((signal.SIGUSR1, "rank 1"), (signal.SIGTERM, "launcher"), (signal.SIGINT, "launcher"),
                    (signal.SIGHUP, "launcher")):  # fmt: skip
        name = f"{sig.name}-{len(stops)}"
        log = open(tmp_path / f"{name}.log", "w")
        resume = ["--resume"] if stops else []
        top = subprocess.Popen(deepspeed_cmd(*COMMON, "--output_dir", str(out), *resume), cwd=REPO, env=child_env(),
                               stdout=log, stderr=subprocess.STDOUT, preexec_fn=default_signals)  # fmt: skip
        deadline = time.time() + 300
        while last_step(out) <= (stops[-1] if stops else 2) and top.poll() is None and time.time() < deadline:
            time.sleep(0.05)  # a step of this start done (3 at first): then the signal
        assert top.poll() is None, f"{name}: the run ended at step {last_step(out)} before its signal"
        job = job_of(top.pid)
        ranks = [p for p in job if "--local_rank=" in " ".join(p.cmdline())]
        assert len(ranks) == 2, f"{name}: ranks not found"
        if to == "rank 1":
            [rank1] = [p for p in ranks if "--local_rank=1" in " ".join(p.cmdline())]
            rank1.send_signal(sig)
        else:
            top.send_signal(sig)
        code = top.wait(timeout=300 if to == "rank 1" else 60)
        _, alive = psutil.wait_procs(job, timeout=60)
        log.close()
        text = (tmp_path / f"{name}.log").read_text()
        assert alive == [], f"{name}: {[p.cmdline()[:4] for p in alive]} outlived the launcher\n{text[-3000:]}"
        assert code != 0 and "stopped by a signal after step" in text, text[-3000:]
        if to == "launcher":
            assert "its launcher (deepspeed, pid" in text, text[-3000:]
        if stops:
            assert f"resumed from step{stops[-1]:08d}" in text, text[-3000:]
        stops.append(last_step(out))
        assert (out / "checkpoints" / f"step{stops[-1]:08d}" / "adept_meta.json").is_file(), name
        assert not (out / "adapter").exists(), name
        assert not (out / "lock.json").exists(), name  # given back
    assert 3 <= stops[0] and all(a < b for a, b in zip(stops, stops[1:])) and stops[-1] < 40, stops  # mid-run
    resumed = run_cmd(ranks_cmd(*COMMON, "--output_dir", str(out), "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from step{stops[-1]:08d}" in resumed.stdout + resumed.stderr
    assert losses(out) == losses(world2_reference)  # bitwise, every step
    assert same_adapter(world2_reference, out)


def test_a_stage_0_config_checkpoints_and_resumes_exactly(tmp_path):
    """A ZeRO stage-0 DeepSpeed JSON (no partitioning; DeepSpeed then hands the trainer the bare torch
    AdamW in fp32): its checkpoints save (reading Adam's step count failed on the bare optimizer, found
    in review 2026-12-07: the run died at its first checkpoint) and a resume from the step-2 one
    continues exactly: losses and adapter equal the uninterrupted 4-step run's bitwise."""
    import shutil
    import sys

    ds = json.loads((REPO / "ds_configs" / "zero2.json").read_text())
    ds["zero_optimization"] = {"stage": 0}
    (tmp_path / "zero0.json").write_text(json.dumps(ds))
    opts = ["--ds_config", str(tmp_path / "zero0.json"), "--max_steps", "4", "--log_every", "1", "--save_every", "2",
            "--max_eval_samples", "8"]  # fmt: skip
    ref = tmp_path / "whole"
    proc = run_cmd([sys.executable, "launch/train.py", *opts, "--output_dir", str(ref)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    cut = tmp_path / "cut"
    shutil.copytree(ref, cut)  # as if the job had died after its step-2 checkpoint
    shutil.rmtree(cut / "checkpoints" / "step00000004")
    shutil.rmtree(cut / "adapter")
    record = json.loads((cut / "config.json").read_text())
    del record["finished"]
    (cut / "config.json").write_text(json.dumps(record))
    resumed = run_cmd([sys.executable, "launch/train.py", *opts, "--output_dir", str(cut), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step00000002" in resumed.stdout + resumed.stderr
    assert len(losses(cut)) == 4 and losses(cut) == losses(ref)
    assert same_adapter(ref, cut)


@pytest.mark.parametrize("stage", ["zero3", "zero2"])
def test_resume_at_another_world_size_is_exact(tmp_path, stage, request):
    """A world-size-2 run's checkpoint resumed by ONE process with --grad_accum 2 (the same global
    batch, made of the same micro-batches) continues exactly: every loss and the final adapter equal
    the uninterrupted world-2 run's bitwise (measured on CPU, fp32). The whole-state copy in the
    checkpoint is re-partitioned; DeepSpeed's own per-rank files could not be loaded at world size 1.
    ZeRO-3: the session's world-2 reference, cut after its step-32 checkpoint; ZeRO-2: a 16-step run
    of micro-batches of 4, cut after step 8."""
    import shutil
    import sys

    if stage == "zero3":
        ref, step, last = request.getfixturevalue("world2_reference"), 32, 40
        opts = [*REFERENCE_RUN[1:], "--save_every", "8"]
    else:
        ref, step, last = tmp_path / "world2", 8, 16
        opts = ["--ds_config", "ds_configs/zero2.json", "--max_steps", "16", "--log_every", "1", "--save_every", "8",
                "--max_eval_samples", "16", "--micro_batch_size", "4"]  # fmt: skip
        proc = run_cmd(ranks_cmd("launch/train.py", *opts, "--output_dir", str(ref)))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert ONE_CPU_RANK not in proc.stdout  # two ranks: no hint to use two
    cut = tmp_path / "world1"
    shutil.copytree(ref, cut)  # then forget everything after `step`, as if the job had died there
    shutil.rmtree(cut / "checkpoints" / f"step{last:08d}")
    assert (cut / "checkpoints" / f"step{step:08d}").is_dir()
    shutil.rmtree(cut / "adapter")
    record = json.loads((cut / "config.json").read_text())
    del record["finished"]  # written at the run's end, which the "dead" job never reached
    (cut / "config.json").write_text(json.dumps(record))
    resumed = run_cmd(
        [sys.executable, "launch/train.py", *opts, "--grad_accum", "2", "--output_dir", str(cut), "--resume"]
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    text = resumed.stdout + resumed.stderr
    assert f"resumed from step{step:08d}" in text
    assert "written by 2 ranks, this run has 1: loading its whole-state copy" in text
    assert len(losses(cut)) == last and losses(cut) == losses(ref)
    assert same_adapter(ref, cut)
