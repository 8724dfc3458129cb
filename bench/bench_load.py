"""Peak memory per rank while loading the backbone under ZeRO-3: layerwise loader vs transformers.

    python bench/bench_load.py                  # a random ~0.5 GB (bf16) LLaMA, 2 CPU ranks
    python bench/bench_load.py --hidden 2048 --layers 24 --json load.json

Each loader runs in a fresh pair of ranks (torchrun, 2 processes) on the same checkpoint: load the
NF4 backbone, then deepspeed.initialize (ZeRO-3). Per rank: RSS before loading (imports, process
group), the peak RSS of the process (VmHWM, which the load sets), and the RSS once partitioned. The
model's share of the peak is peak - before. On a GPU the same is read from CUDA's max allocated.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--json", default="bench_load.json")
    p.add_argument("--keep", default=None, help="keep (and reuse) the checkpoint in this folder")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def worker(args) -> None:
    import deepspeed
    import torch

    from adept_dist.distributed.comm import init_distributed
    from adept_dist.distributed.zero import full_numel, local_numel
    from adept_dist.model.backbone import DTYPES, load_backbone, resolve_compute_dtype
    from adept_dist.model.loader import load_layerwise
    from adept_dist.plan.measure import status_mb

    d = init_distributed(args.local_rank)
    root = Path(args.workdir)
    dtype = DTYPES[resolve_compute_dtype("auto", d.device)]
    ds = {"train_micro_batch_size_per_gpu": 1, "train_batch_size": d.world, "zero_optimization": {"stage": 3},
          "bf16": {"enabled": dtype == torch.bfloat16}}  # fmt: skip
    before = status_mb("VmRSS")
    if d.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if args.worker == "layerwise":
        model = load_layerwise(str(root / "model"), "nf4", d.device, dtype, ds)
    else:
        model = load_backbone(str(root / "model"), "nf4", d.device, dtype=dtype)
    deepspeed.initialize(model=model, config=ds)
    rec = {
        "rank": d.rank,
        "rss_before_mb": before,
        "peak_rss_mb": status_mb("VmHWM"),
        "rss_after_mb": status_mb("VmRSS"),
        "local_elements": sum(local_numel(p) for p in model.parameters()),
        "whole_elements": sum(full_numel(p) for p in model.parameters()),
    }
    rec["peak_minus_before_mb"] = rec["peak_rss_mb"] - before
    if d.device.type == "cuda":
        rec["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    (root / f"{args.worker}.{d.rank}.json").write_text(json.dumps(rec))


def make_model(args, root: Path) -> float:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from adept_dist.model.builtin import llama_shape

    folder = root / "model"
    if not (folder / "config.json").is_file():
        shape = llama_shape(args.vocab, args.hidden, args.layers, heads=max(1, args.hidden // 128), max_positions=2048)
        cfg = LlamaConfig(**shape, tie_word_embeddings=False)
        torch.manual_seed(0)
        LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(folder)  # checkpoints ship in bf16
    return sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 2**20


def main(argv=None) -> int:
    args = parse(argv)
    if args.worker:
        worker(args)
        return 0
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="adept-load-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        size = make_model(args, root)
        results = {}
        for loader in ("transformers", "layerwise"):
            from adept_dist.distributed.comm import free_port

            # torchrun: the ranks start ~9 s sooner than under the deepspeed launcher, same ranks
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                   str(free_port()), str(REPO / "bench/bench_load.py"), "--worker", loader, "--workdir", str(root)]  # fmt: skip
            path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
            env = {**os.environ, "PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "false"}
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{loader} failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
            results[loader] = [json.loads((root / f"{loader}.{r}.json").read_text()) for r in (0, 1)]
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    t, lw = results["transformers"], results["layerwise"]
    out = {
        "checkpoint_mb": size,
        "model": {"hidden": args.hidden, "layers": args.layers, "vocab": args.vocab},
        "per_rank": results,
        "ratio_peak": max(r["peak_rss_mb"] for r in lw) / max(r["peak_rss_mb"] for r in t),
        "ratio_peak_minus_before": max(r["peak_minus_before_mb"] for r in lw)
        / max(r["peak_minus_before_mb"] for r in t),
    }
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"checkpoint {size:.0f} MB (bf16); world size 2; per rank, max over ranks:")
    print("| loader | RSS before load MB | peak RSS MB | peak - before MB | RSS after partitioning MB |")
    print("|---|---|---|---|---|")
    for name, recs in results.items():
        cols = ["rss_before_mb", "peak_rss_mb", "peak_minus_before_mb", "rss_after_mb"]
        print(f"| {name} | " + " | ".join(f"{max(r[c] for r in recs):.0f}" for c in cols) + " |")
    print(f"layerwise / transformers: peak {out['ratio_peak']:.2f}, peak - before {out['ratio_peak_minus_before']:.2f}")
    print(f"[bench_load] figures written to {args.json}")
    return 0


if __name__ == "__main__":
    from adept_dist.common.errors import exit_process

    exit_process(main() or 0)  # ranks ran gloo collectives: skip the interpreter's finalisation
