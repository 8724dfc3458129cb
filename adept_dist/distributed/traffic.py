"""Bytes each rank sends and receives, by collective and by link (inside its node or across nodes).

Our own wrapper of torch.distributed's collectives, installed before DeepSpeed starts its comm
backend (which keeps references to some of them): DeepSpeed's comms logger records no process
group and computes bandwidth with the global world size, so it cannot tell a node-local
all-gather from a global one; torch's profiler does not give the bytes of gloo's collectives.
The wrapper sees every call with its group, so it knows which ranks took part.

What is counted is the data each rank gets from, and gives to, each other rank of the group, in
the bandwidth-optimal (ring) volumes that NCCL's own tests report:

- all-gather: from each peer, its shard (the input); the output is n shards;
- reduce-scatter: from each peer, its contribution to this rank's shard (the output);
- all-reduce: a reduce-scatter and an all-gather, 2 x size / n from each peer;
- broadcast / scatter: the root's tensor, from the root; reduce / gather: to the root;
- send / recv: the tensor, to / from that peer.

A peer on this rank's node counts as intra-node, any other as inter-node. What crosses a physical
link may differ with the algorithm (a tree or a hierarchical all-reduce), not the data each rank
needs from the others, which is what these figures are. Barriers and zero-size tensors count 0.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading

import torch
import torch.distributed as dist

KINDS = ("all_gather", "reduce_scatter", "all_reduce", "broadcast", "other")
# torch.distributed function -> (kind, how its bytes are split over the peers)
WRAPPED = {
    "all_gather_into_tensor": ("all_gather", "gather"),
    "_all_gather_base": ("all_gather", "gather"),
    "all_gather": ("all_gather", "gather"),
    "all_gather_coalesced": ("all_gather", "gather"),
    "reduce_scatter_tensor": ("reduce_scatter", "scatter"),
    "_reduce_scatter_base": ("reduce_scatter", "scatter"),
    "reduce_scatter": ("reduce_scatter", "scatter"),
    "all_reduce": ("all_reduce", "reduce"),
    "all_reduce_coalesced": ("all_reduce", "reduce"),
    "broadcast": ("broadcast", "root"),
    "scatter": ("other", "root"),
    "reduce": ("other", "to_root"),
    "gather": ("other", "to_root"),
    "all_to_all_single": ("other", "all_to_all"),
    "all_to_all": ("other", "all_to_all"),
    "send": ("other", "send"),
    "isend": ("other", "send"),
    "recv": ("other", "recv"),
    "irecv": ("other", "recv"),
}


def nbytes(x) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if isinstance(x, (list, tuple)):
        return sum(nbytes(t) for t in x)
    return 0


def first(arguments: dict, *names: str):
    """The first of `names` given (not None) in a call's bound arguments."""
    return next((arguments[k] for k in names if arguments.get(k) is not None), None)


