"""Adapter export: ``adapter_model.safetensors`` (adapter tensors only, fp32) and
``adapter_config.json`` (what is needed to rebuild the adapter and find its base model).
Loading never unpickles anything, and checks the adapter against the model it is put on.

The format (also in the README, for other tools): tensors ``prompt`` (m, d) for every method;
ADePT adds ``A`` (d, r), ``a`` (r,), ``B`` (r, d), ``b`` (d,); DePT ``A`` (max_length, r),
``B`` (r, d). ``method_version`` names the maths of the method (bumped if it ever changes), so an
adapter is never silently read with other maths.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from .adapters import PromptAdapter, build_adapter
from .errors import UserError
from .fileio import replace_folder, temp_folder_for, write_error

FORMAT = "adept-dist-adapter"
FORMAT_VERSION = 1
METHOD_VERSIONS = {"adept": 1, "dept": 1, "pt": 1}  # adept 1: e + relu(e A + a) B + b; dept 1: alpha/sqrt(r)
WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
MERGE_INFO = "adept_merge.json"  # marks a merged export (see merge.py)


class AdapterFileError(UserError, ValueError):
    """A missing, corrupt or incompatible adapter; the message says which and why."""


def adapter_config(adapter: PromptAdapter, **extra) -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "method": adapter.method,
        "method_version": METHOD_VERSIONS[adapter.method],
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
    tmp = temp_folder_for(out)
    try:
        save_file(
            {k: v.detach().float().contiguous().cpu() for k, v in state.items()},
            str(tmp / WEIGHTS),
            metadata={"format": FORMAT},
        )
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        return replace_folder(tmp, out)
    except Exception as exc:
        failed = write_error(exc, "the adapter", out.parent, f"{out} is as it was")  # before the cleanup
        shutil.rmtree(tmp, ignore_errors=True)  # no half folder left behind
        if failed is None:
            raise
        raise failed from exc


def read_adapter_config(adapter_dir: str | Path) -> dict:
    path = Path(adapter_dir) / CONFIG
    if not path.is_file():
        hint = (
            " (it is a merged export: give it to predict.py as it is)"
            if (Path(adapter_dir) / MERGE_INFO).is_file()
            else ""
        )
        raise AdapterFileError(
            f"{path} not found: point at a folder written by adept-dist (it holds {CONFIG} and {WEIGHTS}){hint}"
        )
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AdapterFileError(f"{path} is not valid JSON ({exc}): the export is corrupt, export it again") from None
    if not isinstance(cfg, dict):
        raise AdapterFileError(f"{path} is not a JSON object: the export is corrupt, export it again")
    if cfg.get("format") != FORMAT or cfg.get("format_version") != FORMAT_VERSION:
        raise AdapterFileError(
            f"{path}: format {cfg.get('format')!r} version {cfg.get('format_version')!r} is not "
            f"{FORMAT!r} version {FORMAT_VERSION}: upgrade adept-dist or re-export the adapter"
        )
    check_method(cfg, path)
    return cfg


def check_method(cfg: dict, path: Path) -> None:
    """The method and its maths version are known, and the shape fields it needs are positive ints."""
    method = cfg.get("method")
    if method not in METHOD_VERSIONS:
        raise AdapterFileError(
            f"{path}: unknown method {method!r} (this adept-dist knows {', '.join(METHOD_VERSIONS)}): "
            f"upgrade adept-dist or check the file"
        )
    version = cfg.get("method_version", 1)  # the first exports did not write it; they are version 1
    if version != METHOD_VERSIONS[method]:
        raise AdapterFileError(
            f"{path}: {method} method version {version!r} is not the one this adept-dist implements "
            f"({METHOD_VERSIONS[method]}): its weights would be read with other maths; use the adept-dist that wrote it"
        )
    needed = ["m", "d"] + {"adept": ["r"], "dept": ["r", "max_length"], "pt": []}[method]
    for key in needed:
        value = cfg.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise AdapterFileError(f"{path}: {key}={value!r} must be a positive integer: the config is corrupt")


def check_compatible(cfg: dict, model_config, model_name: str, where: str) -> None:
    """An adapter only fits the base model it was trained on: same hidden size, same vocabulary."""
    hidden = model_config.hidden_size
    trained_on = f"; use the model it was trained on ({cfg['base_model']})" if cfg.get("base_model") else ""
    if cfg["d"] != hidden:
        raise AdapterFileError(
            f"{where}: the adapter has hidden size {cfg['d']} but model {model_name} has {hidden}: "
            f"it was trained for another base model{trained_on}"
        )
    vocab = cfg.get("vocab_size")
    if vocab is not None and vocab != model_config.vocab_size:
        raise AdapterFileError(
            f"{where}: the adapter was trained with a vocabulary of {vocab} tokens but model {model_name} has "
            f"{model_config.vocab_size}: its token offsets belong to another tokenizer{trained_on}"
        )


def load_adapter(adapter_dir: str | Path, model_config=None, model_name: str = "") -> tuple[PromptAdapter, dict]:
    """Rebuild the adapter from its config and load its tensors (strict: no missing/extra names,
    finite values); with `model_config`, also check it fits that model. The shapes the config
    implies are compared with the file's header before anything is allocated, so a damaged or
    hostile config (a huge m) is an error, not an out-of-memory kill."""
    cfg = read_adapter_config(adapter_dir)
    if model_config is not None:
        check_compatible(cfg, model_config, model_name, str(adapter_dir))
    args = (cfg["method"], cfg["m"], cfg["d"], cfg.get("r"), cfg.get("max_length", 256), cfg.get("dropout", 0.1))
    with torch.device("meta"):  # shapes only, no memory
        expected = {k: tuple(v.shape) for k, v in build_adapter(*args).state_dict().items()}
    path = Path(adapter_dir) / WEIGHTS
    got = header_shapes(path, "the export is incomplete, export it again")
    if expected != got:
        raise AdapterFileError(
            f"{path}: tensors {got} do not match the {cfg['method']} adapter of its config {expected}"
        )
    adapter = build_adapter(*args)
    adapter.load_state_dict(read_tensors(path, "the export is incomplete, export it again"))
    return adapter, cfg


def header_shapes(path: Path, missing_hint: str) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a safetensors file's header (no tensor is read)."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise AdapterFileError(f"{path} not found: {missing_hint}")
    try:
        with safe_open(str(path), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - no __iter__
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterFileError(f"{path} is corrupt ({exc}): export it again") from None


def read_tensors(path: Path, missing_hint: str) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; missing, unreadable or non-finite -> AdapterFileError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise AdapterFileError(f"{path} not found: {missing_hint}")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterFileError(f"{path} is corrupt ({exc}): export it again") from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise AdapterFileError(f"{path}: tensor(s) {', '.join(bad)} hold NaN or inf: the export is corrupt")
    return state
