"""The options of a run: one dataclass per section (model, adapter, data, optim, run), every
field's help its one-line doc and its --flag's help; a config file (JSON/YAML) and the command line
read into them, unknown keys and wrong types refused. Resolution and checks: config/resolve.py."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from adept_dist.common.errors import ConfigError
from adept_dist.common.fileio import refuse_duplicate_keys
from adept_dist.data.tasks import TASKS
from adept_dist.distributed.dsconfig import DEFAULT_DS_CONFIG, RunSettings
from adept_dist.model.adapters import METHODS

CONFIG_FILE = "config.json"  # a run folder's record of what it runs (build.run_record)


def opt(default, help: str, choices: tuple | None = None):  # noqa: A002 - mirrors argparse
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class ModelConfig:
    model: str | None = opt(None, "hub id or local folder of a LLaMA-family causal LM; none = built-in tiny model")
    quant: str = opt("nf4", "backbone weights: nf4 (bitsandbytes 4-bit) or none (bf16)", ("nf4", "none", "int8"))
    compute_dtype: str = opt(
        "auto", "backbone compute (and NF4 storage) dtype; auto = bf16 on GPUs, fp32 on CPU", ("auto", "bf16", "fp32")
    )
    activation_checkpointing: bool = opt(
        False, "recompute backbone activations in backward (saves memory, ~1.5x compute)"
    )
    loader: str = opt(
        "auto",
        "layerwise: read, quantise and ZeRO-3-partition the backbone one layer at a time (no rank holds the whole "
        "model); transformers: load the whole model on every rank, then partition; auto = layerwise under ZeRO-3",
        ("auto", "layerwise", "transformers"),
    )
    attn_implementation: str = opt(
        "sdpa", "attention kernel passed to transformers", ("sdpa", "eager", "flash_attention_2")
    )


@dataclass
class AdapterConfig:
    method: str = opt("adept", "adapter: adept, dept (baseline) or pt (prompt tuning)", METHODS)
    prompt_length: int | None = opt(None, "soft prompt tokens m; default 60 (adept, dept) or 100 (pt)")
    offset_rank: int | None = opt(
        None,
        "bottleneck r of the offset (ADePT FFN, DePT low-rank); default: matched to the budget of 100-token prompt tuning",
    )
    prompt_init: str = opt(
        "text", "soft prompt init: text, vocab (random vocabulary rows) or normal", ("text", "vocab", "normal")
    )
    prompt_init_text: str = opt(
        "Read the input and answer with the correct label.", "text whose token embeddings init the prompt"
    )
    dropout: float = opt(0.1, "dropout on the ADePT FFN hidden layer")


@dataclass
class DataConfig:
    task: str | None = opt(
        None,
        f"a task of the paper ({', '.join(TASKS)}; loads, splits, scores it as the paper does), or bigbench:NAME "
        f"(a BIG-bench JSON task, from --data_dir: a checkout, a task folder or the sdist tarball; else the hub)",
    )
    data_dir: str | None = opt(None, "local copy of the task's dataset in the hub's schema; none = the hub")
    train_file: str | None = opt(None, "JSONL or CSV with 'input' and 'target' columns; none = built-in task")
    eval_file: str | None = opt(None, "validation JSONL or CSV, same columns (selects the best checkpoint)")
    test_file: str | None = opt(None, "test JSONL or CSV, same columns (scored once, with the best checkpoint)")
    k_shot: int | None = opt(None, "few-shot: k training examples per class, class balanced, drawn with --seed")
    split_seed: int = opt(42, "seed of the validation/test split of the task (the reference's is 42)")
    validation_size: int | None = opt(None, "large tasks: training rows held out as validation (default 1000)")
    cache_dir: str | None = opt(None, "tokenised-data cache; default $ADEPT_DIST_HOME/tokenized")
    max_length: int = opt(256, "max tokens per example (input + separator + target + EOS), prompt excluded")
    separator: str = opt(" Label : ", "text between input and target")
    micro_batch_size: int = opt(8, "examples per rank per forward/backward")
    grad_accum: int = opt(1, "micro-batches per optimizer step")
    group_window: int = opt(
        0,
        "length-grouped batching: sort each window of this many global batches by length and shuffle the batches "
        "within it (less padding; can correlate batches with labels); 0 = plain random batches, as the reference",
    )
    packing: bool | None = opt(
        None,
        "lay each micro-batch's examples end to end in rows that share one soft prompt (exact: the padded step's "
        "loss without padding, the prompt computed once per row; ADePT's dropout masks are drawn in the packed "
        "layout); default: on for adept and pt with sdpa or eager attention, off for dept",
    )
    pack_tokens: int | None = opt(
        None, "longest packed row in tokens, prompt included; default max(4096, prompt_length + max_length)"
    )
    eval_batch_size: int = opt(16, "examples per rank per evaluation batch")
    max_new_tokens: int | None = opt(None, "tokens generated per example at evaluation; default: the task's")
    eval_mode: str = opt(
        "generate",
        "how an evaluation answers: generate (greedy text, the paper's) or rank (each of the example's options "
        "scored by its log-probability after the input; the top one is the answer; docs/TASKS.md)",
        choices=("generate", "rank"),
    )
    rank_by: str = opt(
        "sum",
        "--eval_mode rank: how options of different lengths compare: sum (the option's log-probability, EOS "
        "included) or mean (per token)",
        choices=("sum", "mean"),
    )
    max_eval_samples: int | None = opt(None, "evaluate on at most this many examples per split")
    allow_code_execution: bool = opt(False, "let MBPP's pass@1 run the generated programs (resource-limited)")

    def global_batch(self, world: int) -> int:
        """Examples per optimizer step over all ranks."""
        return self.micro_batch_size * self.grad_accum * world


@dataclass
class OptimConfig:
    max_steps: int | None = opt(
        None,
        "optimizer steps (0: evaluate only); default: the task's reference budget (BIG-bench: 1000), 30000 for "
        "files, 300 built-in",
    )
    lr_prompt: float = opt(0.3, "learning rate of the soft prompt")
    lr_ffn: float | None = opt(
        None, "learning rate of the offset (ADePT A, a, B, b; DePT A, B); default 1e-4, 1e-3 on the built-in task"
    )
    warmup_steps: int | None = opt(None, "linear warmup steps; default min(500, max_steps // 10)")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    adam_eps: float = opt(1e-6, "AdamW epsilon")
    grad_clip: float = opt(1.0, "gradient clipping (global norm)")
    seed: int = opt(42, "seed of adapter init, data order and dropout")


@dataclass
class RunConfig:
    output_dir: str = opt("runs/builtin", "run folder: config, metrics.jsonl, adapter/, checkpoints/")
    ds_config: str = opt(
        DEFAULT_DS_CONFIG,
        f"DeepSpeed JSON ('auto' values are filled from this config); auto: {DEFAULT_DS_CONFIG} with the sharding "
        f"scope adept-plan recommends for this job (--shard_scope auto)",
    )
    shard_scope: str | None = opt(
        None,
        "how the frozen backbone is held: global (ZeRO-3 over all ranks; the default with a stage-3 --ds_config), "
        "node (ZeRO-3 within each node, or each --shard_group_size group, replicated across them: its all-gathers "
        "never leave the group; the adapter's gradients are still reduced over all ranks), none (replicated on every "
        "rank, ZeRO stage 2; the default with a stage 0-2 config), auto (the one adept-plan recommends for this model, "
        "these options and this job's nodes, ranks and device memory; chosen again on each --resume)",
        ("global", "node", "none", "auto"),
    )
    shard_group_size: int | None = opt(
        None, "with --shard_scope node: ranks per shard group (a divisor of the ranks per node); default: a whole node"
    )
    ranks_per_node: int | None = opt(
        None,
        "ranks per node for the traffic report and --shard_scope node (ranks 0..N-1 are node 0, ...); default: "
        "from the launcher (SLURM_NODEID, GROUP_RANK, CROSS_RANK) or the host name. Lets one machine stand in for "
        "several nodes",
    )
    resume: bool = opt(False, "continue from the latest checkpoint in output_dir, with the run's own config.json")
    reschedule: bool = opt(
        False,
        "with --resume and another --max_steps: the learning rate decays linearly to 0 at the new --max_steps "
        "from the resumed step on (the rate changes at that step); without it another --max_steps is refused",
    )
    take_over: bool = opt(
        False,
        "take over the run folder's lock from a job you know is gone (a dead process on this host, an earlier run "
        "of a requeued SLURM job and a finished SLURM job are taken over without it)",
    )
    log_every: int = opt(10, "steps between metrics.jsonl lines")
    report_to: str = opt(
        "none",
        "experiment trackers fed what metrics.jsonl gets: none, or a comma list of tensorboard (OUT/tensorboard) "
        "and wandb (offline into OUT/wandb unless WANDB_MODE says otherwise)",
    )
    eval_every: int | None = opt(
        None, "steps between validation evaluations (best checkpoint kept); default 1000 for tasks, else at the end"
    )
    init_adapter: str | None = opt(None, "start from an exported adapter folder (with --max_steps 0: evaluate it)")
    save_every: int = opt(500, "steps between resume checkpoints (one is always written at the end)")
    keep_checkpoints: int = opt(2, "resume checkpoints kept (older ones are deleted)")
    nonfinite: str = opt(
        "stop",
        "a NaN/inf loss or gradient norm: stop (error naming the step and samples) or skip (discard that update)",
        ("stop", "skip"),
    )


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "adapter": AdapterConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "run": RunConfig,
}


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    given: frozenset = field(default=frozenset(), repr=False, compare=False)  # options set by flags or file
    # --resume: the options this start sets anew, {name: [old, new]} (recorded in config.json's history)
    changes: dict = field(default_factory=dict, repr=False, compare=False)

    def ds_settings(self, world: int) -> RunSettings:
        """What the DeepSpeed JSON must agree with (dsconfig.resolve_ds_config), for `world` ranks."""
        d, o = self.data, self.optim
        lrs = {"--lr_prompt": o.lr_prompt} if self.adapter.method == "pt" else {"--lr_prompt": o.lr_prompt,
                                                                                "--lr_ffn": o.lr_ffn}  # fmt: skip
        return RunSettings(d.micro_batch_size, d.grad_accum, d.global_batch(world), o.grad_clip,
                           self.model.compute_dtype, self.model.quant, lrs, o.adam_eps, o.weight_decay)  # fmt: skip

    def replaced(self, **values) -> Config:
        """A new Config with these options set (each in its section); this one is left as it was."""
        sections = {name: getattr(self, name) for name in SECTIONS}
        for name, value in values.items():
            sec = FIELD_SECTION[name]
            sections[sec] = dataclasses.replace(sections[sec], **{name: value})
        return dataclasses.replace(self, **sections)

    def to_dict(self) -> dict:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    def value(self, name: str):
        return getattr(getattr(self, FIELD_SECTION[name]), name)


def _field_owner() -> dict[str, str]:
    owner: dict[str, str] = {}
    for sec, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f.name not in owner, f"duplicate option {f.name}"
            owner[f.name] = sec
    return owner


FIELD_SECTION = _field_owner()


def _base_type(tp) -> tuple[type, bool]:
    """(type, optional) of an annotation like ``int | None``."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _hints(cls: type) -> dict[str, object]:
    return typing.get_type_hints(cls)


