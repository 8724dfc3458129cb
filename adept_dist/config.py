"""Typed run configuration: defaults < config file (JSON/YAML) < command-line flags.

Each section is a small dataclass; every field's ``help`` is its one-line doc and becomes the
``--flag`` help. Unknown keys and wrong types are errors, checked here where the config is
built, so the rest of the code can trust it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .adapters import METHODS
from .dsconfig import RunSettings
from .errors import ConfigError
from .fileio import refuse_duplicate_keys
from .schema import Count, PositiveInt, Record, check, problem, shown
from .tasks import TASKS, get_task
from .trackers import TrackerError, parse_report_to

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
        "ds_configs/zero3.json",
        "DeepSpeed JSON ('auto' values are filled from this config); auto: ds_configs/zero3.json with the sharding "
        "scope adept-plan recommends for this job (--shard_scope auto)",
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


def parse_config(argv: list[str] | None = None) -> tuple[Config, int | None]:
    """Parse CLI (+ optional config file) into a validated Config and the launcher's local rank."""
    args = vars(build_parser().parse_args(argv))
    local_rank = args.pop("local_rank", None)
    values = load_config_file(args.pop("config")) if "config" in args else {}
    values.update(args)
    return make_config(values), local_rank


def make_config(values: dict) -> Config:
    cfg = Config()
    for name, value in values.items():
        sec = FIELD_SECTION.get(name)
        if sec is None:
            raise ConfigError(f"unknown option {name!r} (see --help for the options)")
        section = getattr(cfg, sec)
        setattr(section, name, _check_value(name, value, type(section)))
    cfg.given = frozenset(values)
    check_config(cfg)
    return cfg


# What a resumed run may set anew: how it logs, evaluates, saves and runs on the machine (the global
# batch is checked against the checkpoint's; --max_steps needs --reschedule). Every other option
# changes the optimisation or the data, so it stays as the run's config.json says; --packing and
# --pack_tokens too: they lay the micro-batches out in other rows (other dropout draws, other sums).
CHANGEABLE_ON_RESUME = frozenset(
    ("resume", "reschedule", "take_over", "output_dir", "ds_config", "log_every", "eval_every", "save_every",
     "keep_checkpoints", "report_to", "max_eval_samples", "eval_batch_size", "nonfinite", "cache_dir", "micro_batch_size",
     "grad_accum", "activation_checkpointing", "attn_implementation", "loader", "compute_dtype", "max_steps",
     "shard_scope", "shard_group_size", "ranks_per_node")
)  # fmt: skip
PER_START = ("resume", "reschedule", "take_over", "output_dir")  # what one start says about itself, never inherited


def read_run_config(path: Path, text: str | None = None) -> dict:
    """A run's config.json as written by build.assemble (sections, identity, history, finished);
    `text`: its content as read already (by the main process, for every rank)."""
    try:
        stored = json.loads(path.read_text() if text is None else text, object_pairs_hook=refuse_duplicate_keys)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--resume: {path} is unreadable ({exc}): restore it from a backup, or start a new run "
                          f"in another --output_dir") from None  # fmt: skip
    check_run_record(stored, path)
    return stored


class Identity(Record):
    id: str
    created: str = None
    host: str = None
    encoding: PositiveInt = None  # data.ENCODING of the run's first start (absent: 1; build.check_encoding)


class Change(Record):
    at: str
    step: Count
    changed: dict[str, list]


class Finished(Record):
    step: Count
    at: str = None


class RunRecordFile(Record):
    """config.json of a run folder (build.run_record): the option sections, each option checked by
    its own type, choices and range (``check_run_record``); an option this release does not know
    (a later one's) is kept and ignored."""

    model: dict
    adapter: dict
    data: dict
    optim: dict
    run: dict
    identity: Identity = None  # absent in runs started before 2026-11
    history: list[Change] = None
    finished: Finished = None


def check_run_record(stored, path: Path) -> None:
    """A run's config.json read back: the sections and records (RunRecordFile), then each known
    option's type and choices (as on the command line) and the range of the positive ones."""
    fix = "restore it from a backup, or start a new run in another --output_dir"
    check(stored, RunRecordFile, path, fix, ConfigError)
    for sec, cls in SECTIONS.items():
        for name, value in stored[sec].items():
            if FIELD_SECTION.get(name) != sec:
                continue
            tp, optional = _base_type(_hints(cls)[name])
            choices = next(f for f in dataclasses.fields(cls) if f.name == name).metadata.get("choices")
            words = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false"}[tp]
            expected = f"one of {', '.join(choices)}" if choices else words + (" or null" if optional else "")
            try:
                _check_value(name, value, cls)
            except ConfigError:
                raise ConfigError(problem(path, f"{sec}.{name}", expected, shown(value), fix)) from None
            if name in POSITIVE_OPTIONS and value is not None and value < 1:
                raise ConfigError(problem(path, f"{sec}.{name}", "an integer >= 1", shown(value), fix))


