"""Build a run and train it. Build order (fixed, written down once):

    output folder check -> tokenizer + data -> backbone (quantized, frozen) -> adapter (seeded,
    same on every rank) -> validate the trainable set -> deepspeed.initialize -> resume state -> train

Loss normalisation: each micro-batch contributes (sum of target-token losses) * world / N, where
N is the number of target tokens in the whole optimizer step (all ranks, all micro-batches);
DeepSpeed averages gradients over ranks, so the step's gradient is exactly that of the mean
token loss of the global batch. N is known on every rank without communication because the data
order is a deterministic function of (seed, position).
"""

from __future__ import annotations

import json
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from . import builtin, checkpoint, metrics, taskdata
from .adapters import PromptAdapter, build_adapter
from .backbone import DTYPES, load_backbone, load_config, load_tokenizer
from .config import Config, ConfigError
from .data import DataError, Example, LengthGroupedStream, SampleStream, collate, make_stream, step_batches
from .dist import (
    Dist,
    adam_step_count,
    all_reduce_sum,
    broadcast_object,
    broadcast_packed,
    build_engine,
    consolidated_state,
    full_fp32_state,
    gathered,
    resolve_ds_config,
    restore_consolidated_state,
    set_full_weights,
)
from .export import WEIGHTS, adapter_config, load_adapter, save_adapter
from .infer import decode_examples, gather_to_main
from .loader import load_layerwise
from .model import AdeptLM
from .tasks import TASKS

DENSE_TYPES = ("llama", "mistral", "qwen2", "qwen3")


class TrainError(RuntimeError):
    """A run that cannot go on; the message says why."""


# ----------------------------------------------------------------------------- small helpers
def log0(d: Dist, msg: str) -> None:
    if d.main:
        tqdm.write(f"[adept-dist] {msg}")


def check_output_dir(out: Path, resume: bool) -> None:
    """Never overwrite earlier results: a non-empty folder needs --resume."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output_dir {out} is a file: choose a folder")
    if out.is_dir() and any(out.iterdir()) and not resume:
        raise ConfigError(
            f"--output_dir {out} is not empty: pass --resume to continue that run, or choose a new --output_dir"
        )


def lr_lambda(warmup: int, total: int):
    """Linear warmup to the peak over `warmup` steps, then linear decay to 0 at `total`."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return f


def trainable_groups(adapter: PromptAdapter, lr_prompt: float, lr_ffn: float) -> list[dict]:
    """The one place that decides what trains: the adapter's parameters, in two lr groups."""
    prompt = [adapter.prompt]
    rest = [p for n, p in adapter.named_parameters() if n != "prompt"]
    groups = [{"params": prompt, "lr": lr_prompt, "name": "prompt"}]
    if rest:
        groups.append({"params": rest, "lr": lr_ffn, "name": "offset"})
    return groups


def check_trainable(model: AdeptLM) -> None:
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    adapter = {id(p) for p in model.adapter.parameters()}
    if trainable != adapter:
        extra = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in adapter]
        raise TrainError(f"trainable parameters differ from the adapter's: {extra[:5]}")


