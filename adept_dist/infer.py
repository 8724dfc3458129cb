"""Predictions from a trained adapter or a merged export: the ``adept-predict`` command
(``launch/predict.py``).

    python launch/predict.py --adapter runs/rte/adapter --input rows.jsonl --output preds.jsonl
    deepspeed --num_gpus 8 launch/predict.py --adapter ... (ZeRO-3: the backbone is partitioned)

Rows are decoded by ``evaluation.decode_examples`` (length-sorted batches dealt round-robin to
the ranks), so predictions, sampled ones too, are the same at any number of ranks.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from .backbone import DTYPES, load_backbone, load_config, load_tokenizer, resolve_compute_dtype
from .build import convert_gguf
from .data import ENCODING, DataError, Example, Joiner, leading_ids, read_records
from .dist import Dist, build_inference_engine, full_numel, inference_ds_config, local_numel
from .errors import EXIT_USER_ERROR, guarded
from .evaluation import decode_examples, gather_to_main
from .export import CONFIG, MERGE_INFO, AdapterFileError, load_adapter, read_adapter_config
from .fileio import write_jsonl
from .merge import load_merged_prompt, read_merge_info, resolve_base_model
from .model import AdeptLM, Sampling
from .run import log0
from .tasks import find_task

DEFAULT_MAX_NEW_TOKENS = 32


# ----------------------------------------------------------------------------- predict.py
@dataclass
class Loaded:
    model: AdeptLM
    tokenizer: object
    separator: str
    max_length: int
    task: str | None
    base_model: str
    merged: bool
    encoding: int  # data.ENCODING of the run that trained the adapter (1 when it predates the record)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="predict.py",
        description="One prediction per input row from a trained adapter folder or a merged export.",
    )
    p.add_argument("--adapter", required=True, help="adapter folder (OUT/adapter of a run) or a merged export folder")
    p.add_argument("--input", required=True, help="JSONL or CSV rows: an 'input' field, or the task's raw fields")
    p.add_argument("--output", required=True, help="JSONL file to write: each input row plus 'prediction'")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.add_argument(
        "--model", default=None, help="base model (hub id or folder); default: the one in the adapter config"
    )
    p.add_argument("--batch_size", type=int, default=16, help="rows per batch and rank")
    p.add_argument("--max_new_tokens", type=int, default=None, help="default: the task's budget, else 32")
    p.add_argument("--max_length", type=int, default=None, help="input tokens kept (default: the training run's)")
    p.add_argument("--do_sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top_k", type=int, default=0, help="0: off")
    p.add_argument("--top_p", type=float, default=1.0, help="1.0: off")
    p.add_argument("--seed", type=int, default=0, help="seed of sampled decoding (per batch, any world size)")
    p.add_argument("--quant", choices=("nf4", "none"), default=None, help="default: as in training")
    p.add_argument("--compute_dtype", choices=("auto", "bf16", "fp32"), default="auto")
    p.add_argument("--attn_implementation", default="sdpa")
    p.add_argument(
        "--ds_config",
        default=None,
        help="DeepSpeed JSON when run with several ranks (default ds_configs/zero3.json: the backbone is "
        "partitioned); a stage 0-2 config replicates the model on every rank",
    )
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    return p


def read_inputs(path: str, task) -> list[tuple[dict, str]]:
    """(row, source text) for each row: its 'input' field, or the task's formatting of its raw fields."""
    if not Path(path).is_file():
        raise DataError(f"--input {path} not found: check the path")
    rows = read_records(path, columns=())
    if not rows:
        raise DataError(f"--input {path} holds no rows")
    out = []
    for r in rows:
        where = f"{path}:{r['_line']}"
        if isinstance(r.get("input"), str):
            out.append((r, r["input"]))
            continue
        if task is None:
            raise DataError(f"{where}: row has no string 'input' field (and the adapter was not trained on a task)")
        try:
            out.append((r, task.source(r)))
        except KeyError as exc:
            raise DataError(
                f"{where}: row has no 'input' and lacks the {task.name} field {exc}: "
                f"give 'input' text or the task's raw fields"
            ) from None
        except (TypeError, ValueError) as exc:
            raise DataError(f"{where}: cannot format the row as {task.name} ({exc})") from None
    return out


def encode_sources(
    texts: list[str], tokenizer, max_length: int, separator: str, encoding: int = ENCODING
) -> tuple[list[Example], int]:
    """<bos> input separator, the input cut from its end to fit max_length (as in training, with
    the adapter's own data encoding)."""
    bos = leading_ids(tokenizer, encoding)
    sep = Joiner(tokenizer, separator, encoding).sep_ids
    room = max_length - len(bos) - len(sep) - 1  # training kept at least one target token + EOS
    if room < 1:
        raise DataError(f"--max_length {max_length} leaves no room for the input: raise it")
    out, truncated = [], 0
    for ids in tokenizer(texts, add_special_tokens=False).input_ids:
        if len(ids) > room:
            ids, truncated = ids[:room], truncated + 1
        src = bos + ids + sep
        out.append(Example(src, 0, len(src)))
    return out, truncated


