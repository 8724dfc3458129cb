"""Evaluation: rank-sharded batched decoding (which predict.py uses too), a split's loss and
metrics, and model selection by validation (the files it keeps: artifacts.py).

Batches are cut from the examples sorted by length and dealt round-robin to the ranks, so every
batch, and so every prediction (sampled ones too: each batch draws from its own seeded
generator), is the same at any number of ranks. Under ZeRO-3 every forward is collective: all
ranks run the same number of rounds (a rank out of examples runs a dummy batch) and stop
generating together.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from adept_dist.common.fileio import write_jsonl
from adept_dist.common.progress import Progress
from adept_dist.data import metrics
from adept_dist.data.examples import ENCODING, Example, Joiner, collate
from adept_dist.data.tasks import find_task
from adept_dist.distributed.comm import Dist, all_reduce_sum
from adept_dist.distributed.zero import full_fp32_state, set_full_weights
from adept_dist.model.adapters import IGNORE_INDEX
from adept_dist.model.lm import AdeptLM, Sampling
from adept_dist.run.artifacts import write_best
from adept_dist.run.context import Run, TrainError, log0, on_main


# ----------------------------------------------------------------------------- decoding, any world size
def rank_batches(examples: list[Example], batch_size: int, world: int, rank: int):
    """This rank's (global batch number, example indices) and the rounds every rank runs."""
    order = sorted(range(len(examples)), key=lambda i: (len(examples[i].input_ids), i))
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    return list(enumerate(batches))[rank::world], math.ceil(len(batches) / world)


def batch_generator(seed: int, batch_number: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + batch_number) % (2**63))


def over_batches(model: AdeptLM, examples: list[Example], pad_id: int, d: Dist, batch_size: int, with_loss: bool,
                 desc: str, step, share_prompt: bool = True) -> tuple[list, torch.Tensor]:  # fmt: skip
    """The round loop of generation and ranking: the model in eval mode, the soft prompt's keys and
    values computed once (the adapter does not change here; `share_prompt=False`: none), then this
    rank's share of the length-sorted batches, with a dummy batch in the rounds where only other ranks
    still have one (every forward is collective under ZeRO-3). `step(number, idx, real, sources,
    prompt_kv)` scores one batch and returns its [(example index, result)]; the teacher-forced (loss,
    tokens) of the targets is summed over all ranks when `with_loss`."""
    mine, rounds = rank_batches(examples, batch_size, d.world, d.rank)
    was_training = model.training
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64)
    out: list = []
    bar = Progress(rounds, desc, enabled=d.main, nested=True)
    prompt_kv = model.prompt_kv(d.device) if share_prompt else None
    for r in range(rounds):
        real = r < len(mine)
        number, idx = mine[r] if real else (0, [0])
        if with_loss:
            sums += target_loss(model, examples, idx, pad_id, d, real)
        rows = step(number, idx, real, sources_batch(examples, idx, pad_id), prompt_kv)
        if real:
            out += rows
        bar.update(1)
    bar.close()
    if with_loss:
        all_reduce_sum(sums)
    model.train(was_training)
    return out, sums


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
    share_prompt: bool = True,
) -> tuple[list[tuple[int, list[int]]], torch.Tensor]:
    """Generate after each example's source (its first `source_len` ids) on this rank's share.

    Returns [(example index, generated ids up to EOS)] of this rank, and (summed target loss, target
    tokens) over all ranks when `with_loss` (teacher-forced on the examples' targets). The soft
    prompt's keys and values are computed once for all batches (`share_prompt=False`: in every row,
    the reference path)."""

    def finished(done: torch.Tensor, real: bool) -> bool:  # every rank's batch has ended
        if d.world == 1:
            return bool(done.all())
        flag = torch.tensor([0.0 if (done.all() or not real) else 1.0], dtype=torch.float64)
        return all_reduce_sum(flag).item() == 0

    def step(number: int, idx: list[int], real: bool, src: dict, prompt_kv) -> list[tuple[int, list[int]]]:
        gen = model.generate(
            src["input_ids"].to(d.device),
            src["attention_mask"].to(d.device),
            max_new_tokens,
            eos_id,
            finished=lambda done: finished(done, real),
            sampling=sampling,
            generator=batch_generator(seed, number),
            prompt_kv=prompt_kv,
            share_prompt=share_prompt,
        )
        return [(i, ids[: ids.index(eos_id)] if eos_id in ids else ids) for i, ids in zip(idx, gen.tolist())]

    return over_batches(model, examples, pad_id, d, batch_size, with_loss, desc, step, share_prompt)