def resumed_config(cfg: Config, path: Path, builtin_model: str, text: str | None = None) -> Config:
    """--resume: the run's own config (`path`, its config.json) with the options given now on top.
    A given option that changes the optimisation or the data is refused, naming each difference;
    the changeable ones that differ are kept in the result's ``changes`` (for config.json's history)."""
    stored = read_run_config(path, text)
    flat = {k: v for sec in SECTIONS for k, v in stored[sec].items() if k in FIELD_SECTION}
    flat.setdefault("packing", False)  # runs recorded before packing existed ran padded: they go on so
    if flat.get("model") == builtin_model and flat.get("train_file") is None:
        flat["model"] = None  # the built-in model: recorded by its folder, named "builtin" in adapters
        # (with --train_file it was given by its folder, as --train_file needs: it stays given)
    diffs, changes = [], {}
    for name in sorted(cfg.given - set(PER_START)):
        new, old = cfg.value(name), flat.get(name)
        if name == "model" and new is not None and old is not None and Path(new).resolve() == Path(old).resolve():
            continue
        if new == old or (name in ("loader", "compute_dtype") and new == "auto"):  # resolved again, recorded
            continue
        if name not in CHANGEABLE_ON_RESUME:
            diffs.append(f"{name} {old!r} -> {new!r}")
        elif name == "max_steps" and not cfg.run.reschedule:
            raise ConfigError(
                f"--resume: --max_steps {new} differs from this run's {old} ({path}), which changes its learning-rate "
                f"schedule: add --reschedule to decay linearly to 0 at step {new} from the resumed step on, or drop "
                f"--max_steps"
            )
        else:
            changes[name] = [old, new]
    if diffs:
        raise ConfigError(
            f"--resume: this run ({path}) was started with other settings ({'; '.join(diffs)}); they change the "
            f"optimisation or the data, so they cannot change within a run: drop them to continue it, or start "
            f"a new run in another --output_dir (--init_adapter starts it from an exported adapter)"
        )
    merged = {**flat, **{name: cfg.value(name) for name in cfg.given}}
    merged.update({name: cfg.value(name) for name in PER_START})
    check_packed_attention(merged, path)
    if "loader" not in cfg.given:
        merged["loader"] = "auto"  # chosen again for this resume's DeepSpeed config
    if "shard_scope" not in cfg.given:  # so is the layout (exact either way: tests/test_layouts.py)
        merged["shard_scope"] = None
        merged["shard_group_size"] = cfg.run.shard_group_size
    out = make_config(merged)
    out.changes = changes
    return out


def check_packed_attention(merged: dict, path: Path) -> None:
    """A packed run resumed with an attention kernel that takes no packed mask: said as the resume's
    problem (check_packing would suggest --no-packing, which a resume refuses)."""
    from .model import PACKED_ATTENTION

    attn = merged.get("attn_implementation")
    if merged.get("packing") and attn is not None and attn not in PACKED_ATTENTION:
        raise ConfigError(
            f"--resume: this run ({path}) packs its examples, which --attn_implementation {attn} cannot (it takes no "
            f"packed mask), and packing cannot change within a run: resume with --attn_implementation "
            f"{' or '.join(PACKED_ATTENTION)}, or start a new run in another --output_dir"
        )


POSITIVE_OPTIONS = ("prompt_length", "offset_rank", "max_length", "micro_batch_size", "grad_accum", "eval_batch_size",
                    "max_new_tokens", "max_eval_samples", "k_shot", "validation_size", "log_every", "eval_every",
                    "save_every", "keep_checkpoints", "shard_group_size", "ranks_per_node")  # fmt: skip