def load_for_inference(args, d: Dist, log) -> Loaded:
    """Base model (from the adapter config, or --model) + adapter, or a merged export + its prompt;
    every compatibility check runs before the weights are loaded."""
    folder = Path(args.adapter)
    if not folder.is_dir():
        raise AdapterFileError(f"--adapter {folder} is not a folder: give OUT/adapter of a run, or a merged export")
    dtype_name = resolve_compute_dtype(args.compute_dtype, d.device)
    merged = (folder / MERGE_INFO).is_file() and not (folder / CONFIG).is_file()
    if merged:
        info = read_merge_info(folder)
        name, cfg = str(folder), info["adapter"]
    else:
        cfg = read_adapter_config(folder)
        if not args.model and not cfg.get("base_model"):
            raise AdapterFileError(f"{folder / CONFIG} names no base_model: pass --model")
        name = args.model or cfg["base_model"]
        if name == "builtin" and d.local_rank == 0:
            resolve_base_model(name)  # builds the demo model once per machine
        if d.world > 1:
            dist.barrier()
        name = resolve_base_model(name)
    convert_gguf(name, d)  # a .gguf base: converted once, not by every rank at once
    config = load_config(name)
    if merged:
        adapter = load_merged_prompt(folder, info, config.hidden_size)
    else:
        adapter, cfg = load_adapter(folder, config, name)
    tokenizer = load_tokenizer(name)
    quant = args.quant or cfg.get("quant", "nf4")
    backbone = load_backbone(name, quant, d.device, args.attn_implementation, False, DTYPES[dtype_name])
    model = AdeptLM(backbone, adapter.to(d.device)).eval()
    model.requires_grad_(False)
    log(f"{'merged export' if merged else cfg['method'] + ' adapter'} {folder} on {name} ({quant}, {dtype_name})")
    return Loaded(
        model,
        tokenizer,
        cfg.get("separator", " Label : "),
        cfg.get("max_length", 256),
        cfg.get("task"),
        name,
        merged,
        cfg.get("encoding", 1),
    )


def local_share(model: torch.nn.Module) -> tuple[int, int]:
    """(elements this rank holds, elements of the whole model): ZeRO-3 keeps 1/world of each."""
    params = list(model.parameters())
    return sum(local_numel(p) for p in params), sum(full_numel(p) for p in params)


def predict(args, d: Dist) -> dict:
    def log(msg: str) -> None:
        log0(d, msg)

    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise DataError(f"--output {out} exists: pass --overwrite to replace it, or choose another file")
    if out.is_dir():
        raise DataError(f"--output {out} is a folder: give a file name")
    sampling = Sampling(args.do_sample, args.temperature, args.top_k, args.top_p)
    if args.batch_size < 1 or (args.max_new_tokens is not None and args.max_new_tokens < 1):
        raise DataError("--batch_size and --max_new_tokens must be >= 1")
    loaded = load_for_inference(args, d, log)
    task = find_task(loaded.task)
    rows = read_inputs(args.input, task)
    max_length = args.max_length or loaded.max_length
    examples, truncated = encode_sources(
        [t for _, t in rows], loaded.tokenizer, max_length, loaded.separator, loaded.encoding
    )
    max_new = args.max_new_tokens or (task and task.max_new_tokens) or DEFAULT_MAX_NEW_TOKENS
    limit = getattr(loaded.model.backbone.config, "max_position_embeddings", None)
    longest = loaded.model.adapter.m + max(len(e.input_ids) for e in examples) + max_new
    if limit is not None and longest > limit:
        raise DataError(
            f"the longest row needs {longest} positions (prompt + input + --max_new_tokens) but the model has "
            f"{limit}: lower --max_length or --max_new_tokens"
        )
    log(f"{len(rows)} rows ({truncated} inputs cut to --max_length {max_length}); up to {max_new} new tokens, "
        f"{'sampled' if sampling.do_sample else 'greedy'}, {d.world} rank(s)")  # fmt: skip
    if d.world > 1:
        bf16 = next(loaded.model.backbone.parameters()).dtype == torch.bfloat16
        ds = inference_ds_config(args.ds_config or "ds_configs/zero3.json", args.batch_size, d.world, bf16)
        engine = build_inference_engine(loaded.model, ds) if ds is not None else None
        held, whole = local_share(loaded.model)
        log(f"ZeRO-3: rank 0 holds {held:,} of {whole:,} parameter elements" if engine else "model replicated")
    tok = loaded.tokenizer
    mine, _ = decode_examples(
        loaded.model, examples, tok.pad_token_id, tok.eos_token_id, d, args.batch_size, max_new, sampling, args.seed
    )
    texts = gather_to_main(d, [(i, tok.decode(ids, skip_special_tokens=True).strip()) for i, ids in mine], len(rows))
    if d.main:
        out.parent.mkdir(parents=True, exist_ok=True)
        keep = [{k: v for k, v in r.items() if k != "_line"} for r, _ in rows]
        write_jsonl(out, [{**r, "prediction": t} for r, t in zip(keep, texts)])
        log(f"{len(texts)} predictions written to {out}")
    if d.world > 1:
        dist.barrier()  # no rank tears the process group down while another still has work queued on it
    return {"rows": len(rows), "truncated": truncated}


def main(argv: list[str] | None = None) -> int:
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    args = build_parser().parse_args(argv)
    from .dist import init_distributed

    try:
        Sampling(args.do_sample, args.temperature, args.top_k, args.top_p)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    d = init_distributed(args.local_rank)
    return guarded(d.rank, lambda: predict(args, d))[0]
