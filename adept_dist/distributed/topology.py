"""Which node each rank runs on, and the groups the frozen backbone is sharded over.

A rank's node comes from the launcher's environment (``SLURM_NODEID`` under srun, ``GROUP_RANK``
under torchrun, ``CROSS_RANK`` under the deepspeed launcher), else from its host name; every rank
tells the others its own (one small all-gather at start), so the map is the same everywhere.
``--ranks_per_node N`` overrides it (ranks 0..N-1 are node 0, ...): one machine then stands in for
several nodes.

Sharding scopes of the frozen backbone (``--shard_scope``):

- ``global``: ZeRO-3 over every rank (DeepSpeed's default): each layer is all-gathered over all
  ranks in forward and again in backward, so most of it crosses nodes on a multi-node job.
- ``node``: ZeRO-3 over the ranks of one node (or of groups of ``--shard_group_size`` ranks inside
  a node), replicated across groups: the backbone's all-gathers never leave the group; the
  adapter is still partitioned and its gradients reduced over all ranks.
- ``none``: the backbone replicated on every rank (ZeRO stage 0-2): no all-gathers at all.

Plain torch.distributed: the groups are made here and handed to the loader.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch.distributed as dist

from adept_dist.common.errors import UserError

SCOPES = ("global", "node", "none")
NODE_ENV = ("SLURM_NODEID", "GROUP_RANK", "CROSS_RANK")  # srun, torchrun, the deepspeed launcher


class TopologyError(UserError, ValueError):
    """A layout that cannot be built on these ranks; the message says why and what to change."""


def node_key() -> str:
    """This rank's node as its launcher names it, else its host name."""
    for name in NODE_ENV:
        if os.environ.get(name, "").strip():
            return f"{name}={os.environ[name].strip()}"
    return f"host={socket.gethostname()}"


def nodes_from_keys(keys: list[str]) -> list[int]:
    """Node index of each rank: nodes numbered in the order their first rank appears."""
    index: dict[str, int] = {}
    return [index.setdefault(k, len(index)) for k in keys]


def discover_nodes(world: int, ranks_per_node: int | None = None) -> list[int]:
    """The node of every rank (collective unless `ranks_per_node` is given)."""
    if ranks_per_node:
        if world % ranks_per_node:
            raise TopologyError(
                f"--ranks_per_node {ranks_per_node} does not divide the {world} ranks of this job: give a divisor of "
                f"{world}"
            )
        return [r // ranks_per_node for r in range(world)]
    keys = [node_key()]
    if world > 1 and dist.is_initialized():
        keys = [""] * world
        dist.all_gather_object(keys, node_key())
    return nodes_from_keys(keys)


def shard_groups(nodes: list[int], scope: str, group_size: int | None = None) -> list[list[int]]:
    """The rank lists the backbone is partitioned over: one group of all ranks (global), groups of
    `group_size` consecutive ranks of one node (node; default: the whole node), or one group per
    rank (none). Every group has the same size, so every rank holds the same share."""
    world = len(nodes)
    if scope == "global":
        return [list(range(world))]
    if scope == "none":
        return [[r] for r in range(world)]
    if scope != "node":
        raise TopologyError(f"--shard_scope {scope!r} is not one of {', '.join(SCOPES)}")
    members: dict[int, list[int]] = {}
    for rank, node in enumerate(nodes):
        members.setdefault(node, []).append(rank)
    sizes = {len(m) for m in members.values()}
    if len(sizes) > 1:
        raise TopologyError(
            f"--shard_scope node needs the same number of ranks on every node, these have "
            f"{sorted(len(m) for m in members.values())}: start as many ranks per node, or use --shard_scope global"
        )
    per_node = sizes.pop()
    size = group_size or per_node
    if size > per_node or per_node % size:
        raise TopologyError(
            f"--shard_group_size {size} must divide the {per_node} ranks of a node (a group never spans nodes): "
            f"give a divisor of {per_node}"
        )
    return [m[i : i + size] for m in members.values() for i in range(0, per_node, size)]


@dataclass(frozen=True)
class Layout:
    """Where the ranks run and how the backbone is sharded over them."""

    scope: str
    nodes: tuple[int, ...]  # node of each rank
    groups: tuple[tuple[int, ...], ...]  # the shard groups (rank lists)
    rank: int

    @property
    def node(self) -> int:
        return self.nodes[self.rank]

    @property
    def n_nodes(self) -> int:
        return len(set(self.nodes))

    @property
    def my_group(self) -> tuple[int, ...]:
        return next(g for g in self.groups if self.rank in g)

    def describe(self) -> str:
        size = len(self.groups[0])
        where = {"global": "over all ranks", "node": "within each group, replicated across groups",
                 "none": "replicated on every rank"}[self.scope]  # fmt: skip
        return (f"{len(self.nodes)} rank(s) on {self.n_nodes} node(s); backbone sharded {where} "
                f"({len(self.groups)} group(s) of {size}); --shard_scope {self.scope}")  # fmt: skip


def make_layout(scope: str, group_size: int | None, ranks_per_node: int | None,
                nodes: list[int] | None = None) -> tuple[Layout, object | None]:  # fmt: skip
    """The layout of this job and the process group this rank's backbone is partitioned over (None:
    the world group, DeepSpeed's default; also for `none`, where nothing is partitioned); `nodes`:
    every rank's node if the caller has found them already (discover_nodes), else found here.
    Collective: every rank creates every group, in the same order, as torch requires."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    nodes = discover_nodes(world, ranks_per_node) if nodes is None else nodes
    groups = shard_groups(nodes, scope, group_size)
    layout = Layout(scope, tuple(nodes), tuple(tuple(g) for g in groups), rank)
    mine = None
    if scope == "node" and len(groups) > 1:
        for g in groups:
            pg = dist.new_group(g)
            if rank in g:
                mine = pg
    return layout, mine
