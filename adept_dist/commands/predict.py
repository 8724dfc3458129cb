"""Predictions from a trained adapter or a merged export: the ``adept-predict`` command
(``launch/predict.py``).

    python launch/predict.py --adapter runs/rte/adapter --input rows.jsonl --output preds.jsonl
    deepspeed --num_gpus 8 launch/predict.py --adapter ... (ZeRO-3: the backbone is partitioned)

On several ranks with a stage-3 DeepSpeed JSON (the default) the model is loaded layer by layer
(``loader.load_layerwise``: each unit read, quantised and partitioned before the next, so no rank
ever holds the whole model) and sharded over every rank (``--shard_scope global``) or over each
node's ranks (``node``); ``none`` (the default with a stage 0-2 JSON, and with one rank) loads the
whole model on every rank through transformers and runs it without a DeepSpeed engine.

Rows are decoded by ``evaluation.decode_examples`` (length-sorted batches dealt round-robin to
the ranks), so predictions, sampled ones too, are the same at any number of ranks.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import torch
import torch.distributed as dist

from adept_dist.common.errors import EXIT_USER_ERROR, ConfigError, exit_process, guarded
from adept_dist.common.fileio import write_jsonl
from adept_dist.config.resolve import choose_loader
from adept_dist.data.examples import ENCODING, DataError, Example, Joiner, leading_ids, read_records
from adept_dist.data.tasks import find_task
from adept_dist.distributed.comm import Dist
from adept_dist.distributed.dsconfig import DEFAULT_DS_CONFIG, apply_shard_scope, inference_ds_config, read_ds_config
from adept_dist.distributed.topology import SCOPES, make_layout
from adept_dist.distributed.zero import build_inference_engine, full_numel, local_numel
from adept_dist.export.adapter import CONFIG, MERGE_INFO, AdapterFileError, load_adapter, read_adapter_config
from adept_dist.export.merge import load_merged_prompt, read_merge_info, resolve_base_model
from adept_dist.model.backbone import (
    DTYPES,
    import_bitsandbytes,
    load_backbone,
    load_config,
    load_tokenizer,
    quant_state_bytes,
    resolve_compute_dtype,
)
from adept_dist.model.lm import AdeptLM, Sampling
from adept_dist.model.loader import load_layerwise, partition_adapter
from adept_dist.plan import measure
from adept_dist.run.build import convert_gguf
from adept_dist.run.context import log0
from adept_dist.run.evaluation import choose, decode_examples, gather_to_main, option_ids, rank_examples

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
    loader: str  # layerwise or transformers
    engine: object | None  # the ZeRO-3 inference engine (None: the model is whole on every rank)
    memory: dict  # what loading the weights took on this rank (measure.LoadWatch.figures)


@dataclass(frozen=True)
class Sharding:
    """How the model is held over the ranks, decided before anything is loaded."""

    scope: str  # global or node: ZeRO-3 (over every rank, or over each group); none: whole on every rank
    ds_path: str  # the DeepSpeed JSON (read only when scope is not none)
    group: object | None = None  # the process group the backbone is partitioned over (None: every rank)


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
    p.add_argument("--eval_mode", choices=("generate", "rank"), default="generate",
                   help="rank: each row's options scored by log-probability, the top one is the prediction (options: "
                        "a row's 'options' list, else --options, else the task's label words)")  # fmt: skip
    p.add_argument("--options", nargs="+", default=None, help="--eval_mode rank: the answers every row chooses from")
    p.add_argument("--rank_by", choices=("sum", "mean"), default="sum",
                   help="--eval_mode rank: compare options by summed or per-token mean log-probability")  # fmt: skip
    p.add_argument("--quant", choices=("nf4", "none"), default=None, help="default: as in training")
    p.add_argument("--compute_dtype", choices=("auto", "bf16", "fp32"), default="auto")
    p.add_argument("--attn_implementation", default="sdpa")
    p.add_argument(
        "--ds_config",
        default=None,
        help=f"DeepSpeed JSON when run with several ranks (default {DEFAULT_DS_CONFIG}: the backbone is "
        "partitioned); a stage 0-2 config replicates the model on every rank",
    )
    p.add_argument(
        "--shard_scope",
        choices=SCOPES,
        default=None,
        help="global: ZeRO-3 over every rank (the default with several ranks and a stage-3 --ds_config); node: "
        "ZeRO-3 within each node (or --shard_group_size group), replicated across them; none: the whole model on "
        "every rank (the default with one rank or a stage 0-2 config)",
    )
    p.add_argument(
        "--shard_group_size",
        type=int,
        default=None,
        help="with --shard_scope node: ranks per group (a divisor of the ranks per node); default: a whole node",
    )
    p.add_argument(
        "--ranks_per_node",
        type=int,
        default=None,
        help="ranks per node for --shard_scope node (ranks 0..N-1 are node 0, ...); default: from the launcher "
        "or the host name",
    )
    p.add_argument(
        "--loader",
        choices=("auto", "layerwise", "transformers"),
        default="auto",
        help="layerwise: read, quantise and partition one layer at a time (no rank holds the whole model); "
        "transformers: the whole model on every rank, then partitioned; auto: layerwise under ZeRO-3 for dense "
        "models (LLaMA, Mistral, Qwen2/3)",
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


def choose_sharding(args, world: int) -> Sharding:
    """The sharding scope and DeepSpeed JSON, with every error of these options raised before anything
    is loaded. Default: global with several ranks and a stage-3 JSON, none with a stage 0-2 JSON
    (``dsconfig.apply_shard_scope``, as in training) and with one rank (the JSON is then not read)."""
    path = args.ds_config or DEFAULT_DS_CONFIG
    for name in ("shard_group_size", "ranks_per_node"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name} must be >= 1, got {value}")
    if args.shard_group_size is not None and args.shard_scope != "node":
        raise ConfigError(
            "--shard_group_size sets the groups of --shard_scope node: add --shard_scope node, or drop it"
        )
    if args.shard_scope == "node" and args.loader == "transformers":
        raise ConfigError("--shard_scope node partitions each layer over its group as it is loaded, which the "
                          "transformers loader cannot: drop --loader transformers")  # fmt: skip
    if world == 1 and args.shard_scope is None:
        scope = "none"
        why = "one rank holds the whole model: add --shard_scope global (ZeRO-3 over that rank)"
    else:
        _, scope, _ = apply_shard_scope(read_ds_config(path), args.shard_scope, path)
        why = ("--shard_scope none keeps the whole model on every rank: drop --shard_scope none" if args.shard_scope
               else f"{path} is not stage 3: pass --ds_config {DEFAULT_DS_CONFIG}")  # fmt: skip
    if args.loader == "layerwise" and scope == "none":
        raise ConfigError(f"--loader layerwise partitions the model with ZeRO-3 as it loads, but {why}, or drop "
                          f"--loader layerwise")  # fmt: skip
    return Sharding(scope, path)


def load_for_inference(args, d: Dist, log, sharding: Sharding | None = None) -> Loaded:
    """Base model (from the adapter config, or --model) + adapter, or a merged export + its prompt;
    every compatibility check runs before the weights are loaded. Under ZeRO-3 (`sharding`) the
    model is partitioned by the time this returns (collective)."""
    sharding = sharding or Sharding("none", DEFAULT_DS_CONFIG)
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
    dtype = DTYPES[dtype_name]
    zero3 = sharding.scope != "none"
    option = "layerwise" if sharding.scope == "node" else args.loader  # node groups exist only layer by layer
    loader = choose_loader(option, zero3, config.model_type, sharding.ds_path)
    ds = inference_ds_config(sharding.ds_path, args.batch_size, d.world, dtype_name == "bf16") if zero3 else None
    log(f"{'merged export' if merged else cfg['method'] + ' adapter'} {folder} on {name} ({quant}, {dtype_name}; "
        f"{loader} loader)")  # fmt: skip
    if quant == "nf4":
        import_bitsandbytes()  # before the watch: its RSS is the library's

    watch = measure.LoadWatch.start(d.device)
    if loader == "layerwise":
        backbone = load_layerwise(name, quant, d.device, dtype, ds, args.attn_implementation, log=log,
                                  group=sharding.group)  # fmt: skip
        # DeepSpeed casts (and partitions) only modules it finds unpartitioned, as the transformers
        # path's adapter: the same cast here, and the adapter partitioned over every rank, not over
        # the backbone's group (loader.partition_adapter)
        adapter.to(d.device, dtype=dtype)
        partition_adapter(adapter, ds)
    else:
        backbone = load_backbone(name, quant, d.device, args.attn_implementation, False, dtype)
        adapter.to(d.device)
    model = AdeptLM(backbone, adapter).eval()
    model.requires_grad_(False)
    engine = build_inference_engine(model, ds) if ds is not None else None
    return Loaded(
        model,
        tokenizer,
        cfg.get("separator", " Label : "),
        cfg.get("max_length", 256),
        cfg.get("task"),
        name,
        merged,
        cfg.get("encoding", 1),
        loader,
        engine,
        watch.figures(),
    )


def local_share(model: torch.nn.Module) -> tuple[int, int]:
    """(elements this rank holds, elements of the whole model): ZeRO-3 keeps 1/world of each."""
    params = list(model.parameters())
    return sum(local_numel(p) for p in params), sum(full_numel(p) for p in params)


def partition_ranks(module: torch.nn.Module) -> int:
    """The number of ranks a module's first ZeRO-3 parameter is partitioned over (1: not partitioned)."""
    for p in module.parameters():
        if hasattr(p, "ds_process_group"):
            return dist.get_world_size(group=p.ds_process_group)
    return 1


