"""The ``adept-plan`` command (``launch/plan.py``): memory per GPU and traffic per step of each
sharding scope before a job starts, which fit, and the recommended one with its DeepSpeed JSON.

    adept-plan --model llama-2-70b --nodes 2 --gpus_per_node 8 --gpu_memory 80GB --max_length 1024 \\
        --micro_batch 8 --activation_checkpointing
    adept-plan --model path/to/model --nodes 1 --gpus_per_node 2 --gpu_memory 24GB --json

The model of memory and traffic is adept_dist/plan/ (its docstring); bench/bench_plan.py checks it against runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from adept_dist.common.errors import EXIT_OK, EXIT_USER_ERROR, UserError
from adept_dist.distributed.dsconfig import DEFAULT_DS_CONFIG
from adept_dist.model.adapters import METHODS
from adept_dist.plan.inputs import (
    DEFAULT_HEADROOM,
    DTYPE_BYTES,
    SHAPES,
    Cluster,
    PlanError,
    Shape,
    Workload,
    Zero,
    memory_size,
    read_shape,
)
from adept_dist.plan.layout import Plan, plan
from adept_dist.plan.memory import adapter_sizes

PARTS = {  # memory part -> its line in the table
    "backbone": "backbone: NF4 shard or replica, embedding, head, norms",
    "quant_stats": "NF4 statistics (a full copy on every GPU)",
    "gathered_params": "gathered layers and prefetch (ZeRO-3)",
    "activations": "activations",
    "adapter_and_adam": "adapter and Adam (fp32 masters, 2 moments)",
    "deepspeed_buffers": "DeepSpeed buffers (reduce bucket)",
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="adept-plan", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True,
                   help=f"a local model folder, its config.json, or one of {', '.join(SHAPES)}")  # fmt: skip
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus_per_node", type=int, default=8)
    p.add_argument("--gpu_memory", default="80GB", help="memory of one GPU: 80GB (10^9 bytes), 40GiB (2^30), ...")
    p.add_argument("--headroom", type=float, default=DEFAULT_HEADROOM,
                   help="share of --gpu_memory left free for the CUDA context, NCCL and fragmentation")  # fmt: skip
    p.add_argument("--max_length", type=int, default=1024, help="tokens per example, prompt excluded (as adept-train)")
    p.add_argument("--micro_batch", type=int, default=8, help="examples per GPU per forward (--micro_batch_size)")
    p.add_argument("--grad_accum", type=int, default=1)
    p.add_argument("--method", default="adept", choices=METHODS)
    p.add_argument("--prompt_length", type=int, default=None, help="default 60 (adept, dept) or 100 (pt)")
    p.add_argument("--offset_rank", type=int, default=None, help="default: the budget-matched rank")
    p.add_argument("--activation_checkpointing", action="store_true")
    p.add_argument("--compute_dtype", default="bf16", choices=tuple(DTYPE_BYTES))
    p.add_argument("--quant", default="nf4", choices=("nf4", "none"))
    p.add_argument("--no_packing", action="store_true", help="padded batches (adept-train --no-packing)")
    p.add_argument("--example_tokens", type=int, default=None, help="tokens per example; default --max_length")
    p.add_argument("--target_tokens", type=int, default=None,
                   help="target tokens per example (the logits are kept for these); default: every token")  # fmt: skip
    p.add_argument("--shard_group_size", type=int, default=None, help="node scope's shard group; default a node")
    p.add_argument("--ds_config", default=DEFAULT_DS_CONFIG, help="the ZeRO-3 JSON the plan starts from")
    p.add_argument("--write_ds_config", default=None, help="write the recommended scope's DeepSpeed JSON here")
    p.add_argument("--json", action="store_true", help='print {"recommended": ..., "layouts": [...]} only')
    return p.parse_args(argv)


def gb(b: float) -> str:
    return f"{b / 1e9:.2f}" if b >= 1e7 or b == 0 else f"{b / 1e9:.4f}"


def describe(shape: Shape, cluster: Cluster, work: Workload, pl: Plan) -> str:
    rows, width, _, targets = work.tokens()
    sizes = adapter_sizes(shape, work)
    rank = f" r={sizes['a']}" if "a" in sizes else ""
    head = [
        f"{shape.name or 'model'}: hidden {shape.hidden}, {shape.layers} layers, FFN {shape.intermediate}, vocab "
        f"{shape.vocab}; {cluster.nodes} node(s) x {cluster.gpus_per_node} GPU(s) of {gb(cluster.gpu_memory)} GB",
        f"{work.method} m={work.m}{rank}; micro-batch {work.micro_batch} x {work.max_length} tokens = {rows} row(s) of "
        f"{width} slots, {targets} target tokens; grad_accum {work.grad_accum}; {work.compute_dtype}, {work.quant}; "
        f"activation checkpointing {'on' if work.activation_checkpointing else 'off'}",
        f"fits: peak <= {gb(cluster.usable)} GB per GPU ({cluster.headroom:.0%} of {gb(cluster.gpu_memory)} GB left "
        f"for the CUDA context, NCCL buffers and fragmentation)",
        "",
    ]
    lays = pl.layouts
    table = ["| per GPU, GB | " + " | ".join(lay.scope for lay in lays) + " |", "|---" * (len(lays) + 1) + "|"]
    for key, label in PARTS.items():
        table.append(f"| {label} | " + " | ".join(gb(lay.memory[key]) for lay in lays) + " |")
    act = {k: lays[0].activation_bytes[k] for k in ("without_checkpointing", "with_checkpointing")}
    table.append(f"| (activations without / with checkpointing: {gb(act['without_checkpointing'])} / "
                 f"{gb(act['with_checkpointing'])}) |" + " |" * len(lays))  # fmt: skip
    table.append("| **peak** | " + " | ".join(f"**{gb(lay.peak_bytes_per_gpu)}**" for lay in lays) + " |")
    table.append("| fits | " + " | ".join("yes" if lay.fits else "no" for lay in lays) + " |")
    table.append(
        "| received per step, intra-node GB | " + " | ".join(gb(lay.intra_node_bytes_per_step) for lay in lays) + " |"
    )
    table.append(
        "| received per step, inter-node GB | " + " | ".join(gb(lay.inter_node_bytes_per_step) for lay in lays) + " |"
    )
    return "\n".join(head + table)


def recommendation(pl: Plan, cluster: Cluster, args) -> str:
    if pl.recommended is None:
        fixes = [] if args.activation_checkpointing else ["--activation_checkpointing"]
        fixes += ["a smaller --micro_batch (with --grad_accum for the same batch)", "more or larger GPUs"]
        return f"no scope fits in {gb(cluster.usable)} GB per GPU: try {', '.join(fixes)}"
    best = pl.layout(pl.recommended)
    flags = f"--shard_scope {best.scope}"
    if best.scope == "node" and cluster.group_size:
        flags += f" --shard_group_size {cluster.group_size}"
    if cluster.nodes > 1:
        flags += f" (--ranks_per_node {cluster.gpus_per_node} where nodes are simulated)"
    return (f"recommended: {best.scope} (fits, the least inter-node traffic: {gb(best.inter_node_bytes_per_step)} GB "
            f"per step and GPU; then the least memory: {gb(best.peak_bytes_per_gpu)} GB)\n"
            f"train with: --ds_config <the JSON below> {flags}")  # fmt: skip


def ds_config_for(scope: str, path: str) -> dict:
    """The DeepSpeed JSON of a scope: --ds_config as it is (global, node) or as ZeRO-2 (none)."""
    from adept_dist.distributed.dsconfig import apply_shard_scope, read_ds_config

    ds, _, _ = apply_shard_scope(read_ds_config(path), scope, path)
    return ds


def run(args) -> int:
    from adept_dist.distributed.dsconfig import read_ds_config

    shape = read_shape(args.model)
    cluster = Cluster(args.nodes, args.gpus_per_node, memory_size(args.gpu_memory, "--gpu_memory"), args.shard_group_size,
                        args.headroom)  # fmt: skip
    work = Workload(
        max_length=args.max_length, micro_batch=args.micro_batch, grad_accum=args.grad_accum, method=args.method,
        prompt_length=args.prompt_length, offset_rank=args.offset_rank,
        activation_checkpointing=args.activation_checkpointing, compute_dtype=args.compute_dtype, quant=args.quant,
        packing=False if args.no_packing else None, example_tokens=args.example_tokens,
        target_tokens=args.target_tokens,
    )  # fmt: skip
    if not 0 <= args.headroom < 1:
        raise PlanError(f"--headroom {args.headroom}: give a share in [0, 1), e.g. 0.1")
    pl = plan(shape, cluster, work, Zero.from_ds(read_ds_config(args.ds_config)))
    ds = ds_config_for(pl.recommended, args.ds_config) if pl.recommended else None
    if args.write_ds_config and ds is not None:
        Path(args.write_ds_config).write_text(json.dumps(ds, indent=2) + "\n")
    if args.json:
        print(json.dumps(pl.to_json(), indent=1))
        return EXIT_OK
    print(describe(shape, cluster, work, pl))
    print()
    print(recommendation(pl, cluster, args))
    if ds is not None:
        print(
            json.dumps(ds, indent=2)
            if not args.write_ds_config
            else f"DeepSpeed JSON written to {args.write_ds_config}"
        )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        return run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
