"""Predictions from a trained adapter or a merged export (``launch/predict.py``), and the batched,
rank-sharded decoding loop that evaluation uses too.

    python launch/predict.py --adapter runs/rte/adapter --input rows.jsonl --output preds.jsonl
    deepspeed --num_gpus 8 launch/predict.py --adapter ... (ZeRO-3: the backbone is partitioned)

Batches are cut from the rows sorted by length and dealt round-robin to the ranks, so every batch,
and so every prediction (sampled ones too: each batch draws from its own seeded generator), is the
same at any number of ranks. Under ZeRO-3 every forward is collective: all ranks run the same
number of rounds (a rank out of rows runs a dummy batch) and stop generating together.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .adapters import IGNORE_INDEX
from .data import DataError, Example, collate
from .dist import Dist, all_reduce_sum
from .model import AdeptLM, Sampling

DEFAULT_MAX_NEW_TOKENS = 32


# ----------------------------------------------------------------------------- the shared loop
def rank_batches(examples: list[Example], batch_size: int, world: int, rank: int):
    """This rank's (global batch number, example indices) and the rounds every rank runs."""
    order = sorted(range(len(examples)), key=lambda i: (len(examples[i].input_ids), i))
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    return list(enumerate(batches))[rank::world], math.ceil(len(batches) / world)


def batch_generator(seed: int, batch_number: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + batch_number) % (2**63))


@torch.no_grad()
def decode_examples(
    model: AdeptLM,
    examples: list[Example],
    pad_id: int,
    eos_id: int,
    d: Dist,
    batch_size: int,
    max_new_tokens: int,
    sampling: Sampling | None = None,
    seed: int = 0,
    with_loss: bool = False,
    desc: str = "predict",
) -> tuple[list[tuple[int, list[int]]], torch.Tensor]:
    """Generate after each example's source (its first `source_len` ids) on this rank's share.

    Returns [(example index, generated ids up to EOS)] of this rank, and (summed target loss, target
    tokens) over all ranks when `with_loss` (teacher-forced on the examples' targets)."""
    mine, rounds = rank_batches(examples, batch_size, d.world, d.rank)

    def finished(done: torch.Tensor, real: bool) -> bool:  # every rank's batch has ended
        if d.world == 1:
            return bool(done.all())
        flag = torch.tensor([0.0 if (done.all() or not real) else 1.0], dtype=torch.float64)
        return all_reduce_sum(flag).item() == 0

    was_training = model.training
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64)
    out: list[tuple[int, list[int]]] = []
    bar = tqdm(total=rounds, disable=not d.main, desc=desc, leave=False, dynamic_ncols=True, mininterval=2)
    for r in range(rounds):
        real = r < len(mine)
        number, idx = mine[r] if real else (0, [0])
        if with_loss:
            batch = collate([examples[i] for i in idx], pad_id, None)
            if not real:
                batch["labels"].fill_(IGNORE_INDEX)
            loss, ntok = model(**{k: v.to(d.device) for k, v in batch.items()})
            if real:
                sums += torch.stack([loss.double().cpu(), ntok.double().cpu()])
        sources = [Example(examples[i].input_ids[: examples[i].source_len], 0, 0) for i in idx]
        src = collate(sources, pad_id, None, left=True)
        gen = model.generate(
            src["input_ids"].to(d.device),
            src["attention_mask"].to(d.device),
            max_new_tokens,
            eos_id,
            finished=lambda done, real=real: finished(done, real),
            sampling=sampling,
            generator=batch_generator(seed, number),
        )
        if real:
            for i, ids in zip(idx, gen.tolist()):
                out.append((i, ids[: ids.index(eos_id)] if eos_id in ids else ids))
        bar.update(1)
    bar.close()
    if with_loss:
        all_reduce_sum(sums)
    model.train(was_training)
    return out, sums


def gather_to_main(d: Dist, items: list, n: int) -> list | None:
    """Every rank's [(index, value)] -> the values in index order on the main process (None elsewhere)."""
    if d.world == 1:
        parts = [items]
    else:
        parts = [None] * d.world
        dist.all_gather_object(parts, items)
    if not d.main:
        return None
    by_index = dict(p for part in parts for p in part)
    return [by_index[i] for i in range(n)]


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
    from .data import read_records

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


