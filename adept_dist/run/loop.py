"""The train step and the loop. A `Run` comes whole from `build.build`; evaluation, checkpoints
and exports are called from here but live in their own modules.

Loss normalisation: each micro-batch contributes (sum of target-token losses) * world / N, where
N is the number of target tokens in the whole optimizer step (all ranks, all micro-batches);
DeepSpeed averages gradients over ranks, so the step's gradient is exactly that of the mean
token loss of the global batch. N is known on every rank without communication because the data
order is a deterministic function of (seed, position).
"""

from __future__ import annotations

import math
import signal
import time

import torch

from adept_dist.common import lock
from adept_dist.common.progress import Progress, duration
from adept_dist.config.options import CONFIG_FILE
from adept_dist.data.examples import collate, pack, step_batches
from adept_dist.distributed import traffic
from adept_dist.distributed.comm import all_reduce_sum
from adept_dist.distributed.zero import (
    adam_step_count,
    consolidated_state,
    full_grads,
    full_numel,
    restore_consolidated_state,
    scale_grads,
    total_norm,
)
from adept_dist.run.artifacts import export_adapter, mark_finished, write_results, write_traffic
from adept_dist.run.checkpoint import save_checkpoint
from adept_dist.run.context import Run, TrainError, log0, on_main
from adept_dist.run.evaluation import run_validation, score_test


# ----------------------------------------------------------------------------- train step
class StopRequest:
    """SIGUSR1 (SLURM's warning before a time limit or preemption), SIGTERM, SIGHUP (the terminal
    closed) or a first SIGINT (Ctrl-C; a second one interrupts at once) asks the run to finish the
    current step, save and exit. Ranks agree through the step's loss all-reduce, so a signal that
    reached one rank only stops all of them at the same step. A rank whose launcher has ended sends
    itself SIGTERM (watchdog.py)."""

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGHUP, signal.SIGINT)

    def __init__(self) -> None:
        self.signum = 0
        for s in self.SIGNALS:
            signal.signal(s, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # the next Ctrl-C: KeyboardInterrupt now
        self.signum = self.signum or signum


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
    n_target = sum(run.train_examples[i].n_target for i in global_idx)  # N of the step, identical on every rank
    loss_sum = torch.zeros((), dtype=torch.float64)
    for k, idx in enumerate(mine):
        torch.manual_seed(slot_seed(cfg.optim.seed, run.step, k * d.world + d.rank))
        examples = [run.train_examples[i] for i in idx]
        if dc.packing:
            batch = pack(examples, cfg.adapter.prompt_length, dc.pack_tokens)
        else:
            batch = collate(examples, run.tokenizer.pad_token_id, pad_to)
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
        "input_tokens": sum(len(run.train_examples[i].input_ids) for i in global_idx),
    }


def nonfinite(loss: float, grad_norm: float) -> str | None:
    """What is NaN/inf before the optimizer steps: the loss, else the norm of the reduced adapter
    gradients (a finite loss can still overflow in backward). None when both are finite."""
    if not math.isfinite(loss):
        return f"loss {loss}"
    return None if math.isfinite(grad_norm) else f"gradient norm {grad_norm}"


def clip_factor(grad_norm: float, max_norm: float) -> float | None:
    """The factor that brings the gradient to `max_norm` (as torch.nn.utils.clip_grad_norm_), or None
    when it is within it or clipping is off (max_norm 0)."""
    if max_norm <= 0:
        return None
    factor = max_norm / (grad_norm + 1e-6)
    return factor if factor < 1.0 else None


def train_step(run: Run, stop: int = 0) -> dict:
    """One optimizer step; a non-finite loss or gradient norm is caught before the optimizer sees it.
    Everything it sends and receives is counted (traffic.COUNTER)."""
    with traffic.COUNTER.counting():
        return _train_step(run, stop)


