"""Run at world 1 (torchrun): the gradient-reduction buffers DeepSpeed really allocates, per ZeRO
stage and overlap_comm, for a small model (the plan's "deepspeed_buffers"). ZeRO-2 allocates them as
the first gradient arrives and releases them at the backward's end, ZeRO-3 as the engine starts.
Prints one JSON line: {"STAGE-OVERLAP": {"in_backward": elements held as the backward ends,
"after_step": elements held after the optimizer step}, ...}."""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adept_dist.distributed.comm import init_distributed
from adept_dist.distributed.zero import build_engine

BUCKET = 4096  # elements: above the model's 32 x 32 + 32, so one reduction fills part of one buffer


def held(optimizer) -> int:
    """Elements of every reduce buffer the ZeRO optimizer holds (stage 3: one tensor a bucket; stages 1-2:
    a list of them)."""
    total = 0
    for bucket in optimizer.ipg_buckets.values():
        buffers = bucket.buffer if isinstance(bucket.buffer, list) else [bucket.buffer]
        total += sum(b.numel() for b in buffers if b is not None)
    return total


def main() -> None:
    init_distributed()
    figures = {}
    for stage, overlap in ((2, True), (2, False), (2, None), (3, True), (3, None)):
        zero = {"stage": stage, "contiguous_gradients": True, "reduce_bucket_size": BUCKET}
        if overlap is not None:
            zero["overlap_comm"] = overlap
        ds = {"train_micro_batch_size_per_gpu": 1, "train_batch_size": 1, "zero_optimization": zero,
              "bf16": {"enabled": False}}  # fmt: skip
        torch.manual_seed(0)
        model = torch.nn.Linear(32, 32)
        engine, _, _ = build_engine(model, torch.optim.AdamW(model.parameters(), lr=1e-3), None, ds)
        opt = engine.optimizer
        seen = {"in_backward": held(opt)}  # ZeRO-3 (no release): what it holds from the start
        release = getattr(opt, "_release_ipg_buffers", None)
        if release is not None:  # ZeRO-1/2: what it holds just before it lets the buffers go

            def releasing(release=release, seen=seen, opt=opt):
                seen["in_backward"] = held(opt)
                release()

            opt._release_ipg_buffers = releasing
        engine.backward(engine(torch.randn(1, 32)).pow(2).sum())
        engine.step()
        seen["after_step"] = held(opt)
        figures[f"{stage}-{overlap}"] = seen
        engine.destroy()
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    from adept_dist.common.errors import exit_process

    main()
    exit_process(0)  # as the commands end: no interpreter finalisation with gloo's threads alive
