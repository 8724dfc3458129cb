"""Per-layer loading under ZeRO-3: no rank ever holds the whole model.

transformers loads the whole (quantised) model on every rank before ``deepspeed.initialize``
partitions it (DeepSpeed issues 5637/5660): ~36-40 GB per GPU for 70B at load time. Here the
model is built on the meta device, then each unit (the embedding, each decoder layer, the final
norm, the output head) is read from the safetensors shards, its linear weights quantised to NF4
one matrix at a time (with bitsandbytes, exactly as transformers would: the same ``Params4bit``
call on the same tensor), and the unit is partitioned over the ranks with ``deepspeed.zero.Init``
before the next one is read. Peak memory per rank is about (model bytes / world) + one unit.
``deepspeed.initialize`` then finds the backbone already partitioned and converts only the adapter.
"""

from __future__ import annotations

import torch
from torch import nn

from adept_dist.model.backbone import ModelError, freeze, load_config

SKIP_QUANT = ("lm_head",)  # transformers keeps the output head unquantised


def _units(model) -> list[tuple[str, nn.Module]]:
    """The loading units in checkpoint order: embed, each decoder layer, the rest, the head."""
    names = {m: n for n, m in model.named_modules()}
    decoder = model.get_decoder()
    units = []
    for child_name, child in decoder.named_children():
        prefix = f"{names[decoder]}.{child_name}" if names[decoder] else child_name
        if isinstance(child, nn.ModuleList):
            units += [(f"{prefix}.{i}", layer) for i, layer in enumerate(child)]
        elif any(True for _ in child.parameters()):
            units.append((prefix, child))
    head = model.get_output_embeddings()
    if head is not None and head.weight is not model.get_input_embeddings().weight:
        units.append((names[head], head))
    return units


def release_freed_memory() -> None:
    """Give the heap's freed pages back to the OS. glibc keeps the freed full-size tensors of each
    unit in its arenas; without this the RSS grows by about one unit per unit (docs/SPEED.md)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc: nothing to do
        pass


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, module)


def quantize_linear(linear: nn.Linear, weight: torch.Tensor, dtype: torch.dtype, device: torch.device):
    """An NF4 Linear4bit holding `weight`, quantised by bitsandbytes as transformers' loader does."""
    from adept_dist.model.backbone import import_bitsandbytes

    bnb = import_bitsandbytes()

    q = bnb.nn.Linear4bit(
        linear.in_features, linear.out_features, bias=linear.bias is not None, compute_dtype=dtype,
        compress_statistics=True, quant_type="nf4", quant_storage=dtype, device="meta",
    )  # fmt: skip
    q.weight = bnb.nn.Params4bit(weight.to(dtype), requires_grad=False, **q.weight.__dict__).to(device)
    return q


def load_layerwise(
    name: str,
    quant: str,
    device: torch.device,
    dtype: torch.dtype,
    ds_config: dict,
    attn_implementation: str = "sdpa",
    activation_checkpointing: bool = False,
    log=lambda s: None,
    group=None,
):
    """The frozen backbone, quantised and ZeRO-3-partitioned one unit at a time (collective), over
    `group` (a process group: each parameter then all-gathers over it only; None: every rank)."""
    import deepspeed
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from adept_dist.model.backbone import find_key, model_folder, shard_map

    config = load_config(name)  # a local folder's weight files are checked here, naming a damaged one
    folder = model_folder(name)  # the folder itself, or a hub snapshot (checked there)
    # a .bin-only model is refused here, before anything is built; transformers reads .bin itself
    reader, other = "the layerwise loader (the default under ZeRO-3)", "pass --loader transformers, or "
    where, _ = shard_map(folder, name, reader, other)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    model.requires_grad_(False)
    tied = model.get_output_embeddings() is not None and (
        model.get_output_embeddings().weight is model.get_input_embeddings().weight
    )
    units = _units(model)
    for prefix, unit in units:
        params = dict(unit.named_parameters())
        keys = {p: find_key(where, f"{prefix}.{p}") for p in params}
        missing = [f"{prefix}.{p}" for p, k in keys.items() if k is None]
        if missing:
            raise ModelError(
                f"{folder}: the checkpoint lacks {', '.join(missing[:3])}: is it a {config.model_type} model?"
            )
        by_shard: dict[str, list[str]] = {}
        for p, k in keys.items():
            by_shard.setdefault(where[k], []).append(p)
        linears = {n for n, m in unit.named_modules() if isinstance(m, nn.Linear)} if quant == "nf4" else set()
        linears = {n for n in linears if not any(s in f"{prefix}.{n}" for s in SKIP_QUANT)}
        for shard, names in by_shard.items():
            with safe_open(str(folder / shard), "pt", device="cpu") as f:  # reopened per unit: no mapping lingers
                for p in names:
                    tensor = f.get_tensor(keys[p])
                    owner, _, attr = p.rpartition(".")
                    if owner in linears and attr == "weight":
                        linear = unit.get_submodule(owner)
                        q = quantize_linear(linear, tensor.to(device), dtype, device)
                        if linear.bias is not None:
                            q.bias = linear.bias
                        _set_module(unit, owner, q)
                    else:
                        target = unit.get_submodule(owner) if owner else unit
                        setattr(target, attr, nn.Parameter(tensor.to(device, dtype), requires_grad=False))
                    del tensor
        for q_owner in linears:  # biases of quantised linears (Qwen2's q/k/v) come as plain parameters
            lin = unit.get_submodule(q_owner)
            if lin.bias is not None and lin.bias.device.type == "meta":
                raise ModelError(f"{folder}: bias of {prefix}.{q_owner} was not loaded")
        deepspeed.zero.Init(
            module=unit, config_dict_or_path=ds_config, data_parallel_group=group
        )  # before the next unit
        release_freed_memory()
    if tied:
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
    # non-persistent buffers (rotary inv_freq) are computed from the config, not stored
    for mod_name, module in model.named_modules():
        for buf_name, buf in list(module.named_buffers(recurse=False)):
            if buf.device.type == "meta":
                if "rotary" not in mod_name:
                    raise ModelError(f"cannot rebuild buffer {mod_name}.{buf_name} of {config.model_type}")
                with torch.device(device):
                    fresh = type(module)(config=config)
                _set_module(model, mod_name, fresh)
                break
    freeze(model)
    if activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    where = "the ranks" if group is None else f"the {torch.distributed.get_world_size(group)} ranks of its group"
    log(f"loaded {len(units)} units layer by layer, each partitioned over {where} as it was read")
    return model


def partition_adapter(adapter: nn.Module, ds_config: dict) -> None:
    """Partition the trainable adapter over every rank before the engine starts. DeepSpeed converts a
    module it finds unpartitioned with the group of the model's first ZeRO parameter: with a
    node-local backbone the adapter would then be partitioned, and its gradients averaged, per node
    only, and the nodes would drift apart with no error."""
    import deepspeed

    deepspeed.zero.Init(module=adapter, config_dict_or_path=ds_config)


def check_world_group(named_params) -> None:
    """Every trainable parameter is partitioned (and its gradient reduced) over the world group."""
    import torch.distributed as dist

    world = dist.get_world_size() if dist.is_initialized() else 1
    for name, p in named_params:
        group = getattr(p, "ds_process_group", None)
        if group is not None and dist.get_world_size(group) != world:
            raise RuntimeError(
                f"trainable parameter {name} is partitioned over {dist.get_world_size(group)} of {world} ranks: its "
                f"gradient would be averaged over that group only"
            )
