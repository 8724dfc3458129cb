"""The frozen backbone: a LLaMA-family causal LM from a hub id or a local folder, NF4 or unquantized.

Every parameter is frozen here; the only trainable parameters of a run are the adapter's.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import torch

from adept_dist.common.errors import UserError, first_line
from adept_dist.common.imports import import_deferring_compile
from adept_dist.model import gguf

# Decoder-only families that share LLaMA's layout (embed_tokens -> decoder layers -> norm -> lm_head).
SUPPORTED_TYPES = ("llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe")
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
# The families whose layerwise loading is tested bitwise against transformers; MoE experts load through transformers
DENSE_TYPES = ("llama", "mistral", "qwen2", "qwen3")
# The checkpoints transformers reads from a folder, in its order of preference: (index, single file)
SAFETENSORS = ("model.safetensors.index.json", "model.safetensors")
PYTORCH_BIN = ("pytorch_model.bin.index.json", "pytorch_model.bin")
INDEX, SINGLE = SAFETENSORS
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
MAX_HEADER = 100_000_000  # safetensors refuses a longer header; a larger length field is garbage


def resolve_compute_dtype(name: str, device: torch.device) -> str:
    """ "auto" -> bf16 on accelerators, fp32 on CPU (CPUs without bf16 units run bf16 matmuls far
    slower, see docs/OPTIONS.md); an explicit "bf16"/"fp32" stays."""
    if name != "auto":
        return name
    return "fp32" if device.type == "cpu" else "bf16"


class ModelError(UserError, ValueError):
    """A model that cannot be used; the message says why and what to do."""


def resolve_source(name: str) -> str:
    """A local folder stays a path; 'name' or 'org/name' that is no local path is a hub id; a
    .gguf file becomes its converted folder (converted on first use, see gguf_model)."""
    if gguf.is_gguf(name):
        return str(gguf.converted_folder(name))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"model folder {name} has no config.json: point --model at a Hugging Face model folder")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(f"model path {name} does not exist: check --model (a local folder or a hub id like org/name)")
    return name


def weight_files(folder: Path) -> list[Path]:
    """The weight files transformers would read from a model folder: the safetensors checkpoint
    (its index's shards, or the single file), else the PyTorch .bin one; [] when there is neither."""
    for index, single in (SAFETENSORS, PYTORCH_BIN):
        if (folder / single).is_file():  # transformers' order: the single file before an index
            return [folder / single]
        if (folder / index).is_file():
            try:
                names = json.loads((folder / index).read_text())["weight_map"].values()
                return [folder / n for n in sorted(set(names))]
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ModelError(
                    f"model file {folder / index} is corrupt ({first_line(exc)}): download it again"
                ) from None
    return []


def safetensors_size(path: Path) -> tuple[int, str] | None:
    """The byte size a safetensors file's header says it has (8 + header + the largest data end),
    "needs" or, for a file cut inside its header, "needs at least"; None when the header does not
    parse. Reads the header only."""
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return 8, "needs at least"
        n = int.from_bytes(head, "little")
        if n > MAX_HEADER:
            return None
        raw = f.read(n)
    if len(raw) < n:
        return 8 + n, "needs at least"
    try:
        header = json.loads(raw)
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        return 8 + n + max(ends, default=0), "needs"
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        return None


def check_weight_files(folder: Path) -> None:
    """Refuse a damaged checkpoint before anything is loaded, naming the file: both loaders would
    otherwise fail deep inside safetensors or torch with a message that names none. Every shard of
    the index exists; a safetensors file is exactly as long as its header says (safetensors refuses
    any other length); a .bin zip archive still has its directory, which sits at the end (any cut
    loses it). Reads headers only, so it is cheap even for 70B shards."""
    for path in weight_files(folder):
        if not path.is_file():
            raise ModelError(f"model file {path} is missing (the checkpoint's index names it): download it again")
        size = path.stat().st_size
        if path.suffix == ".safetensors":
            expected = safetensors_size(path)
            if expected is None:
                raise ModelError(
                    f"model file {path} is corrupt (its safetensors header does not parse): download it again"
                )
            need, how = expected
            if need != size:
                raise ModelError(
                    f"model file {path} is truncated or corrupt ({size} bytes, its header {how} {need}): download it again"
                )
        else:
            with path.open("rb") as f:
                zipped = f.read(4) == b"PK\x03\x04"  # torch.save's format since 1.6; older pickles are not checked
            if zipped and not zipfile.is_zipfile(path):
                raise ModelError(
                    f"model file {path} is truncated or corrupt ({size} bytes, its zip directory is missing): "
                    f"download it again"
                )


def convert_command(name: str) -> str:
    """The one command that re-saves a model (e.g. one with .bin weights only) as safetensors, with its tokenizer."""
    local = Path(name).expanduser().is_dir()
    target = f"{name.rstrip('/')}-safetensors" if local else f"{name.rsplit('/', 1)[-1]}-safetensors"
    return (
        f'python -c "from transformers import AutoModelForCausalLM as M, AutoTokenizer as T; '
        f"M.from_pretrained('{name}', dtype='auto').save_pretrained('{target}'); "
        f"T.from_pretrained('{name}').save_pretrained('{target}')\", then --model {target}"
    )


def model_folder(name: str) -> Path:
    """A local folder with the model's files: the folder itself, or a hub snapshot (cache first)."""
    source = resolve_source(name)
    if Path(source).is_dir():
        return Path(source)
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(source, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except Exception as exc:  # noqa: BLE001 - any hub failure is one message
        raise ModelError(
            f"cannot fetch the files of {name!r} ({first_line(exc)}): give --model a local model folder"
        ) from None
    check_weight_files(folder)  # a local folder's were checked by load_config already
    return folder


def shard_map(
    folder: Path, name: str, reader: str = "the merged export", other: str = ""
) -> tuple[dict[str, str], dict | None]:
    """tensor name -> shard file name, and the index (None for a single-file checkpoint). `reader`
    (who needs safetensors) and `other` (another way out) make the refusal of a .bin-only model
    say what the user ran and how to fix it."""
    from safetensors import safe_open

    if (folder / SINGLE).is_file():  # transformers' order: the single file before an index
        with safe_open(str(folder / SINGLE), "pt") as f:
            return {k: SINGLE for k in f.keys()}, None
    if (folder / INDEX).is_file():
        index = json.loads((folder / INDEX).read_text())
        return dict(index["weight_map"]), index
    found = sorted(p.name for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES or p.name.endswith(".index.json"))
    raise ModelError(
        f"model {name} has no safetensors weights ({SINGLE} or {INDEX}; found: {', '.join(found) or 'no weight files'}"
        f" in {folder}): {reader} reads safetensors only; {other}convert the model once: {convert_command(name)}"
    )


def find_key(keys, name: str) -> str | None:
    """The checkpoint key of a parameter (exact, or saved without/with a wrapper prefix)."""
    if name in keys:
        return name
    tail = name.split(".", 1)[-1]
    hits = [k for k in keys if k == tail or k.endswith("." + tail)]
    return hits[0] if len(hits) == 1 else None


def load_config(name: str):
    """The model's config; a local folder's weight files are checked here too (headers only), so a
    damaged download is refused before any data is read or any weight is loaded."""
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
    if Path(source).is_dir():
        check_weight_files(Path(source))
    return config


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    source = resolve_source(name)
    try:
        tok = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        bad = unreadable_json(Path(source)) if Path(source).is_dir() else None
        if bad is not None:  # the parser's message names no file
            raise ModelError(
                f"cannot load the tokenizer of {name!r}: {bad} is not valid JSON: download it again"
            ) from None
        raise ModelError(f"cannot load the tokenizer of {name!r}: {first_line(exc)}") from None
    if tok.pad_token_id is None:  # LLaMA has none; the pad id is only filler, masks do the work
        tok.pad_token = tok.eos_token if tok.unk_token is None else tok.unk_token
    return tok


def unreadable_json(folder: Path) -> Path | None:
    """The first JSON file of a folder that does not parse (a truncated tokenizer.json, ...), if any."""
    for path in sorted(folder.glob("*.json")):
        try:
            json.loads(path.read_text())
        except (ValueError, OSError):
            return path
    return None


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


def quant_state_bytes(model) -> int:
    """Bytes of the NF4 quantisation statistics (bitsandbytes' QuantState: absmax, nested absmax and
    codebooks) of a model's weights. A Python attribute, not a parameter: ZeRO-3 does not partition
    it, so every rank holds all of it. Per matrix of n weights (blocks of 64, absmax blocks of 256):
    n/64 (uint8 absmax) + 4*ceil(n/16384) (fp32 nested absmax) + 1092 (fp32 codebooks 256 + 16, offset)."""
    seen: dict[int, int] = {}

    def walk(state) -> None:
        for value in vars(state).values():
            if isinstance(value, torch.Tensor) and value.numel():
                seen[value.data_ptr()] = value.numel() * value.element_size()
            elif hasattr(value, "absmax"):  # the nested QuantState of the absmax
                walk(value)

    for p in model.parameters():
        if getattr(p, "quant_state", None) is not None:
            walk(p.quant_state)
    return sum(seen.values())


def import_bitsandbytes():
    """bitsandbytes, imported with its torch.compile calls deferred to each function's first call
    (common.imports). Its default backend decorates a few functions with torch.compile at import,
    for fallback kernels that the CUDA and CPU backends replace with their own (NF4 quantize and
    dequantize) or that only its optimisers use. Import it through here before transformers or
    PEFT do (they import it as it is)."""
    return import_deferring_compile("bitsandbytes")


def quantization_config(quant: str, dtype: torch.dtype = torch.bfloat16):
    if quant == "none":
        return None
    if quant != "nf4":
        raise ModelError(f"quantization {quant!r} is not supported under ZeRO-3: use nf4 or none")
    import_bitsandbytes()  # before transformers imports it
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
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    config = load_config(name)  # a local folder's weight files are checked here, naming a damaged one
    try:
        model = AutoModelForCausalLM.from_pretrained(
            resolve_source(name),
            config=config,
            dtype=dtype,
            quantization_config=quantization_config(quant, dtype),
            device_map={"": device},
            attn_implementation=attn_implementation,
        )
    except (OSError, SafetensorError) as exc:  # no weights in the folder, a damaged hub download
        raise ModelError(
            f"cannot load the weights of {name!r} ({first_line(exc, 300)}): download the model again"
        ) from None
    freeze(model)
    if activation_checkpointing:
        # Non-reentrant: the gradient reaches the adapter through inputs_embeds, not through weights.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model
