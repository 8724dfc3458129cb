"""Shared fixtures: tiny LLaMA-architecture models saved locally in the Hugging Face layout (never
downloaded), and helpers to run the real CLI under the deepspeed launcher."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _adept_home(tmp_path_factory):
    """One built-in model cache for the whole session (CI may point it elsewhere)."""
    os.environ.setdefault("ADEPT_DIST_HOME", str(tmp_path_factory.mktemp("adept_home")))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def save_tiny_llama(path: Path, seed: int = 0, hidden: int = 64, layers: int = 2, tie: bool = False) -> Path:
    """A random tiny LLaMA (GQA, 2 layers) with the built-in word-level tokenizer, saved to `path`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from adept_dist.builtin import build_tokenizer

    tok = build_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
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
    from adept_dist.backbone import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cmd(args: list[str], timeout: int = 600, **kw) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
        "DS_ACCELERATOR": "cpu",
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, **kw)


def deepspeed_cmd(script: str, *args: str, num_gpus: int = 2) -> list[str]:
    launcher = str(Path(sys.executable).with_name("deepspeed"))
    return [launcher, "--num_gpus", str(num_gpus), "--master_port", str(free_port()), script, *args]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
