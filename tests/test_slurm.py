"""launch/slurm/train.sbatch on a real two-node SLURM cluster started on this machine
(tests/slurm_harness.py): 2 nodes x 1 task, CPU, gloo over loopback."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from adept_dist.model import builtin
from tests.conftest import REPO
from tests.slurm_harness import LocalSlurm, ensure_slurm_installed

pytestmark = [pytest.mark.dist, pytest.mark.slow]

STEPS = 40
SCRIPT = REPO / "launch" / "slurm" / "train.sbatch"
# partition "high" preempts "low" by requeue, with a grace time: SLURM then sends TERM to the tasks
# only, and would end the job COMPLETED without requeueing it unless the batch script does.
PREEMPTION = """
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
PartitionName=low Nodes=localnode1,localnode2 PriorityTier=1 GraceTime=20 PreemptMode=REQUEUE MaxTime=UNLIMITED State=UP
PartitionName=high Nodes=localnode1,localnode2 PriorityTier=10 PreemptMode=OFF MaxTime=UNLIMITED State=UP
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if not (os.environ.get("CI") == "true" or os.environ.get("ADEPT_TEST_SLURM") == "1"):
        pytest.skip(
            "the SLURM tests change this host (apt-get install slurm, an /etc/hosts line): "
            "they run in CI (CI=true) or with ADEPT_TEST_SLURM=1"
        )
    reason = ensure_slurm_installed()
    if reason:
        print(f"SLURM tests skipped: {reason}")
        pytest.skip(f"SLURM cannot be installed here: {reason}")
    # the built-in model is built here, before any job: inside a job each node's first rank builds
    # it into the shared cache, and transformers saves no weights on a rank other than 0, so a
    # rank-1 build that renamed its folder first left a model folder without config.json
    builtin.ensure_builtin()
    with LocalSlurm(tmp_path_factory.mktemp("slurm"), extra_conf=PREEMPTION) as c:
        # as a user runs it: the installed package only (no PYTHONPATH to the checkout, no ADEPT_DIR),
        # the python found by the script's own default
        for key in ("ADEPT_DIR", "ADEPT_PYTHON", "PYTHONPATH", "MASTER_PORT", "VIRTUAL_ENV"):
            c.env.pop(key, None)
        if sys.prefix != sys.base_prefix:  # a venv, as if activated; python3 on PATH is another python
            venv_bin = Path(sys.prefix, "bin").resolve()
            c.env["VIRTUAL_ENV"] = sys.prefix
            c.env["PATH"] = os.pathsep.join(p for p in c.env["PATH"].split(os.pathsep) if Path(p).resolve() != venv_bin)
        else:
            c.env["ADEPT_PYTHON"] = sys.executable
        c.env.update(GLOO_SOCKET_IFNAME="lo", DS_ACCELERATOR="cpu")
        yield c


def submit(cluster, tmp_path, name: str, sbatch_args: tuple = (), **extra) -> tuple[int, object]:
    out = tmp_path / name
    config = tmp_path / f"{name}.yaml"
    options = {"output_dir": str(out), "max_steps": STEPS, "log_every": 1, "max_eval_samples": 32, **extra}
    config.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in options.items()))
    job = cluster.sbatch(
        [
            "--nodes=2",
            "--ntasks-per-node=1",
            f"--output={tmp_path}/{name}-%j.log",
            *sbatch_args,
            str(SCRIPT),
            str(config),
        ],
        cwd=tmp_path,
    )
    return job, out


def losses(out) -> list[float]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(ln)["loss"] for ln in path.read_text().splitlines() if '"loss"' in ln]