@torch.no_grad()
def prompt_init_rows(cfg: Config, embedding: torch.nn.Embedding, tokenizer, m: int) -> torch.Tensor:
    """(m, d) rows for the soft prompt: text init (repeated/truncated), random vocab rows, or normal.
    Only the m rows needed leave the table (a 128k x 8k vocabulary is 4 GB in fp32)."""
    a = cfg.adapter
    g = torch.Generator().manual_seed(cfg.optim.seed)
    vocab = min(embedding.num_embeddings, len(tokenizer))
    if a.prompt_init == "vocab":
        ids = torch.randint(0, vocab, (m,), generator=g)
    elif a.prompt_init == "text":
        text_ids = tokenizer(a.prompt_init_text, add_special_tokens=False).input_ids
        if not text_ids:
            raise ConfigError("--prompt_init_text tokenizes to nothing: give some text or use --prompt_init vocab")
        ids = torch.tensor((text_ids * (m // len(text_ids) + 1))[:m])
    with gathered([embedding.weight]):
        weight = embedding.weight.detach()  # (V, d)
        if a.prompt_init == "normal":
            return torch.randn(m, weight.shape[1], generator=g) * weight.float().std().cpu()
        return weight[ids.to(weight.device)].float().cpu().clone()


class MetricsLog:
    """metrics.jsonl: one JSON object per line, written by the main process only."""

    def __init__(self, path: Path, main: bool, keep_until: int | None = None) -> None:
        self.path, self.main = path, main
        if main and keep_until is not None and path.is_file():  # resume: drop lines after the checkpoint
            lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
            kept = [ln for ln in lines if json.loads(ln).get("step", 0) <= keep_until]
            path.write_text("".join(ln + "\n" for ln in kept))

    def write(self, record: dict) -> None:
        if self.main:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


# ----------------------------------------------------------------------------- the run
@dataclass
class Run:
    cfg: Config
    d: Dist
    out: Path
    tokenizer: object
    data: taskdata.TaskData
    model: AdeptLM
    engine: object = None
    base_model: str = ""
    ds_config: dict | None = None  # resolved DeepSpeed JSON
    step: int = 0
    position: int = 0
    stream: SampleStream | LengthGroupedStream | None = None
    metrics: MetricsLog | None = None
    best: dict | None = None  # validation scores of the best step so far (written to best.json)
    best_state: dict | None = None  # that step's adapter weights (fp32, whole), on every rank

    @property
    def train(self) -> list[Example]:
        return self.data.train


def build(cfg: Config, d: Dist) -> Run:
    if cfg.model.compute_dtype == "auto":  # CPUs without bf16 units run bf16 matmuls ~18x slower than fp32
        cfg.model.compute_dtype = "fp32" if d.device.type == "cpu" else "bf16"
    out = Path(cfg.run.output_dir)
    check_output_dir(out, cfg.run.resume)
    dist.barrier()  # every rank has looked before the main one writes
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")

    dc = cfg.data
    model_name, files = cfg.model.model, {"train_file": dc.train_file, "eval_file": dc.eval_file}
    files["test_file"] = dc.test_file
    if model_name is None or (dc.train_file is None and dc.task is None):
        if d.local_rank == 0:
            root = builtin.ensure_builtin(log=lambda s: log0(d, s) if d.main else None)
        dist.barrier()
        root = builtin.builtin_dir()
        model_name = model_name or str(root / "model")
        if dc.train_file is None and dc.task is None:
            files = {"train_file": str(root / "train.jsonl"), "eval_file": str(root / "dev.jsonl")}
    if cfg.model.model is None and dc.task is not None:
        log0(d, f"warning: --task {dc.task} without --model runs the built-in tiny demo model, which knows only "
                f"the demo's words: its scores mean nothing; pass --model for real results")  # fmt: skip

    model_type = load_config(model_name).model_type  # refuse a missing or non-decoder model before reading data
    if not d.main:  # one progress bar per job, not per rank
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    tokenizer = load_tokenizer(model_name)
    data = load_data(cfg, d, tokenizer, files)

    ds_config = resolve_ds_config(cfg.run.ds_config, cfg, d.world)
    zero3 = ds_config.get("zero_optimization", {}).get("stage") == 3
    if cfg.model.loader == "layerwise" and not zero3:
        raise ConfigError(f"--loader layerwise partitions the backbone with ZeRO-3: {cfg.run.ds_config} is not stage 3")
    # auto: layerwise for the dense families its bitwise test covers; MoE experts load through transformers
    layerwise = zero3 and (
        cfg.model.loader == "layerwise" or (cfg.model.loader == "auto" and model_type in DENSE_TYPES)
    )
    dtype = DTYPES[cfg.model.compute_dtype]
    if layerwise:
        backbone = load_layerwise(
            model_name, cfg.model.quant, d.device, dtype, ds_config, cfg.model.attn_implementation,
            cfg.model.activation_checkpointing, log=lambda m: log0(d, m),
        )  # fmt: skip
    else:
        backbone = load_backbone(
            model_name, cfg.model.quant, d.device, cfg.model.attn_implementation,
            cfg.model.activation_checkpointing, dtype,
        )  # fmt: skip
    a = cfg.adapter
    hidden = backbone.config.hidden_size
    torch.manual_seed(cfg.optim.seed)  # identical adapter init on every rank
    adapter = build_adapter(a.method, a.prompt_length, hidden, a.offset_rank, dc.max_length, a.dropout)
    adapter.init_prompt(prompt_init_rows(cfg, backbone.get_input_embeddings(), tokenizer, a.prompt_length))
    if cfg.run.init_adapter:
        init_from_adapter(adapter, cfg.run.init_adapter, backbone.config, model_name)
    # DeepSpeed casts a module to its compute dtype unless the module is already ZeRO-partitioned
    # (the layerwise loader's): then the adapter gets the same cast here (fp32 masters stay in the optimizer)
    adapter.to(d.device, dtype=dtype if layerwise else None)
    model = AdeptLM(backbone, adapter)
    check_trainable(model)
    log0(
        d,
        f"{a.method}: m={adapter.m} r={getattr(adapter, 'r', '-')} d={hidden}, "
        f"{sum(p.numel() for p in adapter.parameters()):,} trainable parameters; backbone {cfg.model.quant}, frozen",
    )
    return Run(
        cfg,
        d,
        out,
        tokenizer,
        data,
        model,
        base_model=cfg.model.model or "builtin",
        ds_config=ds_config,
        stream=make_stream(
            [len(e.input_ids) for e in data.train],
            cfg.optim.seed,
            dc.micro_batch_size * dc.grad_accum * d.world,
            0 if a.method == "dept" else dc.group_window,  # DePT pads every batch to max_length anyway
        ),
    )


def load_data(cfg: Config, d: Dist, tokenizer, files: dict) -> taskdata.TaskData:
    """The main process loads, splits, formats and tokenises (or reads its cache); the other ranks
    receive the token ids instead of redoing the work. An error on the main process reaches all."""
    dc = cfg.data
    opts = {
        **files,
        "data_dir": dc.data_dir,
        "max_length": dc.max_length,
        "separator": dc.separator,
        "split_seed": dc.split_seed,
        "validation_size": dc.validation_size,
        "k_shot": dc.k_shot,
        "seed": cfg.optim.seed,
    }
    task = TASKS[dc.task] if dc.task else None
    tensors, meta, data, failure = None, None, None, None
    if d.main:
        try:
            cache = Path(dc.cache_dir) if dc.cache_dir else builtin.home() / "tokenized"
            data = taskdata.prepare_main(task, tokenizer, opts, cache, log=lambda m: log0(d, m))
            tensors, meta = taskdata.pack(data) if d.world > 1 else ({}, "")
        except Exception as exc:
            failure = exc
            tensors, meta = {}, json.dumps({"error": str(exc), "user": isinstance(exc, DataError)})
    tensors, meta = broadcast_packed(tensors, meta, d.device)
    if failure is not None:
        raise failure
    if meta and (err := json.loads(meta).get("error")) is not None:
        raise (DataError if json.loads(meta)["user"] else RuntimeError)(f"{err} (reported by rank 0)")
    if data is None:
        data = taskdata.unpack(tensors, meta)
    if dc.max_eval_samples:
        for es in data.evals.values():
            es.examples, es.refs = es.examples[: dc.max_eval_samples], es.refs[: dc.max_eval_samples]
    sizes = ", ".join([f"train {len(data.train)}"] + [f"{k} {len(v.examples)}" for k, v in data.evals.items()])
    trunc = sum(v for k, v in data.info.items() if k.endswith("_truncated"))
    log0(d, f"data ({data.name}): {sizes} examples; {trunc} inputs truncated to max_length={dc.max_length}")
    return data


def init_from_adapter(adapter: PromptAdapter, path: str, model_config, model_name: str) -> None:
    """Start from an exported adapter (same method and shapes), e.g. to evaluate it with --max_steps 0."""
    loaded, cfg = load_adapter(path, model_config, model_name)
    mine = {k: tuple(v.shape) for k, v in adapter.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in loaded.state_dict().items()}
    if type(loaded) is not type(adapter) or mine != theirs:
        raise ConfigError(
            f"--init_adapter {path} is a {cfg['method']} adapter with tensors {theirs}, this run builds {mine}: "
            f"use the same --method, --prompt_length and --offset_rank, on a model of the same hidden size"
        )
    adapter.load_state_dict(loaded.state_dict())


def setup_engine(run: Run) -> None:
    cfg, d = run.cfg, run.d
    o = cfg.optim
    ds_config = run.ds_config or resolve_ds_config(cfg.run.ds_config, cfg, d.world)
    optimizer = torch.optim.AdamW(
        trainable_groups(run.model.adapter, o.lr_prompt, o.lr_ffn), eps=o.adam_eps, weight_decay=o.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(o.warmup_steps, o.max_steps))
    run.engine, _, _ = build_engine(run.model, optimizer, scheduler, ds_config)
    if cfg.run.resume:
        resume_state(run)
    run.metrics = MetricsLog(run.out / "metrics.jsonl", d.main, keep_until=run.step if cfg.run.resume else None)


def resume_state(run: Run) -> None:
    """Load the newest usable checkpoint of the output folder, if there is one."""
    root = run.out / checkpoint.CKPT_DIR
    meta = checkpoint.resume(
        run.engine, list(run.model.adapter.named_parameters()), root, run.d.world, lambda m: log0(run.d, m)
    )
    if meta is None:
        log0(run.d, f"--resume: no checkpoint in {root} yet, starting from step 0")
        return
    run.step, run.position = meta["step"], meta["position"]
    dc = run.cfg.data
    global_batch = dc.micro_batch_size * dc.grad_accum * run.d.world
    if meta.get("global_batch", global_batch) != global_batch:
        log0(
            run.d,
            f"warning: the global batch changes from {meta['global_batch']} to {global_batch} examples per step; "
            f"set --grad_accum (or --micro_batch_size) to keep it and continue the same optimisation",
        )
    log0(run.d, f"resumed from {checkpoint.tag_of(run.step)}: step {run.step}, {run.position} samples seen")
    restore_best(run)


def restore_best(run: Run) -> None:
    """The best validation result up to the resumed step, and its adapter (a best found after the
    checkpoint is ignored: the resumed run finds it again, identically)."""
    best_path, adapter_dir = run.out / "best.json", run.out / "adapter"
    if not best_path.is_file() or not (adapter_dir / WEIGHTS).is_file():
        return
    from safetensors.torch import load_file

    best = json.loads(best_path.read_text())
    saved_step = json.loads((adapter_dir / "adapter_config.json").read_text()).get("step")
    if best.get("step", math.inf) <= run.step and saved_step == best["step"]:
        run.best, run.best_state = best, load_file(str(adapter_dir / WEIGHTS))
        log0(run.d, f"best so far: step {best['step']}, validation {best['metric']} {best['value']:.4g}")


# ----------------------------------------------------------------------------- train step
class StopRequest:
    """SIGUSR1 (SLURM's warning before a time limit or preemption) or SIGTERM asks the run to
    finish the current step, save and exit. Ranks agree through the step's loss all-reduce, so a
    signal that reached one rank only stops all of them at the same step."""

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum = 0
        for s in self.SIGNALS:
            signal.signal(s, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.signum = signum


def slot_seed(seed: int, step: int, slot: int) -> int:
    """RNG seed of one micro-batch: dropout masks depend on (seed, step, slot) only, where slot is
    the micro-batch's place in the global batch (k * world + rank). A resumed run draws exactly what
    an uninterrupted one would have, and so does a run that splits the same global batch over
    another number of ranks."""
    return ((seed * 1_000_003 + step) * 4099 + slot) % (2**63)


def forward_backward(run: Run, stop: int = 0) -> dict:
    """Forward and backward of every micro-batch of the next optimizer step (micro_batch *
    grad_accum * world examples); gradients are reduced, the optimizer has not stepped yet.
    `stop` (a signal number or 0) is summed over ranks with the loss: rec["stop"] tells all ranks."""
    cfg, d, engine = run.cfg, run.d, run.engine
    dc = cfg.data
    pad_to = dc.max_length if cfg.adapter.method == "dept" else None
    mine, global_idx = step_batches(run.stream, run.position, dc.micro_batch_size, dc.grad_accum, d.world, d.rank)
    n_target = sum(run.train[i].n_target for i in global_idx)  # N of the step, identical on every rank
    loss_sum = torch.zeros((), dtype=torch.float64)
    for k, idx in enumerate(mine):
        torch.manual_seed(slot_seed(cfg.optim.seed, run.step, k * d.world + d.rank))
        batch = collate([run.train[i] for i in idx], run.tokenizer.pad_token_id, pad_to)
        loss, _ = engine(**{key: v.to(d.device) for key, v in batch.items()})
        engine.backward(loss * (d.world / n_target), scale_wrt_gas=False)
        loss_sum += loss.detach().double().cpu()
        if k < len(mine) - 1:
            engine.step()  # not a boundary: DeepSpeed only accumulates
    totals = all_reduce_sum(torch.stack([loss_sum, torch.tensor(float(stop), dtype=torch.float64)]))
    return {
        "loss": totals[0].item() / n_target,
        "stop": totals[1].item() > 0,
        "target_tokens": n_target,
        "samples": len(global_idx),
        "input_tokens": sum(len(run.train[i].input_ids) for i in global_idx),
    }


def train_step(run: Run, stop: int = 0) -> dict:
    """One optimizer step; a non-finite loss is caught before the optimizer sees it."""
    rec = forward_backward(run, stop)
    lrs = run.engine.get_lr()
    skipped = not math.isfinite(rec["loss"])
    if skipped:
        first = run.position
        where = f"step {run.step + 1} (samples {first}..{first + rec['samples'] - 1} of the data stream)"
        if run.cfg.run.nonfinite == "stop":
            raise TrainError(
                f"non-finite loss {rec['loss']} at {where}: fix the data or lower the learning rates, "
                f"or pass --nonfinite skip"
            )
        log0(run.d, f"warning: non-finite loss {rec['loss']} at {where}: its update is discarded")
        named = list(run.model.adapter.named_parameters())
        before, adam_step = consolidated_state(run.engine, named), adam_step_count(run.engine)  # collective
        run.engine.step()  # keeps DeepSpeed's bookkeeping (and the schedule) moving
        restore_consolidated_state(run.engine, named, before, adam_step)
    else:
        run.engine.step()
    run.position += rec.pop("samples")
    run.step += 1
    grad_norm = run.engine.get_global_grad_norm()
    return {
        "loss": rec["loss"],
        "lr": lrs[0],
        "lr_offset": lrs[-1],
        "grad_norm": None if grad_norm is None else float(grad_norm),
        "target_tokens": rec["target_tokens"],
        "input_tokens": rec["input_tokens"],
        "stop": rec["stop"],
        **({"skipped": True} if skipped else {}),
    }


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(run: Run, split: str) -> dict:
    """Teacher-forced loss and the task's metrics of greedy predictions on one split, every rank
    decoding its share of the batches (infer.decode_examples). Predictions are gathered and scored
    on the main process; every rank gets the scores."""
    d, dc, data = run.d, run.cfg.data, run.data
    es = data.evals[split]
    tok = run.tokenizer
    task = TASKS.get(data.name)
    max_new = dc.max_new_tokens or (task and task.max_new_tokens) or max(e.n_target for e in es.examples)
    mine, sums = decode_examples(
        run.model, es.examples, tok.pad_token_id, tok.eos_token_id, d, dc.eval_batch_size, max_new,
        with_loss=True, desc=f"eval {split}",
    )  # fmt: skip
    ordered = gather_to_main(d, [(i, tok.decode(ids, skip_special_tokens=True).strip()) for i, ids in mine],
                             len(es.examples))  # fmt: skip
    scores = None
    if d.main:
        try:
            scores = metrics.compute(
                data.metrics, ordered, es.refs, data.labels, allow_code_execution=dc.allow_code_execution
            )
        except metrics.MetricError as exc:  # every rank must hear of it, or the others wait forever
            scores = {"error": str(exc)}
        pred_dir = run.out / "predictions"
        pred_dir.mkdir(exist_ok=True)
        with open(pred_dir / f"{split}.jsonl", "w") as f:
            for i, (text, ref) in enumerate(zip(ordered, es.refs)):
                f.write(json.dumps({"index": i, "prediction": text, **ref}) + "\n")
    scores = broadcast_object(scores)
    if "error" in scores:
        raise TrainError(f"scoring the {split} split: {scores['error']}")
    prefix = "eval" if split == "validation" else split
    return {
        "split": split,
        f"{prefix}_loss": (sums[0] / sums[1]).item(),
        f"{prefix}_examples": len(es.examples),
        **{f"{prefix}_{k}": v for k, v in scores.items()},
    }


def keep_if_best(run: Run, res: dict) -> bool:
    """Model selection: the adapter with the best validation score of the task's first metric so
    far becomes OUT/adapter (and its scores OUT/best.json). Ties keep the earlier step."""
    metric = run.data.metrics[0]
    value = res[f"eval_{metric}"]
    if run.best is not None and value <= run.best["value"]:
        return False
    run.best = {"step": run.step, "metric": metric, "value": value, "validation": res}
    run.best_state = full_fp32_state(run.model.adapter.named_parameters())  # collective
    export_adapter(run, run.out / "adapter", run.best_state, selected={k: run.best[k] for k in ("metric", "value")})
    if run.d.main:
        write_json(run.out / "best.json", run.best)
    return True


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def write_results(run: Run, test: dict | None) -> dict:
    """results.json and results.md: the selected step's validation scores and its test scores."""
    cfg, data = run.cfg, run.data

    def strip(res: dict, p: str) -> dict:
        return {k[len(p) + 1 :]: v for k, v in res.items() if k.startswith(p + "_") and k != f"{p}_metric"}

    results = {
        "task": data.name if data.name != "files" else cfg.data.train_file or "builtin",
        "method": cfg.adapter.method,
        "seed": cfg.optim.seed,
        "model": run.base_model,
        "k_shot": cfg.data.k_shot,
        "max_steps": cfg.optim.max_steps,
        "trainable_parameters": sum(getattr(p, "ds_numel", p.numel()) for p in run.model.adapter.parameters()),
        "metrics": list(data.metrics),
        "selection": {"metric": data.metrics[0], "step": run.best["step"]} if run.best else None,
        "validation": strip(run.best["validation"], "eval") if run.best else None,
        "test": strip(test, "test") if test else None,
        "data": data.info,
    }
    if run.d.main:
        write_json(run.out / "results.json", results)
        head = ["task", "method", "seed", "best step"]
        row = [str(results["task"]), results["method"], str(results["seed"]), str(run.best and run.best["step"])]
        for split in ("validation", "test"):
            for m in data.metrics:
                if results[split] is not None:
                    head.append(f"{split} {m}")
                    row.append(f"{results[split][m]:.2f}")
        table = "| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n| " + " | ".join(row) + " |\n"
        (run.out / "results.md").write_text(table)
    return results


# ----------------------------------------------------------------------------- save
def save_checkpoint(run: Run) -> None:
    dc = run.cfg.data
    meta = {
        "step": run.step,
        "position": run.position,
        "world": run.d.world,
        "global_batch": dc.micro_batch_size * dc.grad_accum * run.d.world,
    }
    root = run.out / checkpoint.CKPT_DIR
    checkpoint.save(
        run.engine, list(run.model.adapter.named_parameters()), root, meta, run.cfg.run.keep_checkpoints, run.d.main
    )


def portable_model_name(name: str) -> str:
    """A local model folder as an absolute path (the adapter is used from other folders); a hub id
    and "builtin" as they are."""
    path = Path(name).expanduser()
    return str(path.resolve()) if name != "builtin" and path.exists() else name


def export_adapter(run: Run, out_dir: Path, state: dict | None = None, **more) -> None:
    """Write the adapter (the current weights, or `state`); collective when `state` is None."""
    adapter = run.model.adapter
    state = state if state is not None else full_fp32_state(adapter.named_parameters())
    if run.d.main:
        extra = {
            "base_model": portable_model_name(run.base_model),
            "task": run.cfg.data.task,
            "compute_dtype": run.cfg.model.compute_dtype,
            "quant": run.cfg.model.quant,
            "vocab_size": run.model.backbone.config.vocab_size,
            "separator": run.cfg.data.separator,
            "max_length": run.cfg.data.max_length,
            "step": run.step,
            **more,
        }
        cfg = adapter_config(adapter, **extra)
        cfg["parameter_count"] = sum(v.numel() for v in state.values())  # ZeRO-3 local numel is 0
        save_adapter(out_dir, state, cfg)
    dist.barrier()


# ----------------------------------------------------------------------------- loop
def train(run: Run) -> dict:
    cfg, d = run.cfg, run.d
    rc = cfg.run
    total = cfg.optim.max_steps
    stop = StopRequest()
    run.engine.train()
    bar = tqdm(total=total, initial=run.step, disable=not d.main, desc="train", dynamic_ncols=True)
    window_tokens, window_start = 0, time.perf_counter()
    last: dict = {}
    has_val = "validation" in run.data.evals
    while run.step < total:
        rec = train_step(run, stop.signum)
        stopping = rec.pop("stop")
        window_tokens += rec["input_tokens"]
        bar.update(1)
        bar.set_postfix(loss=f"{rec['loss']:.4f}")
        if run.step % rc.log_every == 0 or run.step == total:
            elapsed = time.perf_counter() - window_start
            last = {"step": run.step, **rec, "tokens_per_s": window_tokens / max(elapsed, 1e-9)}
            run.metrics.write(last)
            window_tokens, window_start = 0, time.perf_counter()
        if has_val and rc.eval_every and run.step % rc.eval_every == 0 and run.step != total:
            validate(run)
        if stopping:
            save_checkpoint(run)
            bar.close()
            log0(d, f"stopped by a signal after step {run.step}: checkpoint saved, continue with --resume")
            return {"stopped": True, "step": run.step}
        if run.step % rc.save_every == 0 and run.step != total:
            save_checkpoint(run)
    bar.close()
    final = dict(last)
    if has_val:
        final.update(validate(run))
    if run.step > 0:  # --max_steps 0 only evaluates: nothing to resume
        save_checkpoint(run)
    if not has_val:  # nothing to select by: the adapter is the last one
        export_adapter(run, run.out / "adapter")
    log0(d, f"adapter written to {run.out / 'adapter'}" + (f" (step {run.best['step']})" if run.best else ""))
    test = None
    if "test" in run.data.evals:
        if run.best_state is not None:
            set_full_weights(run.model.adapter.named_parameters(), run.best_state)  # collective
        test = {"step": run.best["step"] if run.best else run.step, **evaluate(run, "test")}
        run.metrics.write(test)
        log0(d, "test (selected adapter): " + describe(test, "test"))
        final.update(test)
    if has_val or test:
        results = write_results(run, test)
        log0(d, f"results written to {run.out / 'results.json'} and results.md")
        final["results"] = results
    return final


def describe(res: dict, prefix: str) -> str:
    return ", ".join(
        f"{k[len(prefix) + 1 :]} {v:.4g}"
        for k, v in res.items()
        if k.startswith(prefix + "_") and not isinstance(v, str)
    )


def validate(run: Run) -> dict:
    """Evaluate on the validation split, log it, and keep the adapter if it is the best so far."""
    res = {"step": run.step, **evaluate(run, "validation")}
    res["eval_metric"] = run.data.metrics[0]
    run.metrics.write(res)
    best = keep_if_best(run, res)
    log0(run.d, f"step {run.step} validation: {describe(res, 'eval')}" + (" (best so far)" if best else ""))
    return res
