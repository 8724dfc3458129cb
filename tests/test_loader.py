"""The layerwise loader: read, quantise to NF4 and ZeRO-3-partition one unit at a time, with the
weights bitsandbytes would produce (tested at world size 2 against the transformers path)."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch

from tests.conftest import ranks_cmd, run_cmd, save_tiny_llama


@pytest.mark.dist
@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_layerwise_equals_bitsandbytes_and_partitions(tmp_path, tie):
    model = save_tiny_llama(tmp_path / "model", seed=2, tie=tie)
    out = tmp_path / "result"
    proc = run_cmd(ranks_cmd("tests/layerwise_check.py", str(model), str(out)))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for rank in (0, 1):
        rec = json.loads((tmp_path / f"result.{rank}").read_text())
        assert rec["names"], "the same parameter names as the transformers model"
        assert rec["differ"] == [], rec["differ"]  # bitwise: packed NF4 bytes and their QuantState
        assert rec["quantized"] == 14  # 7 linears x 2 layers, as transformers quantizes them
        assert rec["held"] * 2 <= rec["whole"] + 2 * 64, rec  # each rank holds half (padding aside)
        assert rec["logit_diff"] == 0.0


def test_missing_tensor_is_one_clear_error(tmp_path, tiny_model_dir):
    """A checkpoint lacking a layer's tensor is refused naming it (world size 1)."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    state = load_file(str(folder / "model.safetensors"))
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    script = (
        "import sys, torch; sys.path.insert(0, '.');"
        "from adept_dist.distributed.comm import init_distributed; from adept_dist.model.loader import load_layerwise;"
        "d = init_distributed();"
        "ds = {'train_micro_batch_size_per_gpu': 1, 'train_batch_size': 1, 'zero_optimization': {'stage': 3}};"
        f"load_layerwise({str(folder)!r}, 'nf4', d.device, torch.float32, ds)"
    )
    proc = run_cmd([sys.executable, "-c", script])
    assert proc.returncode != 0
    assert "lacks model.layers.1.mlp.up_proj.weight" in proc.stderr


def test_layerwise_needs_zero3(tmp_path, tiny_model_dir):
    from adept_dist.common.errors import ConfigError
    from adept_dist.config.resolve import make_config
    from adept_dist.distributed.comm import Dist
    from adept_dist.run.build import build

    cfg = make_config({"loader": "layerwise", "ds_config": "ds_configs/zero2.json", "output_dir": str(tmp_path / "o"),
                       "compute_dtype": "fp32"})  # fmt: skip
    import os

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    import torch.distributed as dist

    from tests.conftest import free_port

    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        with pytest.raises(ConfigError, match="not stage 3"):
            build(cfg, Dist(0, 1, 0, torch.device("cpu")))
    finally:
        dist.destroy_process_group()
