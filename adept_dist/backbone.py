"""The frozen backbone: a LLaMA-family causal LM from a hub id or a local folder, NF4 or unquantized.

Every parameter is frozen here; the only trainable parameters of a run are the adapter's.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import UserError, first_line

# Decoder-only families that share LLaMA's layout (embed_tokens -> decoder layers -> norm -> lm_head).
SUPPORTED_TYPES = ("llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe")
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
# The families whose layerwise loading is tested bitwise against transformers; MoE experts load through transformers
DENSE_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def resolve_compute_dtype(name: str, device: torch.device) -> str:
    """ "auto" -> bf16 on accelerators, fp32 on CPU (CPUs without bf16 units run bf16 matmuls far
    slower, see the README); an explicit "bf16"/"fp32" stays."""
    if name != "auto":
        return name
    return "fp32" if device.type == "cpu" else "bf16"


class ModelError(UserError, ValueError):
    """A model that cannot be used; the message says why and what to do."""


def resolve_source(name: str) -> str:
    """A local folder stays a path; 'name' or 'org/name' that is no local path is a hub id."""
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"model folder {name} has no config.json: point --model at a Hugging Face model folder")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(f"model path {name} does not exist: check --model (a local folder or a hub id like org/name)")
    return name


def load_config(name: str):
    from transformers import AutoConfig

    source = resolve_source(name)
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot load model config for {name!r} ({first_line(exc)}); give a local model folder or a hub id this machine can reach"
        ) from None
    if getattr(config, "is_encoder_decoder", False) or config.model_type not in SUPPORTED_TYPES:
        raise ModelError(
            f"model {name!r} is a {config.model_type!r} model, not a decoder-only LLaMA-family causal LM "
            f"(supported: {', '.join(SUPPORTED_TYPES)})"
        )
    return config


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(resolve_source(name))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the tokenizer of {name!r}: {first_line(exc)}") from None
    if tok.pad_token_id is None:  # LLaMA has none; the pad id is only filler, masks do the work
        tok.pad_token = tok.eos_token if tok.unk_token is None else tok.unk_token
    return tok


def freeze(model) -> None:
    """Freeze every parameter, turn the KV cache off, and keep bitsandbytes from repacking NF4
    weights for AVX512-BF16 CPUs (bitsandbytes >= 0.50 does it at the first eval-mode forward
    whose input needs no gradient; the repacked weights have no autograd path, so every later
    training step would silently give the adapter zero gradient)."""
    model.requires_grad_(False)
    model.config.use_cache = False
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def quantization_config(quant: str, dtype: torch.dtype = torch.bfloat16):
    if quant == "none":
        return None
    if quant != "nf4":
        raise ModelError(f"quantization {quant!r} is not supported under ZeRO-3: use nf4 or none")
    from transformers import BitsAndBytesConfig

    # Storage dtype == compute dtype: DeepSpeed casts floating parameters of modules not built under
    # zero.Init to its dtype, so packed NF4 bytes must already be in that dtype or they are destroyed.
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
        bnb_4bit_quant_storage=dtype,
    )


def load_backbone(
    name: str,
    quant: str,
    device: torch.device,
    attn_implementation: str = "sdpa",
    activation_checkpointing: bool = False,
    dtype: torch.dtype = torch.bfloat16,
):
    """Load, quantize and freeze the backbone on `device`; every parameter ends with requires_grad False."""
    from transformers import AutoModelForCausalLM

    config = load_config(name)
    model = AutoModelForCausalLM.from_pretrained(
        resolve_source(name),
        config=config,
        dtype=dtype,
        quantization_config=quantization_config(quant, dtype),
        device_map={"": device},
        attn_implementation=attn_implementation,
    )
    freeze(model)
    if activation_checkpointing:
        # Non-reentrant: the gradient reaches the adapter through inputs_embeds, not through weights.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model
