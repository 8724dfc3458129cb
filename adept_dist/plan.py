"""Memory per GPU and traffic per optimizer step of a training job, for each sharding scope of the
frozen backbone, worked out before the job starts (``adept-plan``, adept_dist/planner.py).

A model of what adept-dist runs (DeepSpeed 0.19.8, bitsandbytes NF4, transformers' LLaMA), checked
against measured runs by launch/bench_plan.py and tests/test_plan.py. Arithmetic on the config's
sizes: no DeepSpeed, no model is built.

Memory per GPU: the bytes the framework allocates at the step's peak (CUDA context, NCCL's buffers
and the allocator's fragmentation are left to the headroom):

- backbone: NF4 linears hold 2 weights a byte, stored as compute-dtype elements (bytes / itemsize;
  quant_storage = compute dtype); embedding, output head and norms stay in the compute dtype.
  ZeRO-3 (global, node) keeps ceil(n / G) elements of each parameter on each of the G ranks of its
  group, and parameters of at most stage3_param_persistence_threshold elements whole (and their
  partition); none keeps everything.
- quantisation statistics: per 64-weight block an absmax, double-quantised to one byte, with an
  fp32 absmax per 256 blocks and the code tables; a Python attribute, not a Parameter, so every rank
  holds all of them whatever the scope.
- gathered parameters: ZeRO-3's all-gathered whole tensors alive at once, from a simulation of
  DeepSpeed's parameter coordinator (`simulate`), and the largest linear de-quantised for its matmul.
- activations: what autograd keeps for the backward to the inputs (frozen NF4 linears keep none of
  their inputs): per decoder layer the norms' fp32 inputs, attention's q, k, v (repeated to every
  head: a mask turns transformers' GQA path off), output, softmax statistics and the mask as an
  additive bias, the MLP's gate, SiLU and up outputs; with activation checkpointing each layer's
  input only, and one layer recomputed at a time. Plus the logits at the target tokens in fp32.
- adapter and Adam: compute-dtype copies, fp32 masters, gradients and the two moments, each
  partitioned over all ranks; DeepSpeed's reduce bucket (reduce_bucket_size elements).

Traffic per optimizer step: the bytes each rank receives from ranks of its own node and of other
nodes, in the ring volumes traffic.py counts (all-gather: the peer's shard; reduce-scatter: the
output; all-reduce: 2 x size / n; from each peer): ZeRO-3's gathers (`simulate`), the adapter's
gradients, the trainer's full_grads, the persistent parameters DeepSpeed gathers after each
optimizer step, the loss. A run's first step gathers more (`LayoutPlan.first_step`).

Not modelled: activation checkpointing's recompute also gathers a layer's attention parameters
again where they are still alive (measured on a 2-layer model: +9% of its gathers; a large model
has released them by then, and the plan counts that gather); with grad_accum > 1 the first step's
later micro-batches gather the persistent parameters once more.
"""

from __future__ import annotations

import collections
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .adapters import METHODS, PT_BUDGET_TOKENS, adept_rank, dept_rank
from .config import PACK_TOKENS_MIN
from .data import pack_rows
from .errors import UserError
from .topology import SCOPES

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

    @classmethod
    def from_ds(cls, ds: dict) -> Zero:
        z = ds.get("zero_optimization", {})
        keys = {"persistence_threshold": "stage3_param_persistence_threshold",
                "prefetch_bucket": "stage3_prefetch_bucket_size", "max_live": "stage3_max_live_parameters",
                "max_reuse": "stage3_max_reuse_distance", "reduce_bucket": "reduce_bucket_size"}  # fmt: skip
        given = {ours: int(float(z[theirs])) for ours, theirs in keys.items() if z.get(theirs, "auto") != "auto"}
        return cls(**given, contiguous_gradients=bool(z.get("contiguous_gradients", True)))


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