def wait_for_step(cluster, job, out, step: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while len(losses(out)) < step:
        assert time.time() < deadline, cluster.diagnostics(job)
        assert cluster.job_state(job) in ("PENDING", "RUNNING", "CONFIGURING"), cluster.diagnostics(job)
        time.sleep(0.1)


def same_adapter(a, b) -> bool:
    x, y = (load_file(str(p / "adapter" / "adapter_model.safetensors")) for p in (a, b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_preempted_four_ways_the_job_requeues_and_resumes_exactly(cluster, world2_reference, tmp_path):
    """One 2-node job of the low partition, stopped mid-run four ways, each followed by a requeue:
    1. `scancel --signal=USR1 --batch` (what --signal=B:USR1@N does before the time limit): the batch
       shell forwards it, the ranks save and exit, the script requeues the job.
    2. An admin's `scontrol requeue JOB`: SLURM sends TERM to the batch shell and the tasks, the ranks
       save on TERM and exit 3, SLURM requeues the job.
    3. A job of the higher-priority partition needs the CPUs: SLURM preempts ours with a grace time
       (TERM to the tasks only); the ranks save and exit 3 and the batch script requeues the job itself
       (SLURM would end it COMPLETED); it resumes after the other job.
    4. SIGKILL of one rank: srun (--kill-on-bad-exit) ends the other, the job fails within a bounded
       time (asserted: 60 s; measured: a few seconds), and `scontrol requeue` resumes it from its last
       checkpoint (one every 5 steps, or the one saved at the stop before).
    Each start resumes where the last stopped; the job ends with the same losses and adapter, bitwise,
    as the uninterrupted run (the same options, 2 ranks under the deepspeed launcher)."""
    job, out = submit(cluster, tmp_path, "preempted", sbatch_args=("--partition=low",), save_every=5)

    def log() -> str:
        return next(tmp_path.glob("preempted-*.log")).read_text(errors="replace")

    def counts() -> tuple[int, int, int]:  # stops saved, requeues by the script, resumes
        text = log()
        return (text.count("stopped by a signal after step"), text.count("requeueing job"),
                len(re.findall(r"resumed from step\d{8}: step", text)))  # fmt: skip

    def next_start(restarts: int, expected: tuple[int, int, int]) -> None:
        """Requeued once more, running again, two steps past where it stopped, its log as expected."""
        cluster.wait_restarted(job, restarts=restarts, timeout=300)
        assert cluster.restarts(job) == restarts, cluster.diagnostics(job)
        wait_for_step(cluster, job, out, len(losses(out)) + 2)
        deadline = time.time() + 60  # the log is written by srun's I/O forwarding: a moment behind
        while counts() != expected and time.time() < deadline:
            time.sleep(0.2)
        assert counts() == expected, log()[-3000:]

    wait_for_step(cluster, job, out, 3)
    assert "2 nodes, 2 ranks, master localnode1" in log()
    cluster.signal_batch(job, "USR1")  # 1
    next_start(1, (1, 1, 1))
    assert "got USR1" in log()

    subprocess.run(["scontrol", "requeue", str(job)], env=cluster.env, check=True)  # 2
    next_start(2, (2, 1, 2))

    hog = tmp_path / "hog.sh"  # 3
    hog.write_text("#!/bin/bash\nsleep 3\n")
    other = cluster.sbatch(
        ["--partition=high", "--nodes=2", "--ntasks-per-node=2", f"--output={tmp_path}/hog-%j.log", str(hog)],
        cwd=tmp_path,
    )
    next_start(3, (3, 2, 3))
    assert cluster.wait(other, timeout=120) == "COMPLETED", cluster.diagnostics(other)

    victims = [  # 4
        p
        for p in psutil.process_iter(["cmdline", "environ"])
        if "adept_dist.commands.train" in " ".join(p.info["cmdline"] or [])
        and (p.info["environ"] or {}).get("SLURM_PROCID") == "1"
        and (p.info["environ"] or {}).get("SLURM_JOB_ID") == str(job)
    ]
    assert len(victims) == 1, [p.info["cmdline"] for p in victims]
    killed_at = time.time()
    os.kill(victims[0].pid, signal.SIGKILL)
    state = cluster.wait(job, timeout=60)
    assert state == "FAILED", cluster.diagnostics(job)
    print(f"job ended {time.time() - killed_at:.1f} s after the kill")
    subprocess.run(["scontrol", "requeue", str(job)], env=cluster.env, check=True)
    cluster.wait_restarted(job, restarts=4, timeout=300)
    assert cluster.wait(job, timeout=600) == "COMPLETED", cluster.diagnostics(job)
    assert counts()[2] == 4 and f"job {job} start 4" in log(), log()[-3000:]
    assert losses(out) == losses(world2_reference)
    assert same_adapter(out, world2_reference)
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["method"] == "adept"


def test_one_job_per_run_folder_and_an_ended_jobs_lock_is_taken_over(cluster, tmp_path):
    """The same run.yaml submitted twice: the second job is refused (one line naming the first job)
    and the first goes on undisturbed; scancel of the first ends it (saved, not requeued). A lock left by a job that squeue reports ended, written as if
    from another host (so only SLURM can tell), is taken over by the next job."""
    first, out = submit(cluster, tmp_path, "twice", max_steps=100_000)  # runs until cancelled
    wait_for_step(cluster, first, out, 2)
    second, _ = submit(cluster, tmp_path, "twice", max_steps=100_000)
    assert cluster.wait(second, timeout=300) == "FAILED", cluster.diagnostics(second)
    log = (tmp_path / f"twice-{second}.log").read_text(errors="replace")
    assert "is in use by pid" in log and f"SLURM job {first}" in log, log[-3000:]
    assert cluster.job_state(first) == "RUNNING"  # undisturbed
    wait_for_step(cluster, first, out, len(losses(out)) + 2)
    subprocess.run(["scancel", str(first)], env=cluster.env, check=True)  # TERM: save, end, no requeue
    assert cluster.wait(first, timeout=120) == "CANCELLED", cluster.diagnostics(first)
    time.sleep(15)  # a requeue would show within the cluster's ~11 s restart latency
    assert cluster.restarts(first) == 0 and cluster.job_state(first) == "CANCELLED", cluster.diagnostics(first)
    log = (tmp_path / f"twice-{first}.log").read_text(errors="replace")
    assert "got TERM" in log and "not requeued by this script" in log, log[-3000:]

    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "lock.json").write_text(json.dumps({"host": "node-elsewhere", "pid": 1, "slurm_job_id": str(second),
                                                 "slurm_restart": 0, "started": "earlier"}))  # fmt: skip
    job, out = submit(cluster, tmp_path, "stale", max_steps=2)
    assert cluster.wait(job, timeout=600) == "COMPLETED", cluster.diagnostics(job)
    log = next(tmp_path.glob("stale-*.log")).read_text(errors="replace")
    assert re.search(rf"took over the lock of .* SLURM job {second} (has ended|is FAILED)", log), log[-3000:]
    assert not (out / "lock.json").exists()


def short_run(folder: Path, output_dir: str) -> None:
    """A 3-step run.yaml in `folder`, with a relative DeepSpeed config next to it."""
    (folder / "ds.json").write_text((REPO / "ds_configs" / "zero3.json").read_text())
    (folder / "run.yaml").write_text(
        f"output_dir: {output_dir}\nds_config: ds.json\nmax_steps: 3\nlog_every: 1\nmax_eval_samples: 8\n"
    )


def test_submitted_from_another_folder_runs_there_and_logs_there(cluster, tmp_path):
    """A user's `sbatch /path/to/train.sbatch run.yaml` from their own folder (not the checkout, no
    ADEPT_DIR, no --output): the job runs in that folder, so the relative config path and the relative
    paths inside it (output_dir, ds_config) resolve there, and its log is that folder's
    adept-JOBID.out, with no logs/ folder needed. A torch.py of the user's there shadows nothing."""
    work = tmp_path / "my project"  # a space too: every path in the script must be quoted
    work.mkdir()
    short_run(work, "out")
    (work / "torch.py").write_text("raise SystemExit('the submit folder was on sys.path')\n")
    job = cluster.sbatch(["--nodes=2", "--ntasks-per-node=1", str(SCRIPT), "run.yaml"], cwd=work)
    assert cluster.wait(job, timeout=600) == "COMPLETED", cluster.diagnostics(job)
    log = work / f"adept-{job}.out"
    assert log.is_file(), sorted(os.listdir(work))
    text = log.read_text(errors="replace")
    assert "2 nodes, 2 ranks, master localnode1:" in text and f"in {work}" in text, text
    if "VIRTUAL_ENV" in cluster.env:  # the activated venv's python, though python3 on PATH is another one
        assert f"python {sys.prefix}/bin/python," in text, text
    assert (work / "out" / "adapter" / "adapter_model.safetensors").is_file(), text
    assert len(losses(work / "out")) == 3
    assert not list(work.glob(".adept-stopped-*"))
    assert not (REPO / "out").exists() and not (REPO / f"adept-{job}.out").exists()


def test_python_without_the_project_is_refused_with_one_line(cluster, tmp_path):
    """ADEPT_PYTHON naming a python without adept-dist/torch/deepspeed (a bare venv), or no python
    at all: the job fails at once with exit code 2 and one line in its log saying what to set,
    instead of a traceback per rank."""
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    short_run(tmp_path, "out")
    for python, why in ((f"{bare}/bin/python", "No module named 'adept_dist'"), ("/nonexistent/python", "")):
        job = cluster.sbatch(
            ["--nodes=2", "--ntasks-per-node=1", f"--export=ALL,ADEPT_PYTHON={python}", str(SCRIPT), "run.yaml"],
            cwd=tmp_path,
        )
        assert cluster.wait(job, timeout=120) == "FAILED", cluster.diagnostics(job)
        assert cluster.job_info(job)["ExitCode"] == "2:0"
        text = (tmp_path / f"adept-{job}.out").read_text(errors="replace")
        errors = [line for line in text.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and f"error: {python} cannot import adept-dist" in errors[0], text
        assert why in errors[0] and "set ADEPT_PYTHON" in errors[0], errors
        assert "Traceback" not in text and f"job {job} start" not in text, text  # refused before srun
    assert not (tmp_path / "out").exists()


def test_port_taken_on_the_first_node_is_not_used(cluster, tmp_path):
    """Another program on the first node listens on the port the old script derived from the job id
    (20000 + id % 20000): the job asks the OS for a free port instead and trains."""
    short_run(tmp_path, "out")
    job = cluster.sbatch(["--hold", "--nodes=2", "--ntasks-per-node=1", str(SCRIPT), "run.yaml"], cwd=tmp_path)
    derived = 20000 + job % 20000
    with socket.socket() as held:
        held.bind(("", derived))
        held.listen()
        subprocess.run(["scontrol", "release", str(job)], env=cluster.env, check=True)
        assert cluster.wait(job, timeout=600) == "COMPLETED", cluster.diagnostics(job)
    text = (tmp_path / f"adept-{job}.out").read_text(errors="replace")
    port = int(re.search(r"master localnode1:(\d+)", text).group(1))
    assert port != derived
    assert len(losses(tmp_path / "out")) == 3


def test_node_scope_on_two_nodes_keeps_the_backbone_inside_each_node(cluster, tmp_path):
    """2 nodes x 2 tasks with the backbone sharded per node, each rank's node taken from SLURM_NODEID
    (no --ranks_per_node): it trains, and across nodes go only the adapter's gathers and gradient
    reduction. (Exactness against global ZeRO-3 and the single-process reference: tests/test_layouts.py
    and tests/test_distributed.py, on 4 ranks standing in for 2 nodes.)"""
    ds = json.loads((REPO / "ds_configs" / "zero3.json").read_text())
    ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0  # the built-in model's tensors partitioned too
    (tmp_path / "zero3_t0.json").write_text(json.dumps(ds))
    job, out = submit(cluster, tmp_path, "node", sbatch_args=("--ntasks-per-node=2",), shard_scope="node",
                      micro_batch_size=4, max_steps=8, ds_config=str(tmp_path / "zero3_t0.json"))  # fmt: skip
    assert cluster.wait(job, timeout=600) == "COMPLETED", cluster.diagnostics(job)
    log = next(tmp_path.glob("node-*.log")).read_text(errors="replace")
    assert "4 rank(s) on 2 node(s)" in log and "2 group(s) of 2); --shard_scope node" in log, log[-3000:]
    assert len(losses(out)) == 8 and losses(out)[-1] < losses(out)[0]
    t = json.loads((out / "traffic.json").read_text())
    assert [r["node"] for r in t["ranks"]] == [0, 0, 1, 1] and t["shard_groups"] == [[0, 1], [2, 3]]
    for r in t["ranks"]:
        assert 0 < r["inter_node_bytes_per_step"] <= 3 * t["adapter_bytes"], r
        assert r["intra_node_bytes_per_step"] > 2 * r["inter_node_bytes_per_step"], r  # the backbone's gathers