def _check_value(name: str, value, cls: type):
    tp, optional = _base_type(_hints(cls)[name])
    if value is None:
        if optional:
            return None
        raise ConfigError(f"option {name} cannot be null: give a {tp.__name__}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(f"option {name} must be a {tp.__name__}, got {value!r} ({type(value).__name__})")
    if tp is float and not math.isfinite(value):
        raise ConfigError(f"option {name} must be a finite number, got {value}")
    choices = next(f for f in dataclasses.fields(cls) if f.name == name).metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"option {name}={value!r} is not one of {', '.join(choices)}")
    return value


def _strict_yaml_loader():
    """yaml's SafeLoader refusing a key given twice in one mapping (it would keep the last silently)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} appears twice", key_node.start_mark
                    )
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return Loader


def load_config_file(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {path} not found: check the --config path")
    text = p.read_text()
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.load(text, Loader=_strict_yaml_loader())  # noqa: S506 - a SafeLoader subclass
        else:
            data = json.loads(text, object_pairs_hook=refuse_duplicate_keys)
    except Exception as exc:  # noqa: BLE001 - any parse error becomes one clear line
        mark = getattr(exc, "problem_mark", None)  # yaml's errors span lines: say the problem and where
        why = (
            f"{exc.problem} (line {mark.line + 1})" if mark is not None and exc.problem else " ".join(str(exc).split())
        )
        raise ConfigError(f"config file {path} is not valid {p.suffix[1:] or 'JSON'}: {why}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option names to values")
    flat: dict = {}
    for key, value in data.items():  # sections ({"optim": {...}}) or flat keys both work
        if key in SECTIONS and isinstance(value, dict):
            for k, v in value.items():
                if FIELD_SECTION.get(k) != key:
                    raise ConfigError(f"config file {path}: unknown option {key}.{k}")
                if k in flat:
                    raise ConfigError(f"config file {path}: option {k} is given twice (flat and in {key}): keep one")
                flat[k] = v
        elif key in FIELD_SECTION:
            if key in flat:
                raise ConfigError(
                    f"config file {path}: option {key} is given twice (flat and in its section): keep one"
                )
            flat[key] = value
        else:
            raise ConfigError(f"config file {path}: unknown option {key!r} (see --help for the options)")
    return flat


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train an ADePT / DePT / PT adapter on a frozen (NF4) LLaMA-family model with DeepSpeed.",
        argument_default=argparse.SUPPRESS,
        allow_abbrev=False,
    )
    p.add_argument("--config", help="JSON or YAML file of options (flags override it)")
    p.add_argument("--local_rank", type=int, help="set by the deepspeed launcher")
    for sec, cls in SECTIONS.items():
        group = p.add_argument_group(sec)
        hints = _hints(cls)
        for f in dataclasses.fields(cls):
            tp, _ = _base_type(hints[f.name])
            names = [f"--{f.name}"]
            if f.name == "ds_config":
                names.append("--deepspeed_config")
            kw: dict = {"help": help_text(f), "dest": f.name}
            if tp is bool:
                kw["action"] = argparse.BooleanOptionalAction
            else:
                kw["type"] = tp
                if f.metadata.get("choices"):
                    kw["choices"] = f.metadata["choices"]
            group.add_argument(*names, **kw)
    return p


def help_text(f: dataclasses.Field) -> str:
    """The field's doc and its default, said once: a doc that explains its default keeps it, and a
    None default without explanation says nothing more."""
    doc = f.metadata["help"]
    if "default" in doc or f.default is None:
        return doc
    return f"{doc} (default: {f.default})"