def target_loss(model: AdeptLM, examples: list[Example], idx: list[int], pad_id: int, d: Dist,
                real: bool) -> torch.Tensor:  # fmt: skip
    """(summed teacher-forced loss on the targets, target tokens) of a batch; zeros for a dummy one
    (which still runs its forward: collective under ZeRO-3)."""
    batch = collate([examples[i] for i in idx], pad_id, None)
    if not real:
        batch["labels"].fill_(IGNORE_INDEX)
    loss, ntok = model(**{k: v.to(d.device) for k, v in batch.items()})
    return torch.stack([loss.double().cpu(), ntok.double().cpu()]) if real else torch.zeros(2, dtype=torch.float64)


def sources_batch(examples: list[Example], idx: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    """The examples' sources (their ids before the target), left-padded."""
    return collate(
        [Example(examples[i].input_ids[: examples[i].source_len], 0, 0) for i in idx], pad_id, None, left=True
    )


@torch.no_grad()
def rank_examples(model: AdeptLM, examples: list[Example], options: list[list[list[int]]], pad_id: int, d: Dist,
                  batch_size: int, with_loss: bool = False, desc: str = "rank") -> tuple[list, torch.Tensor]:  # fmt: skip
    """Each example's options scored (AdeptLM.option_logprobs) on this rank's share of the batches
    (the same batches as decode_examples): [(example index, [(summed log-prob, tokens) per option])]
    of this rank, and the teacher-forced (loss, tokens) over all ranks when `with_loss`.

    When every example's target (its ids + EOS) is one of its options, as for every split that rank
    mode scores, that loss is read off the target's own score (the same tokens after the same prompt
    and source: tests/test_rank.py checks it against the teacher-forced forward) instead of a
    forward over prompt, source and target per batch, which cost several times the ranking itself."""
    targets = [e.input_ids[len(e.input_ids) - e.n_target :] for e in examples]
    from_scores = with_loss and all(t in opts for t, opts in zip(targets, options))  # the same on every rank

    def step(number: int, idx: list[int], real: bool, src: dict, prompt_kv) -> list:
        scored = model.option_logprobs(src["input_ids"].to(d.device), src["attention_mask"].to(d.device),
                                       [options[i] for i in idx], prompt_kv=prompt_kv)  # fmt: skip
        return list(zip(idx, scored))

    out, sums = over_batches(model, examples, pad_id, d, batch_size, with_loss and not from_scores, desc, step)
    if from_scores:
        for i, scored in out:
            logprob, tokens = scored[options[i].index(targets[i])]
            sums += torch.tensor([-logprob, tokens], dtype=torch.float64)
        all_reduce_sum(sums)
    return out, sums


MAX_OPTIONS = 50  # own data without listed options: its distinct targets are the options when this few


def options_of(data, split: str) -> list[list[str]] | None:
    """Each example's answer options for --eval_mode rank: its own (a BIG-bench multiple-choice
    example, a data row's "options"), else the task's label words, else (own data) the split's
    distinct targets when there are at most MAX_OPTIONS; None where the answers are free text."""
    refs = data.evals[split].refs
    if all("options" in r for r in refs):
        return [list(r["options"]) for r in refs]
    if data.labels:
        return [list(data.labels)] * len(refs)
    distinct = sorted({r["target"] for r in refs})
    if data.name == "files" and len(distinct) <= MAX_OPTIONS:
        return [distinct] * len(refs)
    return None


def option_ids(tokenizer, separator: str, options: list[list[str]], encoding: int = ENCODING) -> list[list[list[int]]]:
    """The options' token ids as a target's (after `separator`, data.examples.Joiner), EOS last."""
    joiner, eos, known = Joiner(tokenizer, separator, encoding), tokenizer.eos_token_id, {}
    for opts in options:
        key = tuple(opts)
        if key not in known:
            known[key] = [ids + [eos] for ids in joiner.targets(list(opts))]
    return [known[tuple(opts)] for opts in options]


def choose(options: list[str], scored: list[tuple[float, int]], rank_by: str) -> tuple[str, dict[str, float]]:
    """The top option (the first of equals) and every option's score (sum or per-token mean)."""
    values = [s if rank_by == "sum" else s / n for s, n in scored]
    best = max(range(len(values)), key=lambda k: (values[k], -k))
    return options[best], {o: round(v, 6) for o, v in zip(options, values)}


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


def source_text(tokenizer, e: Example) -> str:
    """The text the model read before its answer: the task's formatting and the separator included,
    cut as it was to max_length."""
    return tokenizer.decode(e.input_ids[: e.source_len], skip_special_tokens=True)


# ----------------------------------------------------------------------------- a run's evaluation
@torch.no_grad()
def evaluate(run: Run, split: str) -> dict:
    """Teacher-forced loss and the task's metrics of greedy predictions on one split, every rank
    decoding its share of the batches (decode_examples). Predictions are gathered and scored
    on the main process; every rank gets the scores."""
    d, dc, data = run.d, run.cfg.data, run.data
    es = data.evals[split]
    tok = run.tokenizer
    task = find_task(data.name)
    option_scores = None
    if dc.eval_mode == "rank":
        texts = options_of(data, split)
        ids = option_ids(tok, dc.separator, texts)
        mine, sums = rank_examples(run.model, es.examples, ids, tok.pad_token_id, d, dc.eval_batch_size,
                                   with_loss=True, desc=f"rank {split}")  # fmt: skip
        gathered = gather_to_main(d, mine, len(es.examples))
        if d.main:
            picked = [choose(opts, s, dc.rank_by) for opts, s in zip(texts, gathered)]
            ordered, option_scores = [p for p, _ in picked], [s for _, s in picked]
        else:
            ordered = None
    else:
        max_new = dc.max_new_tokens or (task and task.max_new_tokens) or max(e.n_target for e in es.examples)
        mine, sums = decode_examples(
            run.model, es.examples, tok.pad_token_id, tok.eos_token_id, d, dc.eval_batch_size, max_new,
            with_loss=True, desc=f"eval {split}",
        )  # fmt: skip
        ordered = gather_to_main(d, [(i, tok.decode(ids, skip_special_tokens=True).strip()) for i, ids in mine],
                                 len(es.examples))  # fmt: skip

    def score_and_write() -> dict:
        try:
            scored = metrics.score(
                data.metrics, ordered, es.refs, data.labels, allow_code_execution=dc.allow_code_execution
            )
        except metrics.MetricError as exc:
            raise TrainError(f"scoring the {split} split: {exc}") from None
        pred_dir = run.out / "predictions"
        rows = [  # each row's own scores kept, so two runs on the same rows can be paired later
            {"index": i, "input": source_text(tok, e), "prediction": text, **ref,
             "scores": {m: per[i] for m, per in scored.rows.items()},
             **({"option_scores": option_scores[i]} if option_scores else {})}
            for i, (e, text, ref) in enumerate(zip(es.examples, ordered, es.refs))
        ]  # fmt: skip
        pred_dir.mkdir(exist_ok=True)
        write_jsonl(pred_dir / f"{split}.jsonl", rows, ensure_ascii=True)
        return {"values": scored.values, "intervals": scored.intervals, "interval_method": scored.interval_method}

    scored = on_main(d, score_and_write, f"the {split} predictions", run.out / "predictions",
                     "earlier files are intact", returns=True)  # fmt: skip
    prefix = "eval" if split == "validation" else split
    return {
        "split": split,
        f"{prefix}_loss": (sums[0] / sums[1]).item(),
        f"{prefix}_examples": len(es.examples),
        **{f"{prefix}_{k}": v for k, v in scored["values"].items()},
        f"{prefix}_intervals": scored["intervals"],  # {metric: [low, high]}, 95%, data/stats.py
        f"{prefix}_interval_method": scored["interval_method"],
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
    write_best(run)
    return True


def describe(res: dict, prefix: str) -> str:
    """The numbers of a split's result for a log line, each metric with its 95% interval."""
    intervals = res.get(f"{prefix}_intervals", {})

    def shown(name: str, value: float) -> str:
        low_high = intervals.get(name)
        return f"{name} {value:.4g}" + (f" [{low_high[0]:.3g}, {low_high[1]:.3g}]" if low_high else "")

    return ", ".join(
        shown(k[len(prefix) + 1 :], v)
        for k, v in res.items()
        if k.startswith(prefix + "_") and isinstance(v, int | float)
    )


def score_test(run: Run) -> dict:
    """The selected adapter (the best by validation, else the last) on the test split, logged."""
    if run.best_state is not None:
        set_full_weights(run.model.adapter.named_parameters(), run.best_state)  # collective
    test = {"step": run.best["step"] if run.best else run.step, **evaluate(run, "test")}
    run.metrics.write(test)
    log0(run.d, "test (selected adapter): " + describe(test, "test"))
    return test


def run_validation(run: Run) -> dict:
    """Evaluate on the validation split, log it, and keep the adapter if it is the best so far."""
    res = {"step": run.step, **evaluate(run, "validation")}
    res["eval_metric"] = run.data.metrics[0]
    run.metrics.write(res)
    best = keep_if_best(run, res)
    log0(run.d, f"step {run.step} validation: {describe(res, 'eval')}" + (" (best so far)" if best else ""))
    return res
