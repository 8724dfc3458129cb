"""The process group and the collectives the package uses beyond DeepSpeed's: `Dist` (this
rank, the world, the device), `init_distributed` (a plain `python` run is a world of one; CPU
ranks share the cores; DeepSpeed's CPU comm op is built first: buildlock.py), and the small
collectives (a sum, rank 0's tensors and text, a picklable object) that `run.on_main` and the
evaluation build on."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from adept_dist.common.errors import ConfigError
from adept_dist.distributed import traffic
from adept_dist.distributed.buildlock import prepare_cpu_comm_op, without_op_banner


@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    """A TCP port that is free on this machine now (for a rendezvous on 127.0.0.1)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(local_rank: int | None = None) -> Dist:
    """Join (or, for a plain `python` run, create) the process group; one rank per device."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    acc = get_accelerator()
    if acc.device_name() == "cpu":
        prepare_cpu_comm_op()  # before DeepSpeed's comm backend loads it
    if "RANK" not in os.environ and "OMPI_COMM_WORLD_RANK" not in os.environ:  # plain python: world of one
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))  # names only (DeepSpeed's shm buffers)
        if not dist.is_initialized():  # its store on a port the OS picks while binding: no port race
            dist.init_process_group(acc.communication_backend_name(), init_method="tcp://127.0.0.1:0", rank=0,
                                    world_size=1)  # fmt: skip
    if local_rank is None or local_rank < 0:  # mpirun sets no LOCAL_RANK before DeepSpeed's MPI discovery
        local_rank = int(os.environ.get("LOCAL_RANK") or os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK") or 0)
    if acc.device_name() != "cpu":
        check_device_index(local_rank, acc.device_count())
        acc.set_device(local_rank)
    traffic.install()  # before DeepSpeed's comm backend, which keeps references to torch's collectives
    with without_op_banner():  # DeepSpeed's comm backend now (it creates the shm buffers), not at initialize
        deepspeed.init_distributed(verbose=False)
    atexit.unregister(close_process_group)  # once, however often a process joins
    atexit.register(close_process_group)
    device = torch.device(acc.device_name(local_rank)) if acc.device_name() != "cpu" else torch.device("cpu")
    if device.type == "cpu":
        share_cpu_cores(dist.get_world_size())
        unlink_shm_buffer()
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, device)


def check_device_index(local_rank: int, visible: int) -> None:
    """A rank uses the GPU numbered by its local rank (so does DeepSpeed, from $LOCAL_RANK): it must see
    that many. A scheduler that gives each task only its own GPU (SLURM's --gpus-per-task, or
    --gpu-bind) leaves local rank 3 one device: refused in one line instead of CUDA's invalid ordinal."""
    if local_rank >= visible:
        shown = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise ConfigError(
            f"local rank {local_rank} runs on device {local_rank}, but this process sees {visible} "
            f"(CUDA_VISIBLE_DEVICES={shown!r}): give every rank all of its node's GPUs (SLURM: --gpus-per-node "
            f"without --gpus-per-task, or srun --gpu-bind=none), one rank per GPU"
        )


def close_process_group() -> None:
    """Shut the process group down while the interpreter is still whole. A process that exits with
    it alive can abort in its last moment ("terminate called without an active exception", exit
    -6, seen in CI after a finished run): gloo's worker threads still hold work whose tensors are
    freed during finalisation. Registered at exit by `init_distributed`; a no-op once torn down."""
    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def unlink_shm_buffer() -> None:
    """DeepSpeed's CPU shared-memory allreduce creates /dev/shm/deepspeed_allreduce_buffer_{uid}_
    {addr}_{port}_{rank} (66 MB per rank) and never removes it. Each rank maps every peer's buffer
    while the process group starts, so once all ranks are past that (the barrier), each can unlink
    its own name; the mappings stay valid until the processes end. A world of one creates one too
    (under the deepspeed launcher): nothing to wait for then."""
    if dist.get_world_size() > 1:
        dist.barrier()
    port, rank = os.environ.get("MASTER_PORT", ""), dist.get_rank()
    for path in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_{rank}"):
        with contextlib.suppress(OSError):
            path.unlink()


def share_cpu_cores(world: int) -> None:
    """CPU ranks on one machine must split its cores: with every rank running as many threads as
    there are cores, OpenMP threads spin against each other. An explicit OMP_NUM_THREADS is left alone."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    local = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or world)
    threads = max(1, len(os.sched_getaffinity(0)) // max(1, local))
    if torch.get_num_threads() > threads:
        torch.set_num_threads(threads)


def collective_device() -> torch.device:
    """The device whose tensors the default group's collectives take. NCCL reduces CUDA tensors only
    (torch's Backend.backend_capability: a CPU tensor fails with "No backend type associated with
    device type cpu"), so on GPUs a CPU figure (a loss sum, a failure flag) goes through the rank's
    GPU; gloo, MPI, UCC and a device:backend list with a cpu entry take CPU tensors as they are."""
    kind = collective_device_type(str(dist.get_backend()))
    if kind == "cpu":
        return torch.device("cpu")
    module = getattr(torch, kind, None)  # torch.cuda, torch.xpu: the device this rank set
    return torch.device(kind, module.current_device() if hasattr(module, "current_device") else 0)


def collective_device_type(backend: str) -> str:
    """ "cpu" where `backend` (a process group's, as dist.get_backend() names it) takes CPU tensors,
    else the first device type it takes."""
    backend = backend.lower()
    if ":" in backend:  # e.g. "cpu:gloo,cuda:nccl"
        types = [pair.split(":")[0].strip() for pair in backend.split(",")]
    else:
        types = list(dist.Backend.backend_capability.get(backend, ["cpu"]))
    return "cpu" if "cpu" in types else types[0]


def all_reduce_(t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """`t` reduced over all ranks in place, on whatever device it lives (collective; a world of one:
    nothing to do). A CPU tensor travels through the rank's GPU where the backend needs one."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        device = collective_device()
        if t.device == device:
            dist.all_reduce(t, op=op)
        else:
            moved = t.to(device)
            dist.all_reduce(moved, op=op)
            t.copy_(moved)
    return t


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    return all_reduce_(t, dist.ReduceOp.SUM)


def broadcast_packed(tensors: dict[str, torch.Tensor] | None, meta: str | None, device: torch.device):
    """Send rank 0's named tensors and a text from rank 0 to every rank (collective). NCCL moves
    device tensors only, so they travel through `device` and come back to the CPU."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return tensors, meta
    if dist.get_rank() == 0:
        header = json.dumps({"meta": meta, "tensors": [[k, str(v.dtype), list(v.shape)] for k, v in tensors.items()]})
        raw = torch.frombuffer(bytearray(header.encode()), dtype=torch.uint8)
        size = torch.tensor([raw.numel()], dtype=torch.int64)
    else:
        size = torch.zeros(1, dtype=torch.int64)
    size = size.to(device)
    dist.broadcast(size, 0)
    buf = raw.to(device) if dist.get_rank() == 0 else torch.empty(int(size.item()), dtype=torch.uint8, device=device)
    dist.broadcast(buf, 0)
    header = json.loads(buf.cpu().numpy().tobytes().decode())
    out = {}
    for name, dtype, shape in header["tensors"]:
        dt = getattr(torch, dtype.removeprefix("torch."))
        t = tensors[name].to(device) if dist.get_rank() == 0 else torch.empty(shape, dtype=dt, device=device)
        dist.broadcast(t, 0)
        out[name] = t.cpu()
    return out, header["meta"]


def broadcast_object(obj, src: int = 0):
    """A small picklable object from `src` to every rank (collective)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
