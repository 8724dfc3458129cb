"""Adapter export: ``adapter_model.safetensors`` (adapter tensors only, fp32) and
``adapter_config.json`` (what is needed to rebuild the adapter and find its base model).
Loading never unpickles anything, and checks the adapter against the model it is put on.

The format (also in docs/OUTPUTS.md, "Adapter format", for other tools): tensors ``prompt`` (m, d) for every method;
ADePT adds ``A`` (d, r), ``a`` (r,), ``B`` (r, d), ``b`` (d,); DePT ``A`` (max_length, r),
``B`` (r, d). ``method_version`` names the maths of the method (bumped if it ever changes), so an
adapter is never silently read with other maths.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import Field, field_validator

from adept_dist.common.errors import UserError
from adept_dist.common.fileio import replace_folder, temp_folder_for, write_error
from adept_dist.common.schema import Count, Finite, PositiveInt, Record, check, check_tensors, load_json, problem, shown
from adept_dist.data.examples import ENCODING
from adept_dist.data.tasks import TASKS, get_task
from adept_dist.model.adapters import PromptAdapter, build_adapter

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


FIX = "export the adapter again with this adept-dist (or correct that field)"


class Selected(Record):
    metric: str
    value: float


class AdapterConfigFile(Record):
    """adapter_config.json (``adapter_config`` + ``checkpoint.run_fields``). Fields an adapter of an
    earlier release may lack have defaults (predict.py's); none may be null except task (a run on
    files or the built-in task has none). The method and its version are checked by ``check_method``."""

    format: str
    format_version: int
    method: str
    method_version: int = 1  # the first exports did not write it; they are version 1
    m: PositiveInt
    d: PositiveInt
    r: PositiveInt = None  # adept, dept (check_method)
    max_length: PositiveInt = None  # dept's offset rows; every method's: predict.py's input limit (default 256)
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = None
    alpha: Finite = None
    dtype: Literal["float32"] = None  # what save_adapter writes
    parameter_count: Count = None
    base_model: str = None
    task: str | None = None
    compute_dtype: Literal["auto", "bf16", "fp32"] = None
    quant: Literal["nf4", "none"] = None
    vocab_size: PositiveInt = None
    separator: str = None
    encoding: Annotated[int, Field(ge=1, le=ENCODING)] = None  # data.ENCODING of the writer (absent: 1)
    step: Count = None
    selected: Selected = None

    @field_validator("task")
    @classmethod
    def _known_task(cls, name: str | None) -> str | None:
        if name is not None:
            try:
                get_task(name)
            except ValueError:
                raise ValueError(f"a task of this adept-dist ({', '.join(TASKS)}) or bigbench:NAME, or null") from None
        return name


def read_adapter_config(adapter_dir: str | Path) -> dict:
    """An adapter folder's config, every field checked (``check_adapter_config``); the dict as read."""
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
    return check_adapter_config(load_json(path, FIX, AdapterFileError), path)


def check_adapter_config(cfg: dict, path: str | Path, fix: str = FIX) -> dict:
    """`cfg` (an adapter config read from `path`) checked: its format first (a newer one is not
    guessed at), then every field's type, range and choice, then the method's own fields."""
    fmt, version = cfg.get("format"), cfg.get("format_version")
    if fmt != FORMAT or version != FORMAT_VERSION or isinstance(version, bool):
        field = "format" if fmt != FORMAT else "format_version"
        raise AdapterFileError(problem(path, field, f"{FORMAT!r} version {FORMAT_VERSION}",
                                       f"{shown(fmt)} version {shown(version)}",
                                       "upgrade adept-dist, or export the adapter again"))  # fmt: skip
    check(cfg, AdapterConfigFile, path, fix, AdapterFileError)
    check_method(cfg, path, fix)
    return cfg


def check_method(cfg: dict, path: str | Path, fix: str = FIX) -> None:
    """The method and its maths version are known, and it has the shape fields it needs."""
    method = cfg.get("method")
    if method not in METHOD_VERSIONS:
        known = f"one of {', '.join(METHOD_VERSIONS)} (this adept-dist's methods)"
        raise AdapterFileError(problem(path, "method", known, shown(method), "upgrade adept-dist, or check the file"))
    version = cfg.get("method_version", 1)
    if version != METHOD_VERSIONS[method]:
        raise AdapterFileError(problem(path, "method_version", f"{METHOD_VERSIONS[method]} (the {method} maths this "
                                       f"adept-dist implements)", shown(version), "use the adept-dist that wrote it: "
                                       "its weights would be read with other maths"))  # fmt: skip
    for key in {"adept": ["r"], "dept": ["r", "max_length"], "pt": []}[method]:
        if key not in cfg:
            raise AdapterFileError(problem(path, key, f"a positive integer (the {method} adapter needs it)", "nothing",
                                           fix))  # fmt: skip


def adapter_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """The tensors (name -> shape) of the adapter a checked config describes, built on the meta
    device (no memory, whatever m or d the file claims)."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in build_adapter(*adapter_args(cfg)).state_dict().items()}


def adapter_args(cfg: dict) -> tuple:
    return cfg["method"], cfg["m"], cfg["d"], cfg.get("r"), cfg.get("max_length", 256), cfg.get("dropout", 0.1)


def shapes_source(cfg: dict, where: str) -> str:
    dims = ", ".join(f"{k}={cfg[k]}" for k in ("m", "d", "r", "max_length") if k in cfg)
    return f"the {cfg['method']} adapter of {where}: {dims}"


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
    """Rebuild the adapter from its config and load its tensors (strict: exactly the names, shapes
    and float dtypes the config implies, finite values); with `model_config`, also check it fits
    that model. The header is checked before anything is allocated, so a damaged or hostile config
    (a huge m) is an error, not an out-of-memory kill."""
    cfg = read_adapter_config(adapter_dir)
    if model_config is not None:
        check_compatible(cfg, model_config, model_name, str(adapter_dir))
    path = Path(adapter_dir) / WEIGHTS
    fix = "the export is incomplete or damaged: export it again"
    check_tensors(path, adapter_shapes(cfg), fix, AdapterFileError, shapes_source(cfg, CONFIG))
    adapter = build_adapter(*adapter_args(cfg))
    adapter.load_state_dict(read_tensors(path, "the export is incomplete, export it again"))
    return adapter, cfg


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
