"""Merged export: fold the ADePT token offset into the embedding table.

The offset depends only on the token id, so ``E' = E + FFN(E)`` is a new embedding table and a
merged model with the soft prompt in front costs exactly what m-token prompt tuning costs. The
export is a standalone Hugging Face model folder (same weights as the base model except the
embedding table, and an untied output head where the base model tied it) plus
``soft_prompt.safetensors`` (tensor ``prompt``, (m, d), fp32) and ``adept_merge.json``.

The base model's checkpoint is streamed shard by shard: only the shard that holds the embedding
table is read into memory, every other shard is copied byte for byte, so merging a 70B model
needs about one shard of RAM, not the model. Nothing is unpickled: the base model must have
safetensors weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated

import torch
from pydantic import Field

from adept_dist.common.fileio import replace_folder, temp_folder_for
from adept_dist.common.schema import PositiveInt, Record, check, check_tensors, load_json, problem, shown
from adept_dist.export.adapter import (
    MERGE_INFO,
    AdapterFileError,
    check_adapter_config,
    load_adapter,
    read_adapter_config,
    read_tensors,
)
from adept_dist.export.peft import PEFT_FOLDER, require_peft, write_peft_prompt
from adept_dist.model.adapters import PromptAdapter
from adept_dist.model.backbone import INDEX, WEIGHT_SUFFIXES, ModelError, find_key, load_config, model_folder, shard_map

MERGE_FORMAT = "adept-dist-merged"
MERGE_VERSION = 1
PROMPT_FILE = "soft_prompt.safetensors"


def resolve_base_model(name: str) -> str:
    """The base model named in an adapter config: "builtin" is the built-in demo model."""
    if name == "builtin":
        from adept_dist.model import builtin

        return str(builtin.ensure_builtin() / "model")
    return name


def weight_names(config) -> tuple[str, str, bool]:
    """Parameter names of the input embedding and the output head, and whether they are tied,
    read from the architecture built on the meta device (no memory)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    names = {module: name for name, module in model.named_modules()}
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head.weight is emb.weight or bool(getattr(config, "tie_word_embeddings", False))
    return f"{names[emb]}.weight", f"{names[head]}.weight", tied


@torch.no_grad()
def merged_table(table: torch.Tensor, adapter: PromptAdapter, chunk: int = 8192) -> torch.Tensor:
    """E + offset(E), row block by row block, in the table's dtype: the very operation the
    unmerged model applies to each token's embedding (adapter maths in fp32, added in E's dtype)."""
    adapter = adapter.eval()
    out = torch.empty_like(table)
    for s in range(0, table.shape[0], chunk):
        out[s : s + chunk] = adapter.offset(table[s : s + chunk].unsqueeze(0))[0]
    return out