def encode_sources(texts: list[str], tokenizer, max_length: int, separator: str) -> tuple[list[Example], int]:
    """<bos> input separator, the input cut from its end to fit max_length (as in training)."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    sep = tokenizer(separator, add_special_tokens=False).input_ids
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
    from .backbone import DTYPES, load_backbone, load_config, load_tokenizer
    from .export import CONFIG, MERGE_INFO, AdapterFileError, load_adapter, read_adapter_config
    from .merge import load_merged_prompt, read_merge_info, resolve_base_model

    folder = Path(args.adapter)
    if not folder.is_dir():
        raise AdapterFileError(f"--adapter {folder} is not a folder: give OUT/adapter of a run, or a merged export")
    dtype_name = args.compute_dtype if args.compute_dtype != "auto" else ("fp32" if d.device.type == "cpu" else "bf16")
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
        model, tokenizer, cfg.get("separator", " Label : "), cfg.get("max_length", 256), cfg.get("task"), name, merged
    )


def partition(model: AdeptLM, ds_config: str, batch_size: int, world: int, dtype_bf16: bool):
    """Put the model under a DeepSpeed engine: ZeRO-3 partitions the frozen backbone over the
    ranks (gathered layer by layer in each forward); stage 0-2 leave it replicated (no engine)."""
    import deepspeed

    from .config import ConfigError

    path = Path(ds_config)
    if not path.is_file():
        path = Path(__file__).resolve().parent.parent / ds_config
    if not path.is_file():
        raise ConfigError(f"DeepSpeed config {ds_config} not found: pass --ds_config ds_configs/zero3.json")
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"DeepSpeed config {path} is not valid JSON ({exc.msg})") from None
    if ds.get("zero_optimization", {}).get("stage", 0) != 3:
        return None
    for key in ("optimizer", "scheduler"):
        ds.pop(key, None)
    ds.update(
        train_micro_batch_size_per_gpu=batch_size,
        gradient_accumulation_steps=1,
        train_batch_size=batch_size * world,
        steps_per_print=10**9,
    )
    ds["bf16"] = {"enabled": dtype_bf16}
    ds.pop("gradient_clipping", None)
    engine, *_ = deepspeed.initialize(model=model, config=ds)
    return engine


def local_share(model: torch.nn.Module) -> tuple[int, int]:
    """(elements this rank holds, elements of the whole model): ZeRO-3 keeps 1/world of each."""
    held = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in model.parameters())
    whole = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    return held, whole


def write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def predict(args, d: Dist) -> dict:
    from .tasks import TASKS

    def log(msg: str) -> None:
        if d.main:
            tqdm.write(f"[adept-dist] {msg}")

    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise DataError(f"--output {out} exists: pass --overwrite to replace it, or choose another file")
    if out.is_dir():
        raise DataError(f"--output {out} is a folder: give a file name")
    sampling = Sampling(args.do_sample, args.temperature, args.top_k, args.top_p)
    if args.batch_size < 1 or (args.max_new_tokens is not None and args.max_new_tokens < 1):
        raise DataError("--batch_size and --max_new_tokens must be >= 1")
    loaded = load_for_inference(args, d, log)
    task = TASKS.get(loaded.task) if loaded.task else None
    rows = read_inputs(args.input, task)
    max_length = args.max_length or loaded.max_length
    examples, truncated = encode_sources([t for _, t in rows], loaded.tokenizer, max_length, loaded.separator)
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
        engine = partition(loaded.model, args.ds_config or "ds_configs/zero3.json", args.batch_size, d.world,
                           next(loaded.model.backbone.parameters()).dtype == torch.bfloat16)  # fmt: skip
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
        write_jsonl_atomic(out, [{**r, "prediction": t} for r, t in zip(keep, texts)])
        log(f"{len(texts)} predictions written to {out}")
    return {"rows": len(rows), "truncated": truncated}


def main(argv: list[str] | None = None) -> int:
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    args = build_parser().parse_args(argv)
    from .cli import guarded
    from .dist import init_distributed

    try:
        Sampling(args.do_sample, args.temperature, args.top_k, args.top_p)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    d = init_distributed(args.local_rank)
    return guarded(d.rank, lambda: predict(args, d))[0]
