"""What a plan is worked out for: the model's shape, the workload, ZeRO's settings, the cluster."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from adept_dist.common.errors import UserError
from adept_dist.config.resolve import PACK_TOKENS_MIN
from adept_dist.data.examples import pack_rows
from adept_dist.model.adapters import METHODS

DTYPE_BYTES = {"bf16": 2, "fp32": 4}
NF4_BLOCK = 64  # weights per absmax (bitsandbytes' default blocksize for 4-bit)
NESTED_BLOCK = 256  # absmaxes per fp32 absmax of the double quantisation
CODE_BYTES = 256 * 4 + 16 * 4 + 8  # the 8-bit dynamic map, the NF4 table, the offset (per linear)
ZERO2_ALIGN = 2  # ZeRO-1/2 pad each flat group to a multiple of 2 x ranks (nccl_start_alignment_factor)
DEFAULT_HEADROOM = 0.10


class PlanError(UserError, ValueError):
    """A model or layout the planner cannot work out; the message says what to give instead."""


UNITS = {"": 10**9, "gb": 10**9, "gib": 2**30, "mb": 10**6, "mib": 2**20, "tb": 10**12, "tib": 2**40}


def memory_size(text: str, what: str = "--gpu_memory") -> int:
    """'80GB' (10^9), '40GiB' (2^30), '24' (GB) -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in UNITS:
        raise PlanError(f"{what} {text!r}: give a size such as 80GB, 40GiB or 24")
    return int(float(m.group(1)) * UNITS[m.group(2).lower()])


@dataclass(frozen=True)
class Shape:
    """The sizes of a LLaMA-family decoder that memory and traffic depend on."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool = False  # the output head is the input embedding
    head_dim: int = 0  # 0: hidden // heads
    qkv_bias: bool = False  # Qwen2's q/k/v biases
    name: str = ""

    @property
    def hd(self) -> int:
        return self.head_dim or self.hidden // self.heads

    def linears(self) -> list[tuple[str, int, int]]:
        """(name, out, in) of one decoder layer's linears, in the order forward runs them."""
        d, f, q, kv = self.hidden, self.intermediate, self.heads * self.hd, self.kv_heads * self.hd
        return [("q_proj", q, d), ("k_proj", kv, d), ("v_proj", kv, d), ("o_proj", d, q),
                ("gate_proj", f, d), ("up_proj", f, d), ("down_proj", d, f)]  # fmt: skip


# LLaMA-2's published shapes, so plans (and the tables in docs/PLAN.md) need no download
SHAPES = {
    "llama-2-7b": Shape(4096, 11008, 32, 32, 32, 32000, name="llama-2-7b"),
    "llama-2-13b": Shape(5120, 13824, 40, 40, 40, 32000, name="llama-2-13b"),
    "llama-2-70b": Shape(8192, 28672, 80, 64, 8, 32000, name="llama-2-70b"),
}


def read_shape(model: str) -> Shape:
    """A shorthand of SHAPES, a model folder holding config.json, or a config.json file."""
    if model in SHAPES:
        return SHAPES[model]
    path = Path(model).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise PlanError(
            f"--model {model}: no such config.json or model folder; give a local model folder, its config.json, or "
            f"one of {', '.join(SHAPES)}"
        )
    try:
        cfg = json.loads(path.read_text())
    except ValueError as exc:
        raise PlanError(f"{path} is not JSON ({exc}): give a model's config.json") from None
    return shape_of(cfg, str(path), default_name=path.parent.name)


