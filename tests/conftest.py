"""Shared fixtures: tiny LLaMA-architecture models saved locally in the Hugging Face layout (never
downloaded), and helpers to run the real CLI under torchrun or the deepspeed launcher."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adept_dist.distributed.comm import free_port

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _adept_home(tmp_path_factory, request):
    """One built-in model cache for the whole session (CI may point it elsewhere). A session of many
    tests starts the suite's two one-off builds at once, in the background at the lowest priority,
    on the cores its tests leave idle: DeepSpeed's CPU comm op (~1 minute of compiling, first needed
    about a minute into the suite), then the built-in model (~2 minutes, first needed about 5
    minutes in). A test that needs one before it is done waits on that build's lock
    (buildlock.prepare_cpu_comm_op, builtin.ensure_builtin) instead of building it again."""
    os.environ.setdefault("ADEPT_DIST_HOME", str(tmp_path_factory.mktemp("adept_home")))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from adept_dist.model.builtin import builtin_dir

    early = None
    if len(request.session.items) >= 100 and not (builtin_dir() / "COMPLETE").is_file():
        code = (
            "from adept_dist.distributed.buildlock import prepare_cpu_comm_op; prepare_cpu_comm_op(); "
            "from adept_dist.model.builtin import ensure_builtin; ensure_builtin(log=lambda s: None)"
        )
        early = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, preexec_fn=lambda: os.nice(19))  # fmt: skip
    yield
    if early is not None and early.poll() is None:  # a session that never needed it: stop it
        early.kill()
        early.wait()


@pytest.fixture
def hub_offline(monkeypatch):
    """The Hugging Face hub unreachable at once, as with HF_HUB_OFFLINE=1 in a fresh process. The
    variables alone do not do it here: huggingface_hub and datasets read them when first imported
    (an earlier test imported them), and online each failed request is retried for ~23 s."""
    import datasets.config
    import huggingface_hub.constants

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)


def tiny_shape(vocab_size: int, hidden: int = 64, layers: int = 2, max_positions: int = 512) -> dict:
    """Size arguments of the tests' tiny LLaMA-layout models: 4 heads, GQA (2 KV heads), MLP 2 x hidden."""
    from adept_dist.model.builtin import llama_shape

    return llama_shape(
        vocab_size, hidden, layers, heads=4, kv_heads=2, intermediate=2 * hidden, max_positions=max_positions
    )


def save_tiny_llama(path: Path, seed: int = 0, hidden: int = 64, layers: int = 2, tie: bool = False) -> Path:
    """A random tiny LLaMA (GQA, 2 layers) with the built-in word-level tokenizer, saved to `path`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from adept_dist.model.builtin import build_tokenizer

    tok = build_tokenizer()
    cfg = LlamaConfig(
        **tiny_shape(len(tok), hidden, layers),
        tie_word_embeddings=tie,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    from adept_dist.model.backbone import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture
def predict(monkeypatch, capsys):
    """predict.py's main in this process (world size 1); returns (exit code, stderr)."""
    from adept_dist.commands.predict import main as predict_main

    def call(*argv: str) -> tuple[int, str]:
        monkeypatch.setenv("MASTER_PORT", str(free_port()))
        code = predict_main(list(argv))
        return code, capsys.readouterr().err

    return call


# set in this process by in-process runs (cli.main -> init_distributed): a child that inherited them
# would join that (long gone) world's rendezvous port instead of starting its own
DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def child_env() -> dict[str, str]:
    """The environment of a command the tests start: this one, without a process group's variables."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    return {**env, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}


def run_cmd(args: list[str], timeout: int = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=timeout, **kw)


def deepspeed_cmd(script: str, *args: str, num_gpus: int = 2) -> list[str]:
    """The README's launcher. Tests of the launcher itself use it: its signals and stops, the exit
    code it passes on, the README's command, its /dev/shm buffers; the other runs use ranks_cmd."""
    launcher = str(Path(sys.executable).with_name("deepspeed"))
    return [launcher, "--num_gpus", str(num_gpus), "--master_port", str(free_port()), script, *args]


def ranks_cmd(script: str, *args: str, num_gpus: int = 2) -> list[str]:
    """torchrun (docs/CLUSTER.md): the same ranks of the same script with the same torch.distributed
    environment, about 9 s quicker to start than `deepspeed` (measured 2026-12-07 on this 2-core
    machine, a 2-step world-2 run: 11-12.5 s against 20.7 s), because the deepspeed launcher starts
    two Python processes that import DeepSpeed before the ranks start; the losses were bitwise equal.
    A failing rank ends torchrun with code 1 (the rank's own line is in stderr as under deepspeed)."""
    launcher = str(Path(sys.executable).with_name("torchrun"))
    return [launcher, "--nproc_per_node", str(num_gpus), "--master_port", str(free_port()), script, *args]


# The built-in task at world size 2 under ZeRO-3, 40 steps: the run that the preemption tests
# stop and resume (tests/test_resume.py under the deepspeed launcher, tests/test_slurm.py on two
# SLURM nodes), each expecting the uninterrupted run's losses and adapter bitwise.
REFERENCE_RUN = ["launch/train.py", "--ds_config", "ds_configs/zero3.json", "--max_steps", "40", "--log_every", "1",
                 "--max_eval_samples", "32"]  # fmt: skip


@pytest.fixture(scope="session")
def world2_reference(tmp_path_factory) -> Path:
    """REFERENCE_RUN uninterrupted (torchrun, 2 ranks on one node), a checkpoint every 8 steps. One
    run for the whole session: the 2-node SLURM job and the deepspeed launcher's run of the same
    options gave the same losses bitwise (checked 2026-12-07), as they must, 2 ranks being 2 ranks."""
    ref = tmp_path_factory.mktemp("reference") / "uninterrupted"
    proc = run_cmd(ranks_cmd(*REFERENCE_RUN, "--save_every", "8", "--output_dir", str(ref)))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (ref / "adapter" / "adapter_model.safetensors").is_file()
    assert sum('"loss"' in line for line in (ref / "metrics.jsonl").read_text().splitlines()) == 40
    from adept_dist.commands.train import ONE_CPU_RANK

    assert ONE_CPU_RANK not in proc.stdout  # two ranks: no hint to use two
    return ref


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _then_exit(target, *args) -> None:
    """A run_gloo process: `target`, then exit as the commands do (errors.exit_process), skipping the
    interpreter's finalisation that can abort a process which ran gloo collectives."""
    import traceback

    from adept_dist.common.errors import exit_process

    code = 1
    try:
        target(*args)
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        exit_process(code)


def run_gloo(target, world: int) -> dict:
    """Run `target(rank, world, port, queue)` in `world` spawned processes (a gloo group on a free
    port) and return {rank: what it put on the queue as (rank, result)}; each must exit 0."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_then_exit, args=(target, r, world, port, queue)) for r in range(world)]
    for p in procs:
        p.start()
    got = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return got