def merge(adapter_dir: str, out_dir: str, model: str | None = None, log=print, peft: bool = False) -> Path:
    """Write the merged export of an ADePT (or PT) adapter to out_dir (a new folder); with `peft`,
    also the soft prompt as a PEFT prompt-tuning adapter for it, in out_dir/peft_prompt."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AdapterFileError(f"--output {out} exists and is not empty: choose a new folder (nothing was written)")
    if peft:
        require_peft()  # before streaming the checkpoint, not after
    name = model or resolve_base_model(read_adapter_config(adapter_dir).get("base_model") or "")
    if not name:
        raise AdapterFileError(f"{adapter_dir}: its config names no base_model: pass --model")
    config = load_config(name)
    adapter, cfg = load_adapter(adapter_dir, config, name)
    if cfg["method"] == "dept":
        raise AdapterFileError(
            f"{adapter_dir} is a DePT adapter: its offset depends on the position, not the token, so it cannot be "
            f"folded into the embedding table; use launch/predict.py with the adapter itself"
        )
    folder = model_folder(name)
    emb_name, head_name, tied = weight_names(config)
    where, index = shard_map(folder, name)
    emb_key = find_key(where, emb_name)
    if emb_key is None:
        raise ModelError(f"{folder}: no tensor {emb_name} in the checkpoint: is it a {config.model_type} model?")
    head_key = find_key(where, head_name)
    untie = tied or head_key is None  # the head is the original table: it must stay so
    head_key = head_key or head_name

    tmp = temp_folder_for(out)
    try:
        for p in folder.iterdir():  # tokenizer, generation config, license...: everything but weights
            if p.is_file() and p.suffix not in WEIGHT_SUFFIXES and p.name not in (INDEX, "config.json"):
                shutil.copyfile(p, tmp / p.name)
        emb_shard = where[emb_key]
        for shard in sorted(set(where.values()) - {emb_shard}):
            log(f"copying {shard}")
            shutil.copyfile(folder / shard, tmp / shard)
        log(f"merging the token offset into {emb_key} ({emb_shard})")
        with safe_open(str(folder / emb_shard), "pt") as f:
            meta = f.metadata() or {"format": "pt"}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        table = tensors[emb_key]
        if tuple(table.shape) != (config.vocab_size, config.hidden_size):
            raise ModelError(f"{folder}: {emb_key} has shape {tuple(table.shape)}, the config says "
                             f"{(config.vocab_size, config.hidden_size)}: the model folder is inconsistent")  # fmt: skip
        if untie:
            tensors[head_key] = table.clone()
            where[head_key] = emb_shard
        tensors[emb_key] = merged_table(table, adapter)
        save_file(tensors, str(tmp / emb_shard), metadata=meta)
        if index is not None:
            index["weight_map"] = dict(sorted(where.items()))
            if untie and "total_size" in index.get("metadata", {}):
                index["metadata"]["total_size"] += table.numel() * table.element_size()
            (tmp / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        config.tie_word_embeddings = False
        if untie and hasattr(config, "get_text_config"):
            config.get_text_config().tie_word_embeddings = False
        config.save_pretrained(tmp)
        save_file({"prompt": adapter.prompt.detach().float().contiguous()}, str(tmp / PROMPT_FILE),
                  metadata={"format": MERGE_FORMAT})  # fmt: skip
        info = {
            "format": MERGE_FORMAT,
            "format_version": MERGE_VERSION,
            "prompt_file": PROMPT_FILE,
            "m": adapter.m,
            "d": adapter.d,
            "embedding": emb_key,
            "untied_head": head_key if untie else None,
            "separator": cfg.get("separator", " Label : "),
            "max_length": cfg.get("max_length", 256),
            "task": cfg.get("task"),
            "base_model": name,
            "adapter": cfg,
        }
        (tmp / MERGE_INFO).write_text(json.dumps(info, indent=2) + "\n")
        if peft:  # its base is the merged folder, at the place it is about to take
            write_peft_prompt(adapter.prompt, config, str(out.resolve()), tmp / PEFT_FOLDER)
        if out.exists():  # empty when checked above; rmdir refuses if anything was written there since
            out.rmdir()
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"merged model written to {out} (soft prompt: {out / PROMPT_FILE}" +
        (f"; as a PEFT prompt-tuning adapter: {out / PEFT_FOLDER})" if peft else ")"))  # fmt: skip
    return out


def peft_adapter(adapter_dir: str, out_dir: str, model: str | None = None) -> Path:
    """A prompt-tuning (pt) adapter as a PEFT prompt-tuning adapter for its unchanged base model."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AdapterFileError(f"--output {out} exists and is not empty: choose a new folder (nothing was written)")
    cfg = read_adapter_config(adapter_dir)
    if cfg["method"] != "pt":
        raise AdapterFileError(
            f"{adapter_dir} is a {cfg['method']} adapter: its token offset is no part of a PEFT prompt-tuning adapter; "
            f"add --merge (the offset goes into the merged embedding table, the prompt into {PEFT_FOLDER}/)"
        )
    name = model or resolve_base_model(cfg.get("base_model") or "")
    if not name:
        raise AdapterFileError(f"{adapter_dir}: its config names no base_model: pass --model")
    config = load_config(name)
    adapter, _ = load_adapter(adapter_dir, config, name)
    return write_peft_prompt(adapter.prompt, config, name, out)


MERGE_FIX = "the merged export is damaged: export it again (export.py --merge)"


class MergeInfoFile(Record):
    """adept_merge.json of a merged export (``merge``); its "adapter" is the adapter config it was
    merged from (export.check_adapter_config)."""

    format: str
    format_version: int
    prompt_file: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+\.safetensors$")]  # a file of the folder
    m: PositiveInt
    d: PositiveInt
    embedding: str
    untied_head: str | None = None
    separator: str = None
    max_length: PositiveInt = None
    task: str | None = None
    base_model: str = None
    adapter: dict


def read_merge_info(folder: str | Path) -> dict:
    """A merged export's adept_merge.json, every field checked; the dict as read."""
    path = Path(folder) / MERGE_INFO
    info = load_json(path, MERGE_FIX, AdapterFileError)
    fmt, version = info.get("format"), info.get("format_version")
    if fmt != MERGE_FORMAT or version != MERGE_VERSION or isinstance(version, bool):
        field = "format" if fmt != MERGE_FORMAT else "format_version"
        got = f"{shown(fmt)} version {shown(version)}"
        raise AdapterFileError(problem(path, field, f"{MERGE_FORMAT!r} version {MERGE_VERSION}", got,
                                       "upgrade adept-dist, or export it again"))  # fmt: skip
    check(info, MergeInfoFile, path, MERGE_FIX, AdapterFileError)
    check_adapter_config(info["adapter"], f'{path} (its "adapter")', MERGE_FIX)
    return info


def load_merged_prompt(folder: str | Path, info: dict, hidden: int) -> PromptAdapter:
    """The soft prompt of a merged export as a prompt-only adapter (the offset is in the table)."""
    path = Path(folder) / info["prompt_file"]
    check_tensors(path, {"prompt": (info["m"], hidden)}, MERGE_FIX, AdapterFileError,
                  f"m={info['m']} of {MERGE_INFO}, the hidden size {hidden} of the model")  # fmt: skip
    state = read_tensors(path, "the merged export is incomplete, export it again")
    adapter = PromptAdapter(info["m"], hidden)
    adapter.init_prompt(state["prompt"])
    return adapter