def shape_of(cfg: dict, where: str, default_name: str = "") -> Shape:
    """The Shape of a config.json's dict (a transformers config's to_dict() too)."""
    try:
        hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        return Shape(
            hidden=hidden,
            intermediate=int(cfg["intermediate_size"]),
            layers=int(cfg["num_hidden_layers"]),
            heads=heads,
            kv_heads=int(cfg.get("num_key_value_heads") or heads),
            vocab=int(cfg["vocab_size"]),
            tied=bool(cfg.get("tie_word_embeddings", False)),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            qkv_bias=bool(cfg.get("attention_bias", cfg.get("model_type") == "qwen2")),
            name=str(cfg.get("_name_or_path") or default_name),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise PlanError(f"{where} is not a LLaMA-family config.json ({type(exc).__name__}: {exc}); give one that "
                        f"has hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, vocab_size"
                        ) from None  # fmt: skip


@dataclass(frozen=True)
class Workload:
    """What one rank runs per micro-batch, as the trainer's options set it."""

    max_length: int = 1024
    micro_batch: int = 8
    grad_accum: int = 1
    method: str = "adept"
    prompt_length: int | None = None  # None: 60 (adept, dept) or 100 (pt), as config.py
    offset_rank: int | None = None  # None: the budget-matched rank (adapters.py)
    activation_checkpointing: bool = False
    compute_dtype: str = "bf16"
    quant: str = "nf4"
    packing: bool | None = None  # None: on except for dept, as config.py
    pack_tokens: int | None = None  # None: max(4096, m + max_length)
    example_tokens: int | None = None  # tokens per example; None: max_length (the worst case)
    target_tokens: int | None = None  # target tokens per example; None: all of them (the worst case)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise PlanError(f"--method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.compute_dtype not in DTYPE_BYTES:
            raise PlanError(f"--compute_dtype {self.compute_dtype!r}: choose bf16 or fp32")
        if min(self.max_length, self.micro_batch, self.grad_accum) < 1:
            raise PlanError("--max_length, --micro_batch and --grad_accum must be at least 1")

    @property
    def m(self) -> int:
        return self.prompt_length if self.prompt_length is not None else (100 if self.method == "pt" else 60)

    @property
    def b(self) -> int:
        return DTYPE_BYTES[self.compute_dtype]

    def tokens(self) -> tuple[int, int, int, int]:
        """(rows, row length, input tokens, target tokens) of a micro-batch: packed rows of pack_tokens
        (each opening with the m prompt slots its examples share, data.pack), or one padded row each."""
        n = min(self.example_tokens or self.max_length, self.max_length)
        targets = self.micro_batch * min(self.target_tokens or n, n)
        packing = self.packing if self.packing is not None else self.method != "dept"
        if not packing:
            width = self.m + (self.max_length if self.method == "dept" else n)  # dept pads to max_length
            return self.micro_batch, width, self.micro_batch * n, targets
        pack_tokens = self.pack_tokens or max(PACK_TOKENS_MIN, self.m + self.max_length)
        rows = pack_rows([n] * self.micro_batch, self.m, pack_tokens)
        return len(rows), self.m + max(len(r) for r in rows) * n, self.micro_batch * n, targets


@dataclass(frozen=True)
class Zero:
    """The DeepSpeed JSON's settings that memory and traffic depend on (DeepSpeed's defaults)."""

    persistence_threshold: int = 100_000
    prefetch_bucket: int = 50_000_000
    max_live: int = 1_000_000_000
    max_reuse: int = 1_000_000_000
    reduce_bucket: int = 500_000_000
    contiguous_gradients: bool = True
    overlap_comm: bool | None = None  # None: DeepSpeed's default, on for stage 3, off for stages 0-2

    @classmethod
    def from_ds(cls, ds: dict) -> Zero:
        z = ds.get("zero_optimization", {})
        keys = {"persistence_threshold": "stage3_param_persistence_threshold",
                "prefetch_bucket": "stage3_prefetch_bucket_size", "max_live": "stage3_max_live_parameters",
                "max_reuse": "stage3_max_reuse_distance", "reduce_bucket": "reduce_bucket_size"}  # fmt: skip
        given = {ours: int(float(z[theirs])) for ours, theirs in keys.items() if z.get(theirs, "auto") != "auto"}
        overlap = z.get("overlap_comm")
        return cls(**given, contiguous_gradients=bool(z.get("contiguous_gradients", True)),
                   overlap_comm=None if overlap in (None, "auto") else bool(overlap))  # fmt: skip


@dataclass(frozen=True)
class Cluster:
    nodes: int
    gpus_per_node: int
    gpu_memory: int  # bytes
    group_size: int | None = None  # node scope's shard group (ranks); None: a whole node
    headroom: float = DEFAULT_HEADROOM  # share of gpu_memory kept free

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def usable(self) -> int:
        return int(self.gpu_memory * (1 - self.headroom))
