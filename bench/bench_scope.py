"""Sharding scopes side by side: the real trainer on N ranks standing in for several nodes
(--ranks_per_node), each scope in a fresh job, in turn (A B A B ...), for --rounds rounds.

    python bench/bench_scope.py                        # 4 ranks as 2 nodes x 2, global vs node
    python bench/bench_scope.py --scopes global node none --json scope.json

Per scope: step time and tokens/s (median over rounds, steps after the first window only), and from
the run's traffic.json the bytes each rank received per optimizer step inside its node and from other
nodes (the most of any rank), against the adapter's fp32 size; each round's step-time ratio to the
first scope, and its median. The model is a random LLaMA (bench/bench.py's), saved once.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scopes", nargs="+", default=["global", "node"], choices=["global", "node", "none"])
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--ranks_per_node", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=6, help="steps per job; the first third are warm-up")
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=2752)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv_heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--micro_batch", type=int, default=2)
    p.add_argument("--min_len", type=int, default=32)
    p.add_argument("--max_len", type=int, default=96)
    p.add_argument("--examples", type=int, default=256)
    p.add_argument("--workdir", default=None, help="keep (and reuse) the model here")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def run_scope(args, root: Path, scope: str, out: Path) -> dict:
    import tempfile as tf

    ds = json.loads((REPO / "ds_configs" / "zero3.json").read_text())
    ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    cfg = root / "zero3.json"
    cfg.write_text(json.dumps(ds))
    from adept_dist.distributed.comm import free_port

    log_every = max(1, args.steps // 3)
    cmd = [str(Path(sys.executable).with_name("deepspeed")), "--num_gpus", str(args.ranks), "--master_port",
           str(free_port()), str(REPO / "launch" / "train.py"), "--model", str(root / "model"), "--train_file",
           str(root / "train.jsonl"), "--ds_config", str(cfg), "--output_dir", str(out), "--max_steps",
           str(args.steps), "--log_every", str(log_every), "--micro_batch_size", str(args.micro_batch),
           "--max_length", str(args.max_len), "--shard_scope", scope, "--ranks_per_node", str(args.ranks_per_node),
           "--save_every", str(10**6), "--dropout", "0"]  # fmt: skip
    with tf.TemporaryFile("w+") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env={**__import__("os").environ,
                              "DS_ACCELERATOR": "cpu"}, cwd=REPO)  # fmt: skip
        if proc.returncode:
            log.seek(0)
            sys.exit(f"error: the {scope} job failed:\n{log.read()[-3000:]}")
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in ln]
    later = lines[1:] or lines
    t = json.loads((out / "traffic.json").read_text())
    tokens_per_s = statistics.median(r["tokens_per_s"] for r in later)
    return {
        "tokens_per_s": tokens_per_s,
        "losses": [r["loss"] for r in lines],
        "adapter_bytes": t["adapter_bytes"],
        "intra_node_bytes_per_step": max(r["intra_node_bytes_per_step"] for r in t["ranks"]),
        "inter_node_bytes_per_step": max(r["inter_node_bytes_per_step"] for r in t["ranks"]),
    }


def main(argv=None) -> int:
    args = parse(argv)
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench", Path(__file__).resolve().with_name("bench.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)  # bench/bench.py's random LLaMA and data
    make_inputs = bench.make_inputs

    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench_scope_"))
    root.mkdir(parents=True, exist_ok=True)
    model_args = argparse.Namespace(**{**vars(args), "max_len": args.max_len})
    make_inputs(model_args, root)
    rounds = []
    for k in range(args.rounds):
        res = {}
        for scope in args.scopes:
            res[scope] = run_scope(args, root, scope, root / f"run-{k}-{scope}")
            print(f"round {k + 1} {scope}: {res[scope]['tokens_per_s']:.0f} tokens/s, inter-node "
                  f"{res[scope]['inter_node_bytes_per_step'] / 1e6:.2f} MB/step", flush=True)  # fmt: skip
        rounds.append(res)
    base = args.scopes[0]
    print(f"\n| scope | tokens/s (median) | x {base} (tokens/s; per round) | intra-node MB/step | inter-node MB/step "
          f"| inter / adapter fp32 |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    summary = {}
    for scope in args.scopes:
        tps = [r[scope]["tokens_per_s"] for r in rounds]
        ratios = [r[scope]["tokens_per_s"] / r[base]["tokens_per_s"] for r in rounds]
        last = rounds[-1][scope]
        summary[scope] = {**last, "tokens_per_s": statistics.median(tps), "ratio": statistics.median(ratios),
                          "ratios": ratios}  # fmt: skip
        print(f"| {scope} | {statistics.median(tps):.0f} | {statistics.median(ratios):.2f} "
              f"({', '.join(f'{x:.2f}' for x in ratios)}) | {last['intra_node_bytes_per_step'] / 1e6:.2f} | "
              f"{last['inter_node_bytes_per_step'] / 1e6:.3f} | "
              f"{last['inter_node_bytes_per_step'] / last['adapter_bytes']:.1f} |")  # fmt: skip
    same = all(rounds[0][s]["losses"] == rounds[0][base]["losses"] for s in args.scopes)
    print(f"\nlosses of every scope equal bitwise in round 1: {same}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rounds": rounds, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