# ----------------------------------------------------------------------------- parameters
@dataclass(eq=False)
class Param:
    """One parameter as ZeRO sees it (compared by identity: a tied head is the embedding)."""

    name: str
    numel: int  # elements as stored (a packed NF4 weight: its bytes / itemsize)
    itemsize: int
    group: int  # ranks it is partitioned over (1: whole on every rank)
    persistent: bool = False  # ZeRO-3 keeps it whole on every rank (and gathers it after each step)
    trainable: bool = False
    weights: int = 0  # NF4 weights it packs (0: not quantised)

    @property
    def part(self) -> int:
        """Elements of this rank's partition (ZeRO pads the last)."""
        return -(-self.numel // self.group)

    @property
    def full_bytes(self) -> int:
        return self.numel * self.itemsize

    @property
    def part_bytes(self) -> int:
        return self.part * self.itemsize


def adapter_sizes(shape: Shape, work: Workload) -> dict[str, int]:
    """Elements of each adapter tensor (adapters.py: ADePT prompt + FFN, DePT prompt + A, B, PT prompt)."""
    m, d = work.m, shape.hidden
    if work.method == "pt":
        return {"prompt": m * d}
    if work.method == "dept":
        r = work.offset_rank or dept_rank(m, d, work.max_length)
        return {"prompt": m * d, "A": work.max_length * r, "B": r * d}
    if m >= PT_BUDGET_TOKENS - 1:
        raise PlanError(f"--prompt_length {m} leaves no budget for the ADePT FFN: use 98 or less")
    r = work.offset_rank or adept_rank(m, d)
    return {"prompt": m * d, "A": d * r, "a": r, "B": r * d, "b": d}


@dataclass
class Model:
    """The parameters in the order one forward + backward uses them (ZeRO-3's trace)."""

    embed: Param
    adapter: list[Param]
    layers: list[list[list[Param]]]  # per layer, per module (forward order), its parameters
    norm: Param
    head: Param

    def params(self) -> list[Param]:
        seen, out = set(), []
        for p in [self.embed, *self.adapter, *(p for lay in self.layers for mod in lay for p in mod), self.norm,
                  self.head]:  # fmt: skip
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
        return out

    def backbone(self) -> list[Param]:
        return [p for p in self.params() if not p.trainable]


def build_model(shape: Shape, work: Workload, scope: str, shard: int, world: int, zero: Zero) -> Model:
    """Every parameter with its storage and partitioning under `scope` (backbone over `shard` ranks,
    the adapter over all `world`)."""
    b, zero3 = work.b, scope != "none"

    def param(name, numel, group, trainable=False, weights=0) -> Param:
        persistent = zero3 and numel <= zero.persistence_threshold
        group = group if zero3 or trainable else 1
        return Param(name, numel, b, group, persistent, trainable, weights)

    def linear(name, out, inp) -> list[Param]:
        if work.quant == "nf4":
            ps = [param(name, -(-out * inp // (2 * b)), shard, weights=out * inp)]
        else:
            ps = [param(name, out * inp, shard)]
        if shape.qkv_bias and name in ("q_proj", "k_proj", "v_proj"):
            ps.append(param(f"{name}.bias", out, shard))
        return ps

    d = shape.hidden
    layers = []
    for i in range(shape.layers):
        mods = [[param(f"layers.{i}.input_layernorm", d, shard)]]
        lin = {n: linear(f"layers.{i}.{n}", o, k) for n, o, k in shape.linears()}
        mods += [lin["q_proj"], lin["k_proj"], lin["v_proj"], lin["o_proj"]]
        mods += [[param(f"layers.{i}.post_attention_layernorm", d, shard)]]
        mods += [lin["gate_proj"], lin["up_proj"], lin["down_proj"]]
        layers.append(mods)
    embed = param("embed_tokens", shape.vocab * d, shard)
    adapter = [param(f"adapter.{n}", k, world, trainable=True) for n, k in adapter_sizes(shape, work).items()]
    head = embed if shape.tied else param("lm_head", shape.vocab * d, shard)
    return Model(embed, adapter, layers, param("norm", d, shard), head)


# ----------------------------------------------------------------------------- ZeRO-3's coordinator
@dataclass
class Step:
    """One module's turn in the trace: its parameters and the activations alive meanwhile."""

    params: list[Param]
    activations: int = 0


@dataclass
class Gathers:
    """What ZeRO-3's all-gathers of one forward + backward cost one rank."""

    per_peer: dict[int, int] = field(default_factory=dict)  # group size -> bytes received from each peer
    calls: int = 0
    live: list[int] = field(default_factory=list)  # gathered bytes alive at each step (peak within it)
    in_flight: list[int] = field(default_factory=list)  # outputs of calls some of whose parameters wait for use


def simulate(steps: list[Step], zero: Zero, recording: bool = False) -> Gathers:
    """DeepSpeed 0.19.8's PartitionedParameterCoordinator (runtime/zero/partitioned_param_coordinator.py)
    over one forward + backward: each module fetches its parameters that are not available, then
    prefetches the trace's next ones up to stage3_prefetch_bucket_size elements (and
    stage3_max_live_parameters alive); after the module, each of its parameters is released unless
    it is persistent, was prefetched for a later use, or is used again within stage3_max_reuse_distance
    elements of the trace. `recording`: the run's first micro-batch, which records the trace: no
    prefetch, and every parameter, persistent ones too, gathered at each use and released after it
    (measured: tests/test_plan.py). A parameter on one rank (group 1) is a view of its partition."""
    out = Gathers()
    queue = collections.deque((p, i) for i, s in enumerate(steps) for p in sorted(s.params, key=id))
    available = set() if recording else {id(p) for s in steps for p in s.params if p.persistent}
    fetched_for: dict[int, int] = collections.defaultdict(lambda: -(10**10))
    n_live = 0  # elements gathered, as DeepSpeed counts them (max_live)
    live_bytes = 0

    pending: list[tuple[int, set[int]]] = []  # (output bytes, parameters not used yet) of each call

    def gather(params: list[Param]) -> None:
        """One coalesced all-gather per process group: its handle lives on until a module has used the
        last of its parameters (DeepSpeed keeps it in the in-flight registry for each one)."""
        nonlocal n_live, live_bytes
        by_group: dict[int, list[Param]] = collections.defaultdict(list)
        for p in params:
            available.add(id(p))
            n_live += p.numel
            live_bytes += p.full_bytes if p.group > 1 else 0
            by_group[p.group].append(p)
        for g, ps in by_group.items():
            if g > 1:
                out.per_peer[g] = out.per_peer.get(g, 0) + sum(p.part_bytes for p in ps)
                out.calls += 1
                pending.append((sum(p.full_bytes for p in ps), {id(p) for p in ps}))

    for i, step in enumerate(steps):
        mine = list({id(p): p for p in step.params}.values())
        gather([p for p in mine if id(p) not in available])
        wanted = [p for p in mine if fetched_for[id(p)] < i]
        for _ in wanted:  # this module's own entries leave the queue
            p, at = queue.popleft()
            fetched_for[id(p)] = at
        if zero.prefetch_bucket > 0 and not recording:
            budget = min(zero.max_live - n_live, zero.prefetch_bucket)
            batch, numel = {}, 0
            while queue and numel < budget:
                p, at = queue.popleft()
                fetched_for[id(p)] = max(fetched_for[id(p)], at)
                if id(p) not in available and id(p) not in batch:
                    batch[id(p)] = p
                    numel += p.numel
            gather(list(batch.values()))
        out.live.append(live_bytes)
        out.in_flight.append(sum(nbytes for nbytes, _ in pending))
        used = {id(p) for p in mine}
        pending[:] = [(nbytes, ids - used) for nbytes, ids in pending if ids - used]
        release = {id(p) for p in mine if recording or (not p.persistent and fetched_for[id(p)] <= i + 1)}
        traversed = 0
        for later in [] if recording else steps[i + 1 :]:
            if traversed >= zero.max_reuse or not release:
                break
            for p in later.params:
                release.discard(id(p))
                traversed += p.numel
        for p in mine:
            if id(p) in release and id(p) in available:
                available.discard(id(p))
                n_live -= p.numel
                live_bytes -= p.full_bytes if p.group > 1 else 0
    return out


# ----------------------------------------------------------------------------- activations
@dataclass(frozen=True)
class Activations:
    """Bytes autograd keeps per micro-batch (see the module's docstring)."""

    inputs: int  # embeddings, the adapter's hidden units, the packed rows (before the first layer)
    layer: int  # one decoder layer without checkpointing
    checkpoint: int  # one decoder layer's saved input with checkpointing
    working: int  # a layer's largest temporaries (MLP gradients, a de-quantised weight)
    head: int  # final norm, the head's input and the fp32 logits at the targets

    def total(self, layers: int, checkpointing: bool) -> int:
        """The most alive at once (at the loss, or in a recomputed layer's backward)."""
        if checkpointing:
            return self.inputs + layers * self.checkpoint + max(self.head, self.layer + self.working)
        return self.inputs + layers * self.layer + max(self.head, self.working)


def activations(shape: Shape, work: Workload) -> Activations:
    rows, width, n_in, n_tgt = work.tokens()
    t, d, f, b = rows * width, shape.hidden, shape.intermediate, work.b
    q = shape.heads * shape.hd
    r = max(adapter_sizes(shape, work).get("a", 0), 1)
    # the embeddings (the FFN's input), its hidden units (ReLU, dropout), rotary cos and sin, the boolean mask
    inputs = n_in * d * b + 2 * n_in * r * b + 2 * t * shape.hd * b + rows * width * width
    norms = 2 * t * d * 4  # each RMSNorm keeps its input in fp32
    attention = t * (3 * q + q) * b + shape.heads * t * 4 + rows * width * width * b  # q, k, v, out; lse; bias
    mlp = 3 * t * f * b  # SiLU's input, its output, up's output
    largest = max(o * k for _, o, k in shape.linears()) if work.quant == "nf4" else 0
    working = 2 * t * f * b + largest * b
    head = t * d * 4 + n_tgt * d * b + n_tgt * shape.vocab * (12 + b)
    return Activations(inputs, norms + attention + mlp, t * d * b, working, head)


def trace(model: Model, shape: Shape, work: Workload) -> list[Step]:
    """The modules one micro-batch runs, forward then backward (activation checkpointing recomputes a
    layer's forward right before its backward), each with the activations alive during it."""
    act = activations(shape, work)
    per_layer = act.checkpoint if work.activation_checkpointing else act.layer
    # the root module first: it has no parameters, but its prefetch is the first (from the embedding on)
    steps = [Step([]), Step([model.embed], act.inputs), Step(list(model.adapter), act.inputs)]
    for i, layer in enumerate(model.layers):
        steps += [Step(ps, act.inputs + (i + 1) * per_layer + act.working) for ps in layer]
    top = act.inputs + shape.layers * per_layer + act.head
    steps += [Step([model.norm], top), Step([model.head], top), Step([model.head], top), Step([model.norm], top)]
    for i in reversed(range(shape.layers)):
        alive = act.inputs + (i + 1) * per_layer + act.working
        if work.activation_checkpointing:
            alive += act.layer
            steps += [Step(ps, alive) for ps in model.layers[i]]
        steps += [Step(ps, alive) for ps in reversed(model.layers[i])]
    steps.append(Step(list(model.adapter), act.inputs))
    return steps


# ----------------------------------------------------------------------------- one layout
@dataclass
class LayoutPlan:
    scope: str
    shard_group_size: int  # ranks the backbone is partitioned over
    fits: bool
    peak_bytes_per_gpu: int
    memory: dict[str, int]  # the parts at the peak
    intra_node_bytes_per_step: int
    inter_node_bytes_per_step: int
    by_collective: dict[str, dict[str, int]]
    first_step: dict[str, int]  # the run's first step (ZeRO-3 records its trace: more gathers)
    activation_bytes: dict[str, int]  # with and without activation checkpointing

    def to_json(self) -> dict:
        return {
            "scope": self.scope,
            "fits": self.fits,
            "peak_bytes_per_gpu": self.peak_bytes_per_gpu,
            "intra_node_bytes_per_step": self.intra_node_bytes_per_step,
            "inter_node_bytes_per_step": self.inter_node_bytes_per_step,
            "shard_group_size": self.shard_group_size,
            "memory_bytes": self.memory,
            "activation_bytes": self.activation_bytes,
            "by_collective": self.by_collective,
            "first_step": self.first_step,
        }

    def run_average(self, steps: int) -> tuple[float, float]:
        """(intra, inter) bytes per step averaged over a run's first `steps` steps, as traffic.json has them."""
        steady = steps - 1
        return ((self.first_step["intra_node_bytes"] + steady * self.intra_node_bytes_per_step) / steps,
                (self.first_step["inter_node_bytes"] + steady * self.inter_node_bytes_per_step) / steps)  # fmt: skip


def quant_stats_bytes(model: Model) -> int:
    """Every rank's full copy of the NF4 statistics (compress_statistics=True: double quantisation)."""
    total = 0
    for p in model.params():
        if p.weights:
            blocks = -(-p.weights // NF4_BLOCK)
            total += blocks + 4 * -(-blocks // NESTED_BLOCK) + CODE_BYTES
    return total


class Links:
    """Bytes received per step, by collective and by link, from per-peer volumes over a group."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.by = {k: {"recv_intra_node": 0, "recv_inter_node": 0} for k in ("all_gather", "reduce_scatter",
                                                                              "all_reduce", "broadcast")}  # fmt: skip

    def add(self, kind: str, per_peer: float, group: int, times: int = 1) -> None:
        """`per_peer` bytes from each peer of a group of `group` ranks: the world, or ranks of one node."""
        if group <= 1 or times <= 0:
            return
        gpn = self.cluster.gpus_per_node
        intra, inter = (gpn - 1, group - gpn) if group == self.cluster.world else (group - 1, 0)
        self.by[kind]["recv_intra_node"] += round(per_peer * intra * times)
        self.by[kind]["recv_inter_node"] += round(per_peer * inter * times)

    def totals(self) -> tuple[int, int]:
        return (sum(v["recv_intra_node"] for v in self.by.values()),
                sum(v["recv_inter_node"] for v in self.by.values()))  # fmt: skip


def shard_size(scope: str, cluster: Cluster) -> int:
    if scope == "global":
        return cluster.world
    if scope == "none":
        return 1
    size = cluster.group_size or cluster.gpus_per_node
    if size > cluster.gpus_per_node or cluster.gpus_per_node % size:
        raise PlanError(
            f"--shard_group_size {size} must divide the {cluster.gpus_per_node} GPUs of a node: give a divisor of "
            f"{cluster.gpus_per_node}"
        )
    return size


def zero2_groups(adapter: list[Param], world: int) -> list[int]:
    """Elements of each flat parameter group ZeRO-1/2 partitions (optim.py: the prompt; the offset),
    padded to a multiple of 2 x ranks."""
    groups = [[p for p in adapter if p.name == "adapter.prompt"], [p for p in adapter if p.name != "adapter.prompt"]]
    align = ZERO2_ALIGN * world
    return [-(-sum(p.numel for p in g) // align) * align for g in groups if g]


def zero2_traffic(links: Links, adapter: list[Param], work: Workload, world: int) -> None:
    """none (ZeRO-2): the adapter's gradient bucket all-reduced every micro-batch; the trainer's
    full_grads (an fp32 all-reduce per tensor); the scalars; the updated partitions all-gathered."""
    n = sum(p.numel for p in adapter)
    links.add("all_reduce", 2 * n * work.b / world, world, work.grad_accum)
    links.add("all_reduce", sum(2 * p.numel * 4 / world for p in adapter), world)
    links.add("all_reduce", 2 * (16 + 4 + 4) / world, world)  # loss and stop; DeepSpeed's two fp32 scalars
    links.add("all_gather", sum(zero2_groups(adapter, world)) // world * work.b, world)


def zero3_traffic(links: Links, model: Model, gathers: list[tuple[Gathers, int]], work: Workload, world: int) -> None:
    """global, node (ZeRO-3): the gathers of each micro-batch (`gathers`: (simulation, how many such
    micro-batches)); the adapter's gradients reduce-scattered every micro-batch; the trainer's
    full_grads (the fp32 partitions all-gathered); the persistent parameters re-gathered after the
    optimizer step; the scalars."""
    for sim, times in gathers:
        for group, per_peer in sim.per_peer.items():
            links.add("all_gather", per_peer, group, times)
    part = sum(p.part for p in model.adapter)
    links.add("reduce_scatter", part * work.b, world, work.grad_accum)
    links.add("all_gather", part * 4, world)
    persistent = [p for p in model.params() if p.persistent]
    for group in sorted({p.group for p in persistent}):
        links.add("all_gather", sum(p.part_bytes for p in persistent if p.group == group), group)
    links.add("all_reduce", 2 * (16 + 8 + 8) / world, world)  # loss and stop; DeepSpeed's two fp64 scalars


def plan_layout(
    shape: Shape, cluster: Cluster, work: Workload, zero: Zero, scope: str, cpu: bool = False
) -> LayoutPlan:
    """Memory and traffic of one scope. `cpu`: memory as a CPU process's resident set under gloo (what
    launch/bench_plan.py measures): a buffer counts the bytes written into it, not those allocated,
    and gloo stages each all-gather's output in a second buffer of its size, which its work handle
    holds until DeepSpeed has waited on the last of the call's parameters, i.e. until a module has
    used it (measured: gathering a 524 MB parameter over 2 ranks raised the peak by 1049 MB; a
    153 MB call holding a whole model stayed staged until the output head's forward)."""
    world, shard, b = cluster.world, shard_size(scope, cluster), work.b
    model = build_model(shape, work, scope, shard, world, zero)
    steps = trace(model, shape, work)
    adapter = model.adapter
    n_adapter = sum(p.numel for p in adapter)
    steady, first = Links(cluster), Links(cluster)
    if scope == "none":  # ZeRO-2: the backbone whole on every rank, nothing of it gathered
        live = [0] * len(steps)
        for links in (steady, first):
            zero2_traffic(links, adapter, work, world)
        resident = sum(p.full_bytes for p in model.backbone())
        optimizer = n_adapter * b + 16 * sum(zero2_groups(adapter, world)) // world  # + fp32 master, grads, moments
    else:
        sim = simulate(steps, zero)
        live = [a + b for a, b in zip(sim.live, sim.in_flight)] if cpu else sim.live
        zero3_traffic(steady, model, [(sim, work.grad_accum)], work, world)
        zero3_traffic(first, model, [(simulate(steps, zero, recording=True), 1), (sim, work.grad_accum - 1)], work,
                      world)  # fmt: skip
        resident = sum(p.part_bytes + (p.full_bytes if p.persistent else 0) for p in model.backbone())
        optimizer = sum(p.part_bytes + (p.full_bytes if p.persistent else 0) for p in adapter)
        optimizer += 16 * sum(p.part for p in adapter)  # fp32 master, gradient partition, 2 moments
    bucket = (min(n_adapter, zero.reduce_bucket) if cpu else zero.reduce_bucket) * b
    constant = {"backbone": resident, "quant_stats": quant_stats_bytes(model), "adapter_and_adam": optimizer,
                "deepspeed_buffers": bucket if zero.contiguous_gradients else 0}  # fmt: skip
    at = max(range(len(steps)), key=lambda i: live[i] + steps[i].activations)
    memory = {**constant, "gathered_params": live[at], "activations": steps[at].activations}
    peak = sum(memory.values())
    act = activations(shape, work)
    intra, inter = steady.totals()
    first_intra, first_inter = first.totals()
    return LayoutPlan(
        scope=scope,
        shard_group_size=shard,
        fits=peak <= cluster.usable,
        peak_bytes_per_gpu=peak,
        memory=memory,
        intra_node_bytes_per_step=intra,
        inter_node_bytes_per_step=inter,
        by_collective=steady.by,
        first_step={"intra_node_bytes": first_intra, "inter_node_bytes": first_inter},
        activation_bytes={
            "without_checkpointing": act.total(shape.layers, False),
            "with_checkpointing": act.total(shape.layers, True),
        },  # fmt: skip
    )


# ----------------------------------------------------------------------------- every layout
@dataclass
class Plan:
    recommended: str | None  # None: no scope fits
    layouts: list[LayoutPlan]

    def to_json(self) -> dict:
        return {"recommended": self.recommended, "layouts": [lay.to_json() for lay in self.layouts]}

    def layout(self, scope: str) -> LayoutPlan:
        return next(lay for lay in self.layouts if lay.scope == scope)


def scopes_for(cluster: Cluster) -> list[str]:
    """global and none always; node where it differs from global (several nodes, or smaller groups)."""
    node = cluster.nodes > 1 or (cluster.group_size is not None and cluster.group_size < cluster.gpus_per_node)
    return [s for s in SCOPES if s != "node" or node]


def recommend(layouts: list[LayoutPlan]) -> str | None:
    """Of the scopes that fit: those that keep the backbone off the inter-node network (no more than
    10x the least inter-node traffic of any), then the least traffic in all (a replicated backbone,
    which gathers nothing, wins where it fits), then the least memory, then the simplest (none, node,
    global: a shard group of one rank gathers nothing either, but runs ZeRO-3's machinery)."""
    fitting = [lay for lay in layouts if lay.fits]
    if not fitting:
        return None
    least = min(lay.inter_node_bytes_per_step for lay in fitting)

    def key(lay: LayoutPlan) -> tuple:
        ships_backbone = lay.inter_node_bytes_per_step > 10 * max(least, 1)
        total = lay.inter_node_bytes_per_step + lay.intra_node_bytes_per_step
        return ships_backbone, total, lay.peak_bytes_per_gpu, ("none", "node", "global").index(lay.scope)

    return min(fitting, key=key).scope


def plan(shape: Shape, cluster: Cluster, work: Workload, zero: Zero | None = None, cpu: bool = False) -> Plan:
    zero = zero or Zero()
    if min(cluster.nodes, cluster.gpus_per_node) < 1:
        raise PlanError("--nodes and --gpus_per_node must be at least 1")
    layouts = [plan_layout(shape, cluster, work, zero, s, cpu) for s in scopes_for(cluster)]
    return Plan(recommend(layouts), layouts)