def holding(loaded: Loaded, d: Dist) -> dict:
    """What this rank holds once loaded, and the memory loading took: one line on the main process,
    and one JSON line per rank in $ADEPT_MEMORY_REPORT (measure.MEMORY_REPORT) when it is set."""
    model = loaded.model
    held, whole = local_share(model)
    record = {"rank": d.rank, "world": d.world, "loader": loaded.loader, "held_elements": held,
              "whole_elements": whole, "quant_state_bytes": quant_state_bytes(model), **loaded.memory}  # fmt: skip
    if loaded.engine is not None:
        record["backbone_ranks"] = partition_ranks(model.backbone)
        record["adapter_ranks"] = partition_ranks(model.adapter)
        log0(d, f"ZeRO-3: rank 0 holds {held:,} of {whole:,} parameter elements (the backbone partitioned over "
                f"{record['backbone_ranks']} rank(s), the adapter over {record['adapter_ranks']})")  # fmt: skip
    elif d.world > 1:
        log0(d, "model replicated: every rank holds all of it")
    cuda = f", CUDA peak {record['cuda_peak_mb']:.0f} MB" if "cuda_peak_mb" in record else ""
    log0(d, f"loading on rank 0: RSS {record['rss_before_mb']:.0f} MB before, peak {record['peak_rss_mb']:.0f} MB "
            f"(+{record['peak_increase_mb']:.0f} MB), {record['rss_after_mb']:.0f} MB after{cuda}; the NF4 statistics "
            f"(QuantState, whole on every rank) take {record['quant_state_bytes'] / 2**20:.2f} MB")  # fmt: skip
    measure.append_report(record)
    return record


