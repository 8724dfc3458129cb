"""Run under `deepspeed --num_gpus N` (CPU, gloo) by tests/test_distributed.py.

Builds a run through the real code path (adept_dist.run.build.prepare / assemble) with an NF4
backbone under ZeRO-3, and BEFORE DeepSpeed touches it computes a single-process reference on
each rank: the same global batch (every micro-batch of every rank), the adapter cast to the compute
dtype exactly as DeepSpeed's module holds it, loss summed over target tokens / N, fp32 gradient
accumulation. Then one distributed forward/backward; rank 0 writes what both gave to a JSON file.

The reference lays out its micro-batches as the run does (packed or padded, `packing`); that the
two layouts agree is tests/test_model.py's.

    deepspeed --num_gpus 2 tests/dist_check.py MODEL_DIR TRAIN_JSONL DS_JSON OUT_DIR RESULT_JSON {bf16,fp32} {packed,padded} [SCOPE]

SCOPE (--shard_scope, e.g. node) runs with --ranks_per_node 2.
"""

from __future__ import annotations

import json
import sys

import torch


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]  # the launcher adds it
    model_dir, train_file, ds_json, out_dir, result_path, dtype, layout, *scope = args
    from deepspeed.utils import safe_get_full_grad

    from adept_dist.distributed.zero import gathered
    from adept_dist.model.adapters import build_adapter
    from adept_dist.model.backbone import DTYPES, load_backbone, load_config

    def backbone_hidden(path: str) -> int:
        return load_config(path).hidden_size

    from adept_dist.config.resolve import make_config
    from adept_dist.data.examples import collate, pack, step_batches
    from adept_dist.distributed.comm import init_distributed
    from adept_dist.model.lm import AdeptLM
    from adept_dist.run.build import assemble, prepare
    from adept_dist.run.loop import forward_backward

    d = init_distributed()
    cfg = make_config(
        {
            "model": model_dir,
            "train_file": train_file,
            "ds_config": ds_json,
            "output_dir": out_dir,
            "dropout": 0.0,
            "compute_dtype": dtype,
            "micro_batch_size": 3,
            "grad_accum": 2,
            "max_steps": 10,
            "warmup_steps": 1,
            "packing": layout == "packed",
            **({"shard_scope": scope[0], "ranks_per_node": 2} if scope else {}),
        }
    )
    parts = prepare(cfg, d)
    adapter = parts.model.adapter  # partitioned already with scope node (loader.partition_adapter): gathered here
    with gathered(list(adapter.parameters()), modifier_rank=0), torch.no_grad():
        g = torch.Generator().manual_seed(
            1
        )  # at init B = b = 0 and A, a get no gradient: move off init so all five are tested
        for p in (adapter.B, adapter.b):
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        whole = {n: p.detach().clone() for n, p in adapter.named_parameters()}
    a = cfg.adapter
    ref_adapter = build_adapter(a.method, a.prompt_length, backbone_hidden(model_dir), a.offset_rank, cfg.data.max_length,
                                a.dropout)  # fmt: skip
    ref_adapter.load_state_dict(whole, strict=False)
    assert set(whole) == {n for n, _ in ref_adapter.named_parameters()}

    # ---- single-process reference, no DeepSpeed, no communication
    backbone = load_backbone(model_dir, "nf4", d.device, dtype=DTYPES[dtype])
    ref = AdeptLM(backbone, ref_adapter.to(DTYPES[dtype]))
    grads = {n: torch.zeros(p.shape) for n, p in ref.adapter.named_parameters()}
    loss_sum, n_target = 0.0, 0
    for r in range(d.world):
        mine, global_idx = step_batches(parts.stream, 0, 3, 2, d.world, r)
        n_target = sum(parts.train_examples[i].n_target for i in global_idx)
        for idx in mine:
            examples = [parts.train_examples[i] for i in idx]
            if cfg.data.packing:
                batch = pack(examples, cfg.adapter.prompt_length, cfg.data.pack_tokens)
            else:
                batch = collate(examples, parts.tokenizer.pad_token_id)
            loss, _ = ref(**batch)
            (loss / n_target).backward()
            loss_sum += loss.item()
            for n, p in ref.adapter.named_parameters():
                grads[n] += p.grad.float()
                p.grad = None
    ref_loss = loss_sum / n_target
    del ref

    # ---- the real distributed step
    run = assemble(parts)
    engine = run.engine
    zero_stage = engine.zero_optimization_stage()
    rec = forward_backward(run)
    errors = {}
    for n, p in run.model.adapter.named_parameters():
        g = safe_get_full_grad(p).float().cpu()
        errors[n] = ((g - grads[n]).norm() / grads[n].norm().clamp(min=1e-30)).item()

    # ---- what each rank holds of the packed NF4 backbone
    local, full = 0, 0
    for p in run.model.backbone.parameters():
        if type(p).__name__ == "Params4bit":
            local += p.ds_tensor.numel() * p.element_size() if hasattr(p, "ds_tensor") else p.numel() * p.element_size()
            full += (p.ds_numel if hasattr(p, "ds_numel") else p.numel()) * p.element_size()
    held = [None] * d.world
    torch.distributed.all_gather_object(held, {"rank": d.rank, "local_bytes": local, "full_bytes": full})
    frozen = all(not p.requires_grad for p in run.model.backbone.parameters())
    opt_numel = (
        sum(int(getattr(p, "ds_numel", p.numel())) for g in engine.optimizer.param_groups for p in g["params"])
        if zero_stage < 3
        else None
    )
    if d.main:
        result = {
            "world": d.world,
            "scope": run.cfg.run.shard_scope,
            "adapter_groups": sorted(
                {
                    torch.distributed.get_world_size(p.ds_process_group)
                    for p in run.model.adapter.parameters()
                    if hasattr(p, "ds_process_group")
                }
            ),
            "zero_stage": zero_stage,
            "packing": run.cfg.data.packing,
            "loss": rec["loss"],
            "ref_loss": ref_loss,
            "grad_rel_err": errors,
            "ref_grad_norm": {n: g.norm().item() for n, g in grads.items()},
            "held": held,
            "backbone_frozen": frozen,
            "opt_numel": opt_numel,
            "adapter_numel": sum(v.numel() for v in grads.values()),
        }
        with open(result_path, "w") as f:
            json.dump(result, f, indent=2)
    torch.distributed.barrier()


if __name__ == "__main__":
    from adept_dist.common.errors import exit_process

    main()
    exit_process(0)  # as the commands end: no interpreter finalisation with gloo's threads alive
