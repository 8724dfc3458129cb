"""Adapter export: ``adapter_model.safetensors`` (adapter tensors only, fp32) and
``adapter_config.json`` (what is needed to rebuild the adapter and find its base model).
Loading never unpickles anything."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .adapters import PromptAdapter, build_adapter

FORMAT = "adept-dist-adapter"
FORMAT_VERSION = 1
WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


class AdapterFileError(ValueError):
    """A missing, corrupt or incompatible adapter; the message says which and why."""


def adapter_config(adapter: PromptAdapter, **extra) -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "method": adapter.method,
        "m": adapter.m,
        "d": adapter.d,
        **adapter.extra_config(),
        "dtype": "float32",
        "parameter_count": sum(p.numel() for p in adapter.parameters()),
        **extra,
    }


def save_adapter(out_dir: str | Path, state: dict[str, torch.Tensor], config: dict) -> Path:
    """Write the two files into out_dir atomically (a temp folder renamed into place)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    save_file(
        {k: v.detach().float().contiguous().cpu() for k, v in state.items()},
        str(tmp / WEIGHTS),
        metadata={"format": FORMAT},
    )
    (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    if out.exists():
        old = out.with_name(f".{out.name}-old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
    return out


def read_adapter_config(adapter_dir: str | Path) -> dict:
    path = Path(adapter_dir) / CONFIG
    if not path.is_file():
        raise AdapterFileError(
            f"{path} not found: point at a folder written by adept-dist (it holds {CONFIG} and {WEIGHTS})"
        )
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise AdapterFileError(
            f"{path} is not valid JSON ({exc.msg}): the export is corrupt, export it again"
        ) from None
    if cfg.get("format") != FORMAT or cfg.get("format_version") != FORMAT_VERSION:
        raise AdapterFileError(
            f"{path}: format {cfg.get('format')!r} version {cfg.get('format_version')!r} is not "
            f"{FORMAT!r} version {FORMAT_VERSION}: upgrade adept-dist or re-export the adapter"
        )
    return cfg


def load_adapter(adapter_dir: str | Path) -> tuple[PromptAdapter, dict]:
    """Rebuild the adapter from its config and load its tensors (strict: no missing/extra names)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    cfg = read_adapter_config(adapter_dir)
    adapter = build_adapter(
        cfg["method"], cfg["m"], cfg["d"], cfg.get("r"), cfg.get("max_length", 256), cfg.get("dropout", 0.1)
    )
    path = Path(adapter_dir) / WEIGHTS
    if not path.is_file():
        raise AdapterFileError(f"{path} not found: the export is incomplete, export it again")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterFileError(f"{path} is corrupt ({exc}): export it again") from None
    expected = {k: tuple(v.shape) for k, v in adapter.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected != got:
        raise AdapterFileError(
            f"{path}: tensors {got} do not match the {cfg['method']} adapter of its config {expected}"
        )
    adapter.load_state_dict(state)
    return adapter, cfg