def check_config(cfg: Config) -> None:
    """Cross-field checks and defaults that depend on other fields."""
    a, d, o, r = cfg.adapter, cfg.data, cfg.optim, cfg.run
    if cfg.model.quant == "int8":
        raise ConfigError(
            "--quant int8 is not supported: bitsandbytes 8-bit weights lose their scales under ZeRO-3; use --quant nf4"
        )
    if a.prompt_length is None:
        a.prompt_length = 100 if a.method == "pt" else 60
    positive = {name: cfg.value(name) for name in POSITIVE_OPTIONS}
    for name, value in positive.items():
        if value is not None and value < 1:
            raise ConfigError(f"option {name} must be >= 1, got {value}")
    check_packing(cfg)
    if r.ds_config == "auto" and r.shard_scope not in (None, "auto"):
        raise ConfigError(f"--ds_config auto lets the plan choose the sharding scope, which --shard_scope {r.shard_scope} "
                          f"sets: drop one of them")  # fmt: skip
    if r.shard_group_size is not None and r.shard_scope not in ("node", "auto") and r.ds_config != "auto":
        raise ConfigError(
            "--shard_group_size sets the groups of --shard_scope node: add --shard_scope node, or drop it"
        )
    try:
        parse_report_to(r.report_to)
    except (ValueError, TrackerError) as exc:
        raise ConfigError(str(exc)) from None
    if d.group_window < 0:
        raise ConfigError(f"option group_window must be >= 0 (0 turns length grouping off), got {d.group_window}")
    if not 0.0 <= a.dropout < 1.0:
        raise ConfigError(f"option dropout must be in [0, 1), got {a.dropout}")
    if o.max_steps is not None and o.max_steps < 0:
        raise ConfigError(f"option max_steps must be >= 0, got {o.max_steps}")
    builtin_task = d.train_file is None and d.task is None
    try:
        task = get_task(d.task) if d.task is not None else None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if o.lr_ffn is None:  # both values are in the reference's grid (1e-4, 5e-4, 1e-3, 5e-3)
        o.lr_ffn = 1e-3 if builtin_task else 1e-4
    for name in ("lr_prompt", "lr_ffn", "adam_eps"):
        if getattr(o, name) <= 0:
            raise ConfigError(f"option {name} must be > 0, got {getattr(o, name)}")
    if o.grad_clip < 0 or o.weight_decay < 0:
        raise ConfigError("options grad_clip and weight_decay must be >= 0")
    if d.train_file is not None and cfg.model.model is None:
        raise ConfigError(
            "--train_file needs --model: the built-in demo model only knows the built-in task's words; pass a "
            "model whose tokenizer covers your data (a hub id, a local folder, or a .gguf file)"
        )
    if (d.eval_file is not None or d.test_file is not None) and d.train_file is None:
        raise ConfigError("--eval_file/--test_file need --train_file (a task or the built-in task brings its own)")
    if d.task is not None and d.train_file is not None:
        raise ConfigError("--task and --train_file exclude each other: a task brings its own data (see --data_dir)")
    if d.data_dir is not None and d.task is None:
        raise ConfigError("--data_dir needs --task: it is a local copy of that task's dataset")
    if d.task is None and d.k_shot is not None:
        raise ConfigError("--k_shot needs --task (classes come from the task's labels)")
    if task is not None and "pass@1" in task.metrics and not d.allow_code_execution:
        raise ConfigError(
            f"task {d.task} is scored by running the generated programs: pass --allow_code_execution "
            f"(in a container or VM) to accept that"
        )
    if o.max_steps is None:
        o.max_steps = task.max_steps if task else 300 if builtin_task else 30000
    if r.eval_every is None and d.task is not None and o.max_steps > 1000:
        r.eval_every = 1000  # the reference evaluates every 1000 steps
    if o.warmup_steps is None:
        o.warmup_steps = min(500, o.max_steps // 10)
    if r.reschedule and not r.resume:
        raise ConfigError("--reschedule changes the schedule of a resumed run: it needs --resume (and --max_steps)")
    if o.warmup_steps < 0 or (o.warmup_steps >= o.max_steps and o.max_steps > 1 and o.warmup_steps > 0):
        raise ConfigError(f"warmup_steps={o.warmup_steps} must be in [0, max_steps={o.max_steps})")


PACK_TOKENS_MIN = 4096  # the default row: long enough to pack, short enough for its (L, L) mask


def check_packing(cfg: Config) -> None:
    """Resolve --packing (None: on wherever it is exact and the attention kernel takes its mask) and
    --pack_tokens, or refuse a combination that cannot pack."""
    from .model import PACKED_ATTENTION

    a, d, attn = cfg.adapter, cfg.data, cfg.model.attn_implementation
    if d.packing is None:
        d.packing = a.method != "dept" and attn in PACKED_ATTENTION
    if d.packing and a.method == "dept":
        raise ConfigError("--packing does not apply to dept (its offsets are per position over a fixed length): pass "
                          "--no-packing")  # fmt: skip
    if d.packing and attn not in PACKED_ATTENTION:
        raise ConfigError(f"--packing needs --attn_implementation {' or '.join(PACKED_ATTENTION)} (it passes its own "
                          f"attention mask), not {attn}: pass --no-packing or change the attention")  # fmt: skip
    need = a.prompt_length + d.max_length
    if d.pack_tokens is None:
        d.pack_tokens = max(PACK_TOKENS_MIN, need)
    elif d.pack_tokens < need:
        raise ConfigError(f"--pack_tokens {d.pack_tokens} cannot hold the longest example: it needs --prompt_length + "
                          f"--max_length = {need}; raise --pack_tokens")  # fmt: skip
