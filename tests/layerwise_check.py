"""Run under the deepspeed launcher (2 ranks): the layerwise loader against the transformers path.

For every parameter, the gathered full tensor equals what transformers + bitsandbytes load (bitwise,
packed NF4 bytes and QuantState included), each rank holds only its partition, and the logits
after deepspeed.initialize are the same. Writes one JSON line per rank to argv[-1]."""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adept_dist.distributed.comm import init_distributed
from adept_dist.distributed.zero import gathered
from adept_dist.model.backbone import load_backbone
from adept_dist.model.loader import load_layerwise


def bits(t: torch.Tensor) -> torch.Tensor:
    """A tensor's raw bits: packed NF4 bytes in float containers may spell NaN, which equals nothing."""
    return t.contiguous().view(-1).view(torch.uint8)


def main() -> None:
    import bitsandbytes as bnb
    import deepspeed

    name, out = sys.argv[-2], sys.argv[-1]
    d = init_distributed()
    ds = {
        "train_micro_batch_size_per_gpu": 1,
        "train_batch_size": d.world,
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
        "bf16": {"enabled": False},
    }
    model = load_layerwise(name, "nf4", d.device, torch.float32, ds)
    ref = load_backbone(name, "nf4", d.device, dtype=torch.float32)
    ref_params = dict(ref.named_parameters())
    names = [n for n, _ in model.named_parameters()]
    differ, quantized, held, whole = [], 0, 0, 0
    for n, p in model.named_parameters():
        held += p.ds_tensor.numel()
        whole += p.ds_numel
        with gathered([p]):
            full = p.data.clone()
        r = ref_params[n]
        same = full.shape == r.shape and torch.equal(bits(full), bits(r.data)) and type(p) is type(r)
        if isinstance(r, bnb.nn.Params4bit):
            quantized += 1
            a, b = p.quant_state, r.quant_state
            same = same and a.shape == b.shape and torch.equal(a.absmax, b.absmax)
            same = same and torch.equal(a.state2.absmax, b.state2.absmax) and torch.equal(a.code, b.code)
        if not same:
            differ.append(n)
    deepspeed.initialize(model=model, config=ds)
    ids = torch.tensor([[1, 5, 6, 7, 8, 9]])
    with torch.no_grad():
        diff = (model(input_ids=ids).logits - ref(input_ids=ids).logits).abs().max().item()
    record = {"rank": d.rank, "names": sorted(names) == sorted(ref_params), "differ": differ, "quantized": quantized,
              "held": held, "whole": whole, "logit_diff": diff}  # fmt: skip
    with open(f"{out}.{d.rank}", "w") as f:
        f.write(json.dumps(record))


if __name__ == "__main__":
    from adept_dist.common.errors import exit_process

    main()
    exit_process(0)  # as the commands end: no interpreter finalisation with gloo's threads alive
