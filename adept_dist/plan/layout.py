"""One layout's plan (memory and traffic per rank) and the plan over every sharding scope, with
its recommendation."""

from __future__ import annotations

from dataclasses import dataclass

from adept_dist.distributed.topology import SCOPES
from adept_dist.plan.inputs import (
    CODE_BYTES,
    NESTED_BLOCK,
    NF4_BLOCK,
    ZERO2_ALIGN,
    Cluster,
    PlanError,
    Shape,
    Workload,
    Zero,
)
from adept_dist.plan.memory import Gathers, Model, Param, activations, build_model, simulate, trace


# ----------------------------------------------------------------------------- one layout
@dataclass
class LayoutPlan:
    scope: str
    shard_group_size: int  # ranks the backbone is partitioned over
    fits: bool
    peak_bytes_per_gpu: int
    memory: dict[str, int]  # the parts at the peak
    intra_node_bytes_per_step: int
    inter_node_bytes_per_step: int
    by_collective: dict[str, dict[str, int]]
    first_step: dict[str, int]  # the run's first step (ZeRO-3 records its trace: more gathers)
    activation_bytes: dict[str, int]  # with and without activation checkpointing

    def to_json(self) -> dict:
        return {
            "scope": self.scope,
            "fits": self.fits,
            "peak_bytes_per_gpu": self.peak_bytes_per_gpu,
            "intra_node_bytes_per_step": self.intra_node_bytes_per_step,
            "inter_node_bytes_per_step": self.inter_node_bytes_per_step,
            "shard_group_size": self.shard_group_size,
            "memory_bytes": self.memory,
            "activation_bytes": self.activation_bytes,
            "by_collective": self.by_collective,
            "first_step": self.first_step,
        }

    def run_average(self, steps: int) -> tuple[float, float]:
        """(intra, inter) bytes per step averaged over a run's first `steps` steps, as traffic.json has them."""
        steady = steps - 1
        return ((self.first_step["intra_node_bytes"] + steady * self.intra_node_bytes_per_step) / steps,
                (self.first_step["inter_node_bytes"] + steady * self.inter_node_bytes_per_step) / steps)  # fmt: skip