def _train_step(run: Run, stop: int) -> dict:
    rec = forward_backward(run, stop)
    lrs = run.engine.get_lr()
    params = list(run.model.adapter.parameters())
    grads = full_grads(params)  # collective; the same at any number of ranks
    grad_norm = total_norm(grads)
    bad = nonfinite(rec["loss"], grad_norm)
    skipped = bad is not None
    if skipped:
        first = run.position
        where = f"step {run.step + 1} (samples {first}..{first + rec['samples'] - 1} of the data stream)"
        if run.cfg.run.nonfinite == "stop":
            raise TrainError(
                f"non-finite {bad} at {where}: fix the data or lower the learning rates, or pass --nonfinite skip"
            )
        log0(run.d, f"warning: non-finite {bad} at {where}: its update is discarded")
        named = list(run.model.adapter.named_parameters())
        before, adam_step = consolidated_state(run.engine, named), adam_step_count(run.engine)  # collective
        run.engine.step()  # keeps DeepSpeed's bookkeeping (and the schedule) moving
        restore_consolidated_state(run.engine, named, before, adam_step)
    else:
        if (factor := clip_factor(grad_norm, run.cfg.optim.grad_clip)) is not None:
            scale_grads(params, grads, factor)  # DeepSpeed's own clipping is off (zero.build_engine)
        run.engine.step()
    run.position += rec.pop("samples")
    run.step += 1
    return {
        "loss": rec["loss"],
        "lr": lrs[0],
        "lr_offset": lrs[-1],
        "grad_norm": grad_norm,  # before clipping
        "target_tokens": rec["target_tokens"],
        "input_tokens": rec["input_tokens"],
        "stop": rec["stop"],
        **({"skipped": True} if skipped else {}),
    }


# ----------------------------------------------------------------------------- loop
def train(run: Run) -> dict:
    try:
        return train_loop(run)
    finally:
        run.metrics.close()  # the trackers' last records flushed, on any way out


def train_loop(run: Run) -> dict:
    cfg, d = run.cfg, run.d
    rc = cfg.run
    total = cfg.optim.max_steps
    stop = StopRequest()
    run.engine.train()
    bar = Progress(total, "train", enabled=d.main, initial=run.step)
    first = run.step + 1
    window_tokens, window_start, window_steps, steps_done = 0, time.perf_counter(), 0, 0
    traffic.COUNTER.reset()
    adapter_bytes = 4 * sum(full_numel(p) for p in run.model.adapter.parameters())  # fp32
    last: dict = {}
    has_val = "validation" in run.data.evals
    while run.step < total:
        rec = train_step(run, stop.signum)
        stopping = rec.pop("stop")
        window_tokens += rec["input_tokens"]
        window_steps += 1
        steps_done += 1
        bar.update(1, loss=f"{rec['loss']:.4f}")
        if run.step == first and run.step < total and bar.first_s is not None:
            log0(d, f"step {run.step} took {duration(bar.first_s)}: the {total - run.step} steps left need about "
                    f"{duration(bar.first_s * (total - run.step))} (evaluations not included)")  # fmt: skip
        if run.step % rc.log_every == 0 or run.step == total:
            elapsed = time.perf_counter() - window_start
            report = traffic.gather_report(traffic.COUNTER, window_steps, adapter_bytes)  # collective
            last = {"step": run.step, **rec, "tokens_per_s": window_tokens / max(elapsed, 1e-9),
                    **traffic.headline(report), "traffic": report}  # fmt: skip
            run.metrics.write(last)
            traffic.COUNTER.reset()
            window_tokens, window_start, window_steps = 0, time.perf_counter(), 0
        if has_val and rc.eval_every and run.step % rc.eval_every == 0 and run.step != total:
            run_validation(run)
        if stopping:
            write_traffic(run, steps_done, adapter_bytes)
            checkpoint(run)
            bar.close()
            log0(d, f"stopped by a signal after step {run.step}: checkpoint saved, continue with --resume")
            return {"stopped": True, "step": run.step}
        if run.step % rc.save_every == 0 and run.step != total:
            checkpoint(run)
    bar.close()
    final = dict(last)
    if steps_done:
        final["traffic"] = write_traffic(run, steps_done, adapter_bytes)
    if has_val:
        final.update(run_validation(run))
    if run.step > 0:  # --max_steps 0 only evaluates: nothing to resume
        checkpoint(run)
    if not has_val:  # nothing to select by: the adapter is the last one
        export_adapter(run, run.out / "adapter")
    log0(d, f"adapter written to {run.out / 'adapter'}" + (f" (step {run.best['step']})" if run.best else ""))
    test = score_test(run) if "test" in run.data.evals else None
    if test:
        final.update(test)
    if has_val or test:
        results = write_results(run, test)
        log0(d, f"results written to {run.out / 'results.json'} and results.md")
        final["results"] = results
    on_main(
        d, lambda: mark_finished(run), CONFIG_FILE, run.out, "the run's adapter, results and checkpoints are intact"
    )
    return final


def checkpoint(run: Run) -> None:
    """A resume checkpoint (collective), unless another job has taken the run folder's lock over."""
    on_main(run.d, lambda: lock.check_held(run.out))
    save_checkpoint(run)
