"""Bad model files and DeepSpeed JSONs: one line naming the file or key and the fix, before
anything is loaded or written (real files: a tiny LLaMA saved, then cut, re-saved as .bin, ...)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from adept_dist.commands.train import main
from adept_dist.common.errors import ConfigError
from adept_dist.config.resolve import make_config
from adept_dist.distributed.dsconfig import ADAMW_BETAS, resolve_ds_config
from adept_dist.model.backbone import ModelError, load_backbone, load_config, load_tokenizer
from tests.conftest import DIST_ENV, REPO, run_cmd, save_tiny_llama, write_jsonl

ROWS = [{"input": "review : the food was great", "target": "positive"}] * 8


@pytest.fixture
def cli(monkeypatch, capsys):
    """adept-train's main() in-process as a world of one: (exit code, its error lines)."""

    def call(*argv: str) -> tuple[int, list[str]]:
        for k in DIST_ENV:
            monkeypatch.delenv(k, raising=False)
        code = main(list(argv))
        return code, [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error")]

    return call


@pytest.fixture(scope="module")
def sharded_dir(tmp_path_factory):
    """The tiny LLaMA re-saved in four safetensors shards with an index, tokenizer included."""
    from transformers import AutoModelForCausalLM

    single = save_tiny_llama(tmp_path_factory.mktemp("single") / "model", seed=3)
    folder = tmp_path_factory.mktemp("sharded") / "model"
    AutoModelForCausalLM.from_pretrained(single).save_pretrained(folder, max_shard_size="100KB")
    for f in single.glob("tokenizer*"):
        shutil.copy(f, folder)
    return folder


def damaged_copy(src, dst, file: str, size: int | None = None, append: bytes = b""):
    """A copy of a model folder whose `file` is cut to `size` bytes (half by default) or extended."""
    shutil.copytree(src, dst)
    path = dst / file
    if append:
        with path.open("ab") as f:
            f.write(append)
    else:
        os.truncate(path, path.stat().st_size // 2 if size is None else size)
    return dst, path


def state_bin_folder(src, dst):
    """A model folder with PyTorch .bin weights only (transformers 5 no longer writes them: torch.save)."""
    from safetensors.torch import load_file

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save(load_file(str(src / "model.safetensors")), dst / "pytorch_model.bin")
    return dst


# ----------------------------------------------------------------------------- damaged safetensors
@pytest.mark.parametrize("how", ["half", "in_header", "trailing"])
def test_damaged_single_file_is_named_by_every_path(tmp_path, tiny_model_dir, how):
    """load_config (called up front by a run), load_backbone (transformers), the layerwise loader and
    the merged export all refuse a damaged model.safetensors naming it and both sizes."""
    from adept_dist.export.merge import merge
    from adept_dist.model.loader import load_layerwise

    full = (tiny_model_dir / "model.safetensors").stat().st_size
    cut = {"half": None, "in_header": 100, "trailing": None}[how]
    folder, path = damaged_copy(
        tiny_model_dir, tmp_path / "m", "model.safetensors", cut, b"x" * 7 * (how == "trailing")
    )
    size = path.stat().st_size
    need = full if how != "in_header" else r"at least \d+"
    msg = rf"model file {re.escape(str(path))} is truncated or corrupt \({size} bytes, its header needs {need}\): download it again"
    for call in (
        lambda: load_config(str(folder)),
        lambda: load_backbone(str(folder), "none", torch.device("cpu"), dtype=torch.float32),
        lambda: load_layerwise(str(folder), "none", torch.device("cpu"), torch.float32, {}),
        lambda: merge(str(tmp_path / "no_adapter_needed"), str(tmp_path / "out"), model=str(folder)),
    ):
        with pytest.raises(ModelError, match=msg):
            call()
    assert not (tmp_path / "out").exists()


def test_garbage_header_and_missing_shard(tmp_path, sharded_dir):
    folder = shutil.copytree(sharded_dir, tmp_path / "g")
    path = folder / "model-00001-of-00004.safetensors"
    data = bytearray(path.read_bytes())
    data[8:12] = b"nope"  # the header's first bytes: not JSON any more
    path.write_bytes(bytes(data))
    with pytest.raises(
        ModelError, match=rf"{re.escape(str(path))} is corrupt \(its safetensors header does not parse\)"
    ):
        load_config(str(folder))
    shutil.copytree(sharded_dir, tmp_path / "missing")
    (tmp_path / "missing" / "model-00003-of-00004.safetensors").unlink()
    with pytest.raises(
        ModelError, match=r"model-00003-of-00004.safetensors is missing \(the checkpoint's index names it\)"
    ):
        load_config(str(tmp_path / "missing"))


def test_truncated_shard_through_the_real_command(tmp_path, sharded_dir):
    """launch/train.py (default: ZeRO-3, layerwise loader) on a model whose second shard is cut in
    half: exit code 2, one line naming the shard, nothing written into the output folder."""
    folder, path = damaged_copy(sharded_dir, tmp_path / "m", "model-00002-of-00004.safetensors")
    out, train = tmp_path / "out", write_jsonl(tmp_path / "train.jsonl", ROWS)
    proc = run_cmd([sys.executable, "launch/train.py", "--model", str(folder), "--train_file", str(train),
                    "--output_dir", str(out), "--max_steps", "2"], timeout=300)  # fmt: skip
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert f"model file {path} is truncated or corrupt ({path.stat().st_size} bytes" in lines[0]
    assert lines[0].endswith("download it again")
    assert not out.exists() or not any(out.iterdir())


def test_truncated_bin_and_tokenizer_are_named(tmp_path, tiny_model_dir):
    binary = state_bin_folder(tiny_model_dir, tmp_path / "bin")
    folder, path = damaged_copy(binary, tmp_path / "cut_bin", "pytorch_model.bin")
    with pytest.raises(
        ModelError, match=rf"{re.escape(str(path))} is truncated or corrupt \(\d+ bytes, its zip directory is missing\)"
    ):
        load_backbone(str(folder), "none", torch.device("cpu"), dtype=torch.float32)
    folder, path = damaged_copy(tiny_model_dir, tmp_path / "cut_tok", "tokenizer.json")
    with pytest.raises(ModelError, match=rf"cannot load the tokenizer of .*: {re.escape(str(path))} is not valid JSON"):
        load_tokenizer(str(folder))


def test_folder_without_weights_is_one_line(tmp_path, tiny_model_dir):
    shutil.copytree(tiny_model_dir, tmp_path / "m", ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(ModelError, match=r"cannot load the weights of .*m' \(.*\): download the model again"):
        load_backbone(str(tmp_path / "m"), "none", torch.device("cpu"), dtype=torch.float32)


# ----------------------------------------------------------------------------- .bin-only models
def test_bin_only_model(tmp_path, tiny_model_dir, cli):
    """transformers reads .bin weights, the layerwise loader and the merged export do not: a run
    with the layerwise loader (the default under ZeRO-3) is refused before its data is read,
    naming the file and both fixes; --loader transformers trains; the convert command in the
    message works as given."""
    from safetensors.torch import load_file

    from adept_dist.model.backbone import shard_map

    folder = state_bin_folder(tiny_model_dir, tmp_path / "bin")
    out, train = tmp_path / "out", write_jsonl(tmp_path / "train.jsonl", ROWS)
    args = ["--model", str(folder), "--train_file", str(train), "--max_steps", "1", "--compute_dtype", "fp32"]
    code, lines = cli(*args, "--output_dir", str(out))
    assert code == 2 and len(lines) == 1, lines
    line = lines[0]
    assert f"model {folder} has no safetensors weights" in line and "found: pytorch_model.bin" in line
    assert "the layerwise loader (the default under ZeRO-3) reads safetensors only" in line
    assert "pass --loader transformers, or convert the model once: python -c" in line
    assert not (out / "config.json").exists()

    code, lines = cli(*args, "--output_dir", str(tmp_path / "out2"), "--loader", "transformers")
    assert code == 0 and lines == [] and (tmp_path / "out2" / "adapter" / "adapter_model.safetensors").is_file()

    command = re.search(r'python -c "(.*?)"', line).group(1)
    target = re.search(r"then --model (\S+)$", line).group(1)
    proc = subprocess.run([sys.executable, "-c", command], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    where, _ = shard_map(tmp_path / "bin-safetensors", target)
    assert target == str(folder) + "-safetensors" and set(where) == set(
        load_file(str(tiny_model_dir / "model.safetensors"))
    )
    assert len(load_tokenizer(target)) == len(load_tokenizer(str(tiny_model_dir)))


# ----------------------------------------------------------------------------- DeepSpeed optimizer block
def ds_file(tmp_path, optimizer: dict):
    path = tmp_path / "ds.json"
    base = json.loads((REPO / "ds_configs" / "zero3.json").read_text())
    path.write_text(json.dumps({**base, "optimizer": optimizer}))
    return str(path)


def test_optimizer_block_must_agree_key_by_key(tmp_path):
    cfg = make_config({"compute_dtype": "fp32", "lr_prompt": 0.3, "lr_ffn": 1e-4, "adam_eps": 1e-8})
    bad = ds_file(tmp_path, {"type": "AdamW", "params": {"lr": 0.3, "betas": [0.8, 0.99], "eps": 1e-6,
                                                         "weight_decay": 0.01, "fancy": 1}})  # fmt: skip
    with pytest.raises(ConfigError) as exc:
        resolve_ds_config(bad, cfg.ds_settings(1))
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"DeepSpeed config {bad} disagrees with the run's AdamW: ")
    for part in (
        "optimizer.params.lr=0.3 (the run: --lr_prompt 0.3, --lr_ffn 0.0001)",  # one lr cannot be both groups'
        "optimizer.params.betas=[0.8, 0.99] (the run: [0.9, 0.999], fixed)",
        "optimizer.params.eps=1e-06 (the run: --adam_eps 1e-08)",
        "optimizer.params.weight_decay=0.01 (the run: --weight_decay 0.0)",
        "optimizer.params.fancy=1 (adept-dist's AdamW has no such setting)",
        'remove the optimizer block (or set those keys to "auto"), or set the matching options',
    ):
        assert part in msg, msg
    # a block saying what runs anyway is accepted (and dropped: ours is built from the options)
    good = ds_file(tmp_path, {"type": "Adam", "params": {"lr": "auto", "betas": [0.9, 0.999], "eps": 1e-8,
                                                         "weight_decay": 0, "torch_adam": True, "adam_w_mode": True}})  # fmt: skip
    assert "optimizer" not in resolve_ds_config(good, cfg.ds_settings(1))
    pt = make_config({"compute_dtype": "fp32", "method": "pt", "lr_prompt": 0.3})
    assert "optimizer" not in resolve_ds_config(
        ds_file(tmp_path, {"type": "AdamW", "params": {"lr": 0.3}}), pt.ds_settings(1)
    )


def test_adamw_betas_are_the_optimizers(tiny_model_dir):
    from adept_dist.model.adapters import build_adapter
    from adept_dist.run.optim import make_optimizer

    optimizer, _ = make_optimizer(build_adapter("adept", 4, 64), make_config({"compute_dtype": "fp32"}).optim)
    assert optimizer.defaults["betas"] == ADAMW_BETAS


def test_disagreeing_optimizer_block_through_the_command(tmp_path, tiny_model_dir, cli):
    ds = ds_file(tmp_path, {"type": "AdamW", "params": {"betas": [0.9, 0.95]}})
    out, train = tmp_path / "out", write_jsonl(tmp_path / "train.jsonl", ROWS)
    code, lines = cli("--model", str(tiny_model_dir), "--train_file", str(train), "--output_dir", str(out),
                      "--ds_config", ds, "--max_steps", "1")  # fmt: skip
    assert code == 2 and len(lines) == 1, lines
    assert "optimizer.params.betas=[0.9, 0.95] (the run: [0.9, 0.999], fixed)" in lines[0]
    assert not (out / "config.json").exists()