def row_options(rows: list[tuple[dict, str]], given: list[str] | None, task, path: str) -> list[list[str]]:
    """--eval_mode rank: each row's options: its own 'options' list, else --options, else the task's
    label words; a row without any is an error naming it."""
    out = []
    for r, _ in rows:
        own = r.get("options")
        if own is not None and not (
            isinstance(own, list) and own and all(isinstance(o, str) and o.strip() for o in own)
        ):
            raise DataError(f"{path}:{r['_line']}: 'options' must be a non-empty list of non-empty strings")
        opts = [o.strip() for o in own] if own else given or (list(task.labels) if task and task.labels else None)
        if not opts:
            raise DataError(f"{path}:{r['_line']}: --eval_mode rank needs options: give the row an 'options' list, "
                            f"or pass --options")  # fmt: skip
        out.append(opts)
    return out


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
    sharding = choose_sharding(args, d.world)
    layout, group = make_layout(sharding.scope, args.shard_group_size, args.ranks_per_node)  # collective
    if d.world > 1:
        log(layout.describe())
    loaded = load_for_inference(args, d, log, Sharding(sharding.scope, sharding.ds_path, group))
    holding(loaded, d)
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
    tok = loaded.tokenizer
    extra = [{} for _ in rows]
    if args.eval_mode == "rank":
        choices = row_options(rows, args.options, task, args.input)
        ids = option_ids(tok, loaded.separator, choices, loaded.encoding)
        mine, _ = rank_examples(loaded.model, examples, ids, tok.pad_token_id, d, args.batch_size)
        scored = gather_to_main(d, mine, len(rows))
        if d.main:
            picked = [choose(opts, s, args.rank_by) for opts, s in zip(choices, scored)]
            texts, extra = [c for c, _ in picked], [{"option_scores": s} for _, s in picked]
    else:
        mine, _ = decode_examples(
            loaded.model, examples, tok.pad_token_id, tok.eos_token_id, d, args.batch_size, max_new, sampling, args.seed
        )
        texts = gather_to_main(
            d, [(i, tok.decode(ids, skip_special_tokens=True).strip()) for i, ids in mine], len(rows)
        )
    if d.main:
        out.parent.mkdir(parents=True, exist_ok=True)
        keep = [{k: v for k, v in r.items() if k != "_line"} for r, _ in rows]
        write_jsonl(out, [{**r, "prediction": t, **x} for r, t, x in zip(keep, texts, extra)])
        log(f"{len(texts)} predictions written to {out}")
    if d.world > 1:
        dist.barrier()  # no rank tears the process group down while another still has work queued on it
    return {"rows": len(rows), "truncated": truncated}


def main(argv: list[str] | None = None) -> int:
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    args = build_parser().parse_args(argv)
    from adept_dist.distributed.comm import init_distributed

    try:
        Sampling(args.do_sample, args.temperature, args.top_k, args.top_p)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    d = init_distributed(args.local_rank)
    return guarded(d.rank, lambda: predict(args, d))[0]


def command() -> NoReturn:
    """adept-predict and launch/predict.py: `main`, then errors.exit_process."""
    exit_process(main())
