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

from . import builtin, checkpoint
from .adapters import PromptAdapter, build_adapter
from .backbone import DTYPES, load_backbone, load_config, load_tokenizer
from .config import Config, ConfigError
from .data import Example, SampleStream, collate, encode, read_rows, step_batches
from .dist import (
    Dist,
    adam_step_count,
    all_reduce_sum,
    build_engine,
    consolidated_state,
    full_fp32_state,
    gathered,
    resolve_ds_config,
    restore_consolidated_state,
)
from .export import adapter_config, save_adapter
from .model import AdeptLM


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
    train: list[Example]
    eval: list[Example] | None
    eval_targets: list[str] | None
    model: AdeptLM
    engine: object = None
    base_model: str = ""
    step: int = 0
    position: int = 0
    stream: SampleStream | None = None
    metrics: MetricsLog | None = None


def build(cfg: Config, d: Dist) -> Run:
    if cfg.model.compute_dtype == "auto":  # CPUs without bf16 units run bf16 matmuls ~18x slower than fp32
        cfg.model.compute_dtype = "fp32" if d.device.type == "cpu" else "bf16"
    out = Path(cfg.run.output_dir)
    check_output_dir(out, cfg.run.resume)
    dist.barrier()  # every rank has looked before the main one writes
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")

    model_name, train_file, eval_file = cfg.model.model, cfg.data.train_file, cfg.data.eval_file
    if model_name is None or train_file is None:
        if d.local_rank == 0:
            root = builtin.ensure_builtin(log=lambda s: log0(d, s) if d.main else None)
        dist.barrier()
        root = builtin.builtin_dir()
        model_name = model_name or str(root / "model")
        if train_file is None:
            train_file, eval_file = str(root / "train.jsonl"), str(root / "dev.jsonl")

    load_config(model_name)  # refuse a missing or non-decoder model before reading any data
    if not d.main:  # one progress bar per job, not per rank
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    tokenizer = load_tokenizer(model_name)
    dc = cfg.data
    train_rows = read_rows(train_file)
    train, n_trunc = encode(train_rows, tokenizer, dc.max_length, dc.separator, train_file)
    log0(d, f"train: {len(train)} rows from {train_file}, {n_trunc} inputs truncated to fit max_length={dc.max_length}")
    evals, targets = None, None
    if eval_file is not None:
        rows = read_rows(eval_file)[: dc.max_eval_samples]
        evals, n_trunc = encode(rows, tokenizer, dc.max_length, dc.separator, eval_file)
        targets = [r["target"].strip() for r in rows]
        log0(d, f"eval: {len(evals)} rows from {eval_file}, {n_trunc} inputs truncated")

    backbone = load_backbone(
        model_name,
        cfg.model.quant,
        d.device,
        cfg.model.attn_implementation,
        cfg.model.activation_checkpointing,
        DTYPES[cfg.model.compute_dtype],
    )
    a = cfg.adapter
    hidden = backbone.config.hidden_size
    torch.manual_seed(cfg.optim.seed)  # identical adapter init on every rank
    adapter = build_adapter(a.method, a.prompt_length, hidden, a.offset_rank, dc.max_length, a.dropout)
    adapter.init_prompt(prompt_init_rows(cfg, backbone.get_input_embeddings(), tokenizer, a.prompt_length))
    adapter.to(d.device)
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
        train,
        evals,
        targets,
        model,
        base_model=cfg.model.model or "builtin",
        stream=SampleStream(len(train), cfg.optim.seed),
    )