class Counter:
    """Counts what this rank sends and receives while `counting` is on; one per process."""

    def __init__(self) -> None:
        self.nodes: list[int] | None = None  # node of each global rank; set once the process group exists
        self.rank = 0
        self.on = False
        self.local = threading.local()  # call depth: torch's aliases call each other, count the outer call
        self.ranks_of: dict[int, list[int]] = {}
        self.totals = self.empty()  # since the last reset (a metrics.jsonl window)
        self.run_totals = self.empty()  # since the process started counting (traffic.json)

    @staticmethod
    def empty() -> dict:
        return {k: {"recv_intra": 0, "recv_inter": 0, "sent_intra": 0, "sent_inter": 0, "calls": 0} for k in KINDS}

    def reset(self) -> None:
        self.totals = self.empty()

    def set_nodes(self, nodes: list[int], rank: int) -> None:
        self.nodes, self.rank = list(nodes), rank

    @contextlib.contextmanager
    def switched(self, on: bool):
        """Counting on (or off) inside the block, as it was after it."""
        before, self.on = self.on, on
        try:
            yield
        finally:
            self.on = before

    def counting(self):
        return self.switched(True)

    def paused(self):
        return self.switched(False)

    def group_ranks(self, group) -> list[int]:
        key = id(group) if group is not None else 0
        if key not in self.ranks_of:
            if group is None or group is dist.GroupMember.WORLD:
                ranks = list(range(dist.get_world_size()))
            else:
                ranks = dist.get_process_group_ranks(group)
            self.ranks_of[key] = ranks
        return self.ranks_of[key]

    def add(self, kind: str, recv: dict[int, float], sent: dict[int, float]) -> None:
        me = self.nodes[self.rank]
        for t in (self.totals[kind], self.run_totals[kind]):
            for peer, b in recv.items():
                t["recv_intra" if self.nodes[peer] == me else "recv_inter"] += b
            for peer, b in sent.items():
                t["sent_intra" if self.nodes[peer] == me else "sent_inter"] += b
            t["calls"] += 1

    def record(self, name: str, bound: inspect.BoundArguments) -> None:
        kind, how = WRAPPED[name]
        a = bound.arguments
        group = a.get("group")
        ranks = self.group_ranks(group)
        peers = [r for r in ranks if r != self.rank]
        n = len(ranks)
        recv: dict[int, float] = {}
        sent: dict[int, float] = {}
        if how == "gather":  # each peer's shard: the input (a tensor, or a list for the coalesced form)
            shard = nbytes(first(a, "input_tensor", "tensor", "input_tensor_list"))
            recv = sent = dict.fromkeys(peers, shard)
        elif how == "scatter":  # each peer's contribution to my shard: the output's size
            part = nbytes(first(a, "output", "output_tensor"))
            recv = sent = dict.fromkeys(peers, part)
        elif how == "reduce":
            size = nbytes(first(a, "tensor", "tensors"))
            recv = sent = dict.fromkeys(peers, 2 * size / n)
        elif how in ("root", "to_root"):
            root = first(a, "src", "dst")
            if root is None:  # group_src / group_dst: a rank of the group
                root = ranks[first(a, "group_src", "group_dst") or 0]
            size = nbytes(a.get("tensor"))
            if how == "root":
                if self.rank == root:
                    sent = dict.fromkeys(peers, size)
                else:
                    recv = {root: size}
            elif self.rank == root:
                recv = dict.fromkeys(peers, size)
            else:
                sent = {root: size}
        elif how == "all_to_all":
            recv = dict.fromkeys(peers, nbytes(first(a, "output", "output_tensor_list")) / n)
            sent = dict.fromkeys(peers, nbytes(first(a, "input", "input_tensor_list")) / n)
        elif how == "send":
            sent = {a.get("dst"): nbytes(a.get("tensor"))} if a.get("dst") is not None else {}
        elif how == "recv":
            recv = {a.get("src"): nbytes(a.get("tensor"))} if a.get("src") is not None else {}
        self.add(kind, recv, sent)

    def wrap(self, name: str, fn):
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def counted(*args, **kwargs):
            depth = getattr(self.local, "depth", 0)
            if self.on and depth == 0 and self.nodes is not None:
                try:
                    bound = sig.bind(*args, **kwargs)
                except TypeError:
                    bound = None
                if bound is not None:
                    self.record(name, bound)
            self.local.depth = depth + 1
            try:
                return fn(*args, **kwargs)
            finally:
                self.local.depth = depth

        counted.__adept_counted__ = True
        return counted

    def summary(self, steps: int, whole_run: bool = False) -> dict:
        """This rank's bytes per step over the last `steps` steps since the last reset (or over the
        whole run), by link and by collective."""
        per = max(steps, 1)
        totals = self.run_totals if whole_run else self.totals
        by = {
            k: {
                "recv_intra_node": round(v["recv_intra"] / per),
                "recv_inter_node": round(v["recv_inter"] / per),
                "sent_intra_node": round(v["sent_intra"] / per),
                "sent_inter_node": round(v["sent_inter"] / per),
                "calls": round(v["calls"] / per, 2),
            }
            for k, v in totals.items()
            if v["calls"]
        }
        tot = {key: sum(v[key] for v in totals.values()) for key in ("recv_intra", "recv_inter", "sent_intra",
                                                                          "sent_inter")}  # fmt: skip
        return {
            "rank": self.rank,
            "node": self.nodes[self.rank] if self.nodes else 0,
            "intra_node_bytes_per_step": round(tot["recv_intra"] / per),
            "inter_node_bytes_per_step": round(tot["recv_inter"] / per),
            "sent_intra_node_bytes_per_step": round(tot["sent_intra"] / per),
            "sent_inter_node_bytes_per_step": round(tot["sent_inter"] / per),
            "by_collective": by,
        }


COUNTER = Counter()


def install() -> Counter:
    """Wrap torch.distributed's collectives (once per process; counting starts off). Call before
    DeepSpeed's comm backend starts: it keeps references to the all-gather and reduce-scatter."""
    c10d = dist.distributed_c10d
    for name in WRAPPED:
        for module in (c10d, dist):
            fn = getattr(module, name, None)
            if fn is None or getattr(fn, "__adept_counted__", False):
                continue
            setattr(module, name, COUNTER.wrap(name, fn))
    return COUNTER


def gather_report(counter: Counter, steps: int, adapter_bytes: int, whole_run: bool = False) -> dict:
    """Every rank's per-step figures on every rank (collective; not counted itself)."""
    mine = counter.summary(steps, whole_run)
    ranks = [mine]
    if dist.is_initialized() and dist.get_world_size() > 1:
        with counter.paused():
            ranks = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, mine)
    return {"adapter_bytes": adapter_bytes, "steps": steps, "ranks": ranks}


def headline(report: dict) -> dict:
    """The report's plottable numbers: the most any rank received per step, inside and across nodes."""
    ranks = report["ranks"]
    return {
        "intra_node_bytes_per_step": max(r["intra_node_bytes_per_step"] for r in ranks),
        "inter_node_bytes_per_step": max(r["inter_node_bytes_per_step"] for r in ranks),
    }


def describe(report: dict) -> str:
    """One line: the largest per-rank receive per step, inside and across nodes, against the adapter."""
    most = headline(report)
    intra, inter = most["intra_node_bytes_per_step"], most["inter_node_bytes_per_step"]
    ratio = inter / report["adapter_bytes"] if report["adapter_bytes"] else 0.0
    return (f"traffic per step and rank (received, most of any rank): {mb(intra)} inside its node, {mb(inter)} from "
            f"other nodes ({ratio:.1f}x the adapter's {mb(report['adapter_bytes'])} in fp32)")  # fmt: skip


def mb(b: float) -> str:
    return f"{b / 1e6:.3f} MB" if b < 1e9 else f"{b / 1e9:.2f} GB"