def quant_stats_bytes(model: Model) -> int:
    """Every rank's full copy of the NF4 statistics (compress_statistics=True: double quantisation)."""
    total = 0
    for p in model.params():
        if p.weights:
            blocks = -(-p.weights // NF4_BLOCK)
            total += blocks + 4 * -(-blocks // NESTED_BLOCK) + CODE_BYTES
    return total


class Links:
    """Bytes received per step, by collective and by link, from per-peer volumes over a group."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.by = {k: {"recv_intra_node": 0, "recv_inter_node": 0} for k in ("all_gather", "reduce_scatter",
                                                                              "all_reduce", "broadcast")}  # fmt: skip

    def add(self, kind: str, per_peer: float, group: int, times: int = 1) -> None:
        """`per_peer` bytes from each peer of a group of `group` ranks: the world, or ranks of one node."""
        if group <= 1 or times <= 0:
            return
        gpn = self.cluster.gpus_per_node
        intra, inter = (gpn - 1, group - gpn) if group == self.cluster.world else (group - 1, 0)
        self.by[kind]["recv_intra_node"] += round(per_peer * intra * times)
        self.by[kind]["recv_inter_node"] += round(per_peer * inter * times)

    def totals(self) -> tuple[int, int]:
        return (sum(v["recv_intra_node"] for v in self.by.values()),
                sum(v["recv_inter_node"] for v in self.by.values()))  # fmt: skip


def shard_size(scope: str, cluster: Cluster) -> int:
    if scope == "global":
        return cluster.world
    if scope == "none":
        return 1
    size = cluster.group_size or cluster.gpus_per_node
    if size > cluster.gpus_per_node or cluster.gpus_per_node % size:
        raise PlanError(
            f"--shard_group_size {size} must divide the {cluster.gpus_per_node} GPUs of a node: give a divisor of "
            f"{cluster.gpus_per_node}"
        )
    return size


def zero2_groups(adapter: list[Param], world: int) -> list[int]:
    """Elements of each flat parameter group ZeRO-1/2 partitions (optim.py: the prompt; the offset),
    padded to a multiple of 2 x ranks."""
    groups = [[p for p in adapter if p.name == "adapter.prompt"], [p for p in adapter if p.name != "adapter.prompt"]]
    align = ZERO2_ALIGN * world
    return [-(-sum(p.numel for p in g) // align) * align for g in groups if g]


def zero2_traffic(links: Links, adapter: list[Param], work: Workload, world: int) -> None:
    """none (ZeRO-2): the adapter's gradient bucket all-reduced every micro-batch; the trainer's
    full_grads (an fp32 all-reduce per tensor); the scalars; the updated partitions all-gathered."""
    n = sum(p.numel for p in adapter)
    links.add("all_reduce", 2 * n * work.b / world, world, work.grad_accum)
    links.add("all_reduce", sum(2 * p.numel * 4 / world for p in adapter), world)
    links.add("all_reduce", 2 * (16 + 4 + 4) / world, world)  # loss and stop; DeepSpeed's two fp32 scalars
    links.add("all_gather", sum(zero2_groups(adapter, world)) // world * work.b, world)


def zero3_traffic(links: Links, model: Model, gathers: list[tuple[Gathers, int]], work: Workload, world: int) -> None:
    """global, node (ZeRO-3): the gathers of each micro-batch (`gathers`: (simulation, how many such
    micro-batches)); the adapter's gradients reduce-scattered every micro-batch; the trainer's
    full_grads (the fp32 partitions all-gathered); the persistent parameters re-gathered after the
    optimizer step; the scalars."""
    for sim, times in gathers:
        for group, per_peer in sim.per_peer.items():
            links.add("all_gather", per_peer, group, times)
    part = sum(p.part for p in model.adapter)
    links.add("reduce_scatter", part * work.b, world, work.grad_accum)
    links.add("all_gather", part * 4, world)
    persistent = [p for p in model.params() if p.persistent]
    for group in sorted({p.group for p in persistent}):
        links.add("all_gather", sum(p.part_bytes for p in persistent if p.group == group), group)
    links.add("all_reduce", 2 * (16 + 8 + 8) / world, world)  # loss and stop; DeepSpeed's two fp64 scalars


def plan_layout(
    shape: Shape, cluster: Cluster, work: Workload, zero: Zero, scope: str, cpu: bool = False
) -> LayoutPlan:
    """Memory and traffic of one scope. `cpu`: memory as a CPU process's resident set under gloo (what
    bench/bench_plan.py measures): a buffer counts the bytes written into it, not those allocated,
    and gloo stages each all-gather's output in a second buffer of its size, which its work handle
    holds until DeepSpeed has waited on the last of the call's parameters, i.e. until a module has
    used it (measured: gathering a 524 MB parameter over 2 ranks raised the peak by 1049 MB; a
    153 MB call holding a whole model stayed staged until the output head's forward)."""
    world, shard, b = cluster.world, shard_size(scope, cluster), work.b
    model = build_model(shape, work, scope, shard, world, zero)
    steps = trace(model, shape, work)
    adapter = model.adapter
    n_adapter = sum(p.numel for p in adapter)
    steady, first = Links(cluster), Links(cluster)
    if scope == "none":  # ZeRO-2: the backbone whole on every rank, nothing of it gathered
        live = [0] * len(steps)
        for links in (steady, first):
            zero2_traffic(links, adapter, work, world)
        resident = sum(p.full_bytes for p in model.backbone())
        optimizer = n_adapter * b + 16 * sum(zero2_groups(adapter, world)) // world  # + fp32 master, grads, moments
    else:
        sim = simulate(steps, zero)
        live = [a + b for a, b in zip(sim.live, sim.in_flight)] if cpu else sim.live
        zero3_traffic(steady, model, [(sim, work.grad_accum)], work, world)
        zero3_traffic(first, model, [(simulate(steps, zero, recording=True), 1), (sim, work.grad_accum - 1)], work,
                      world)  # fmt: skip
        resident = sum(p.part_bytes + (p.full_bytes if p.persistent else 0) for p in model.backbone())
        optimizer = sum(p.part_bytes + (p.full_bytes if p.persistent else 0) for p in adapter)
        optimizer += 16 * sum(p.part for p in adapter)  # fp32 master, gradient partition, 2 moments
    # The reduce buffers (contiguous_gradients). ZeRO-3 allocates one as the engine starts and keeps it.
    # ZeRO-2 (none) allocates them as the first trainable gradient arrives, the adapter's in the backward's
    # last step, and frees them at the backward's end: two with overlap_comm (a double buffer), else one
    # (DeepSpeed 0.19.8, stage_1_and_2.py setup_buckets / _release_ipg_buffers; tests/bucket_check.py).
    # On CPU only the bytes written are resident: the adapter's gradients, in the first buffer.
    overlap = zero.overlap_comm if zero.overlap_comm is not None else scope != "none"  # none runs as stage 2
    transient = scope == "none" and not cpu
    bucket = min(n_adapter, zero.reduce_bucket) * b if cpu else zero.reduce_bucket * b
    bucket = (2 if transient and overlap else 1) * bucket if zero.contiguous_gradients else 0
    at_step = [0] * (len(steps) - 1) + [bucket] if transient else [0] * len(steps)
    constant = {"backbone": resident, "quant_stats": quant_stats_bytes(model), "adapter_and_adam": optimizer,
                "deepspeed_buffers": 0 if transient else bucket}  # fmt: skip
    at = max(range(len(steps)), key=lambda i: live[i] + steps[i].activations + at_step[i])
    constant["deepspeed_buffers"] += at_step[at]
    memory = {**constant, "gathered_params": live[at], "activations": steps[at].activations}
    peak = sum(memory.values())
    act = activations(shape, work)
    intra, inter = steady.totals()
    first_intra, first_inter = first.totals()
    return LayoutPlan(
        scope=scope,
        shard_group_size=shard,
        fits=peak <= cluster.usable,
        peak_bytes_per_gpu=peak,
        memory=memory,
        intra_node_bytes_per_step=intra,
        inter_node_bytes_per_step=inter,
        by_collective=steady.by,
        first_step={"intra_node_bytes": first_intra, "inter_node_bytes": first_inter},
        activation_bytes={
            "without_checkpointing": act.total(shape.layers, False),
            "with_checkpointing": act.total(shape.layers, True),
        },  # fmt: skip
    )


# ----------------------------------------------------------------------------- every layout
@dataclass
class Plan:
    recommended: str | None  # None: no scope fits
    layouts: list[LayoutPlan]

    def to_json(self) -> dict:
        return {"recommended": self.recommended, "layouts": [lay.to_json() for lay in self.layouts]}

    def layout(self, scope: str) -> LayoutPlan:
        return next(lay for lay in self.layouts if lay.scope == scope)


def scopes_for(cluster: Cluster) -> list[str]:
    """global and none always; node where it differs from global (several nodes, or smaller groups)."""
    node = cluster.nodes > 1 or (cluster.group_size is not None and cluster.group_size < cluster.gpus_per_node)
    return [s for s in SCOPES if s != "node" or node]


def recommend(layouts: list[LayoutPlan]) -> str | None:
    """Of the scopes that fit: those that keep the backbone off the inter-node network (no more than
    10x the least inter-node traffic of any), then the least traffic in all (a replicated backbone,
    which gathers nothing, wins where it fits), then the least memory, then the simplest (none, node,
    global: a shard group of one rank gathers nothing either, but runs ZeRO-3's machinery)."""
    fitting = [lay for lay in layouts if lay.fits]
    if not fitting:
        return None
    least = min(lay.inter_node_bytes_per_step for lay in fitting)

    def key(lay: LayoutPlan) -> tuple:
        ships_backbone = lay.inter_node_bytes_per_step > 10 * max(least, 1)
        total = lay.inter_node_bytes_per_step + lay.intra_node_bytes_per_step
        return ships_backbone, total, lay.peak_bytes_per_gpu, ("none", "node", "global").index(lay.scope)

    return min(fitting, key=key).scope


def plan(shape: Shape, cluster: Cluster, work: Workload, zero: Zero | None = None, cpu: bool = False) -> Plan:
    zero = zero or Zero()
    if min(cluster.nodes, cluster.gpus_per_node) < 1:
        raise PlanError("--nodes and --gpus_per_node must be at least 1")
    layouts = [plan_layout(shape, cluster, work, zero, s, cpu) for s in scopes_for(cluster)]
    return Plan(recommend(layouts), layouts)
