"""Memory per rank: the parameters as ZeRO holds them, the gathers of one step (a simulation of
DeepSpeed's parameter coordinator), the activations autograd keeps."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from adept_dist.model.adapters import PT_BUDGET_TOKENS, adept_rank, dept_rank
from adept_dist.plan.inputs import PlanError, Shape, Workload, Zero


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