def setup_engine(run: Run) -> None:
    cfg, d = run.cfg, run.d
    o = cfg.optim
    ds_config = resolve_ds_config(cfg.run.ds_config, cfg, d.world)
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
def evaluate(run: Run) -> dict:
    """Teacher-forced loss and greedy exact match on the eval set; every rank takes a shard and
    runs the same number of batches (ZeRO-3 forwards are collective), results are summed."""
    d, dc = run.d, run.cfg.data
    model, tok = run.model, run.tokenizer
    n = len(run.eval)
    per_rank = math.ceil(n / d.world)
    mine = list(range(d.rank, n, d.world))
    valid = [1] * len(mine) + [0] * (per_rank - len(mine))
    mine += [mine[-1] if mine else 0] * (per_rank - len(mine))
    max_new = min(dc.max_new_tokens, max(e.n_target for e in run.eval))
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64)  # loss, target tokens, correct, examples
    preds: list[tuple[int, str]] = []
    for s in range(0, per_rank, dc.eval_batch_size):
        idx, w = mine[s : s + dc.eval_batch_size], valid[s : s + dc.eval_batch_size]
        batch = collate([run.eval[i] for i in idx], tok.pad_token_id, None)
        wt = torch.tensor(w, dtype=torch.bool)
        batch["labels"][~wt] = -100
        loss, ntok = model(**{k: v.to(d.device) for k, v in batch.items()})
        sources = [Example(run.eval[i].input_ids[: run.eval[i].source_len], 0, run.eval[i].source_len) for i in idx]
        src = collate(sources, tok.pad_token_id, None, left=True)
        gen = model.generate(
            src["input_ids"].to(d.device), src["attention_mask"].to(d.device), max_new, tok.eos_token_id
        )
        for i, ok, ids in zip(idx, w, gen.tolist()):
            if not ok:
                continue
            ids = ids[: ids.index(tok.eos_token_id)] if tok.eos_token_id in ids else ids
            text = tok.decode(ids, skip_special_tokens=True).strip()
            preds.append((i, text))
            sums[2] += float(text == run.eval_targets[i])
        sums[0] += loss.double().cpu()
        sums[1] += ntok.double().cpu()
        sums[3] += sum(w)
    all_reduce_sum(sums)
    gathered_preds: list = [None] * d.world
    dist.all_gather_object(gathered_preds, preds)
    if d.main:
        rows = sorted(p for part in gathered_preds for p in part)
        with open(run.out / "eval_predictions.jsonl", "w") as f:
            for i, text in rows:
                f.write(json.dumps({"index": i, "prediction": text, "target": run.eval_targets[i]}) + "\n")
    model.train(was_training)
    return {
        "eval_loss": (sums[0] / sums[1]).item(),
        "eval_exact_match": (sums[2] / sums[3]).item(),
        "eval_examples": int(sums[3]),
    }


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


def export_adapter(run: Run, out_dir: Path) -> None:
    adapter = run.model.adapter
    state = full_fp32_state(adapter.named_parameters())  # collective
    if run.d.main:
        extra = {
            "base_model": run.base_model,
            "compute_dtype": run.cfg.model.compute_dtype,
            "quant": run.cfg.model.quant,
            "vocab_size": run.model.backbone.config.vocab_size,
            "separator": run.cfg.data.separator,
            "max_length": run.cfg.data.max_length,
            "step": run.step,
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
        if run.eval is not None and rc.eval_every and run.step % rc.eval_every == 0 and run.step != total:
            res = {"step": run.step, **evaluate(run)}
            run.metrics.write(res)
            log0(d, f"step {run.step}: " + ", ".join(f"{k}={v:.4f}" for k, v in res.items() if isinstance(v, float)))
        if stopping:
            save_checkpoint(run)
            bar.close()
            log0(d, f"stopped by a signal after step {run.step}: checkpoint saved, continue with --resume")
            return {"stopped": True, "step": run.step}
        if run.step % rc.save_every == 0 and run.step != total:
            save_checkpoint(run)
    bar.close()
    final = dict(last)
    if run.eval is not None:
        res = {"step": run.step, **evaluate(run)}
        run.metrics.write(res)
        final.update(res)
        log0(d, f"final eval: exact match {res['eval_exact_match']:.3f}, loss {res['eval_loss']:.4f}")
    save_checkpoint(run)
    export_adapter(run, run.out / "adapter")
    log0(d, f"adapter written to {run.out / 'adapter'}")
    return final
