"""The node map, the shard groups of each scope, and the traffic counter's bytes (4 real gloo
processes, no DeepSpeed)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

from adept_dist.common.errors import ConfigError
from adept_dist.distributed import traffic
from adept_dist.distributed.comm import all_reduce_, check_device_index, collective_device, collective_device_type
from adept_dist.distributed.topology import TopologyError, discover_nodes, nodes_from_keys, shard_groups
from tests.conftest import run_gloo


def test_nodes_are_numbered_by_first_appearance():
    assert nodes_from_keys(["host=b", "host=b", "host=a", "host=a"]) == [0, 0, 1, 1]
    assert discover_nodes(8, ranks_per_node=4) == [0, 0, 0, 0, 1, 1, 1, 1]


def test_ranks_per_node_must_divide_the_world():
    with pytest.raises(TopologyError, match="does not divide the 6 ranks"):
        discover_nodes(6, ranks_per_node=4)


def test_shard_groups_of_each_scope():
    nodes = [0, 0, 0, 0, 1, 1, 1, 1]
    assert shard_groups(nodes, "global") == [list(range(8))]
    assert shard_groups(nodes, "none") == [[r] for r in range(8)]
    assert shard_groups(nodes, "node") == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert shard_groups(nodes, "node", 2) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    # a node's ranks need not be consecutive (a launcher may interleave them): groups follow the map
    assert shard_groups([0, 1, 0, 1], "node") == [[0, 2], [1, 3]]


def test_impossible_groups_are_refused_in_one_line():
    with pytest.raises(TopologyError, match="must divide the 4 ranks of a node"):
        shard_groups([0] * 4 + [1] * 4, "node", 3)
    with pytest.raises(TopologyError, match="must divide the 4 ranks of a node"):
        shard_groups([0] * 4 + [1] * 4, "node", 8)  # a group never spans nodes
    with pytest.raises(TopologyError, match="same number of ranks on every node"):
        shard_groups([0, 0, 0, 1], "node")


def test_cpu_figures_are_reduced_on_the_device_the_backend_takes():
    """all_reduce_ (the trainer's loss sums, failure flags, the smallest device's memory) moves a CPU
    tensor to the rank's GPU where the process group's backend takes no CPU tensors: NCCL, by torch's
    own table (dist.Backend.backend_capability), which DeepSpeed starts on GPUs; gloo, and a
    device:backend list with a cpu entry, take them as they are. (Only the CPU side can run here: the
    4-rank test below reduces through gloo.)"""
    assert collective_device_type("nccl") == "cuda" and collective_device_type("NCCL") == "cuda"
    assert collective_device_type("xccl") == "xpu"
    assert collective_device_type("gloo") == "cpu" and collective_device_type("mpi") == "cpu"
    assert collective_device_type("cpu:gloo,cuda:nccl") == "cpu" and collective_device_type("cuda:nccl") == "cuda"


def test_a_rank_that_cannot_see_its_gpu_is_refused_in_one_line():
    """Each rank takes the GPU of its local rank (DeepSpeed too): a task that sees only its own GPU
    (SLURM's --gpus-per-task) would meet CUDA's "invalid device ordinal" deep inside DeepSpeed."""
    check_device_index(0, 1)
    check_device_index(7, 8)
    with pytest.raises(ConfigError, match=r"local rank 3 runs on device 3, but this process sees 1 .*--gpu-bind=none"):
        check_device_index(3, 1)


def _collectives(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    counter = traffic.install()
    dist.init_process_group("gloo", rank=rank, world_size=world)
    counter.set_nodes([0, 0, 1, 1], rank)  # 2 nodes x 2 ranks
    node_group = None
    for g in ([0, 1], [2, 3]):
        pg = dist.new_group(g)
        if rank in g:
            node_group = pg
    with counter.counting():
        shard = torch.zeros(250, dtype=torch.float32)  # 1000 bytes
        dist.all_gather_into_tensor(torch.zeros(1000), shard)  # world: 1000 from each of 3 peers
        dist.all_gather_into_tensor(torch.zeros(500), shard, group=node_group)  # node: 1000 from 1 peer
        dist.reduce_scatter_tensor(torch.zeros(100), torch.zeros(400))  # 400 bytes from each of 3 peers
        dist.all_reduce(torch.zeros(1000))  # 2 x 4000 / 4 = 2000 bytes from each of 3 peers
        dist.broadcast(torch.zeros(10), src=2)  # 40 bytes from rank 2
        objs = [None] * world
        dist.all_gather_object(objs, rank)  # torch's own use of all_gather: counted once, inside
    with counter.paused():
        dist.all_reduce(torch.zeros(1000))  # not counted
    dist.all_reduce(torch.zeros(1000))  # counting off: not counted
    least, total = torch.tensor([float(rank + 1)], dtype=torch.float64), torch.tensor([float(rank + 1)])
    same = all_reduce_(least, dist.ReduceOp.MIN) is least and all_reduce_(total) is total  # in place
    queue.put(
        (rank, {**counter.summary(steps=1), "min_sum": (least.item(), total.item(), same, str(collective_device()))})
    )
    dist.destroy_process_group()


def test_counter_splits_bytes_by_collective_and_link():
    """Each collective's bytes, worked out by hand from the definitions in traffic.py, per rank."""
    got = run_gloo(_collectives, 4)
    for rank, s in got.items():
        by = s["by_collective"]
        ag = by["all_gather"]
        # the world all-gather: 1 peer on my node, 2 on the other; the node all-gather: 1 peer, same node.
        # all_gather_object adds its own two all_gathers (sizes, then payload): more than zero, inter and intra
        assert ag["recv_intra_node"] - 2000 == ag["recv_inter_node"] / 2 - 1000 > 0, ag
        assert by["reduce_scatter"]["recv_intra_node"] == 400 and by["reduce_scatter"]["recv_inter_node"] == 800
        assert by["all_reduce"]["recv_intra_node"] == 2000 and by["all_reduce"]["recv_inter_node"] == 4000
        assert by["all_reduce"]["calls"] == 1  # the paused and the uncounted one are not there
        b = by["broadcast"]
        if rank == 2:
            assert (b["recv_intra_node"], b["recv_inter_node"], b["sent_intra_node"], b["sent_inter_node"]) == (
                0, 0, 40, 80)  # fmt: skip
        else:
            assert b["recv_intra_node" if rank == 3 else "recv_inter_node"] == 40
        assert s["intra_node_bytes_per_step"] == sum(v["recv_intra_node"] for v in by.values())
        assert s["node"] == (0 if rank < 2 else 1)
        assert s["min_sum"] == (1.0, 10.0, True, "cpu")  # gloo reduces CPU tensors where they are
