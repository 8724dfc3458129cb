"""The configuration resolved once: defaults that depend on other options filled in one pure
pass (`resolve_config` returns a new Config), then checks that read it and change nothing."""

from __future__ import annotations

from adept_dist.common.errors import ConfigError
from adept_dist.common.trackers import TrackerError, parse_report_to
from adept_dist.config.options import FIELD_SECTION, Config, _check_value, build_parser, load_config_file
from adept_dist.data.tasks import get_task
from adept_dist.model.backbone import DENSE_TYPES

POSITIVE_OPTIONS = ("prompt_length", "offset_rank", "max_length", "micro_batch_size", "grad_accum", "eval_batch_size",
                    "max_new_tokens", "max_eval_samples", "k_shot", "validation_size", "log_every", "eval_every",
                    "save_every", "keep_checkpoints", "shard_group_size", "ranks_per_node")  # fmt: skip

PACK_TOKENS_MIN = 4096  # the default packed row: long enough to pack, short enough for its (L, L) mask


def check_given(cfg: Config) -> None:
    """The checks of the options as given (before any default is filled); reads cfg, changes nothing."""
    a, d, o, r = cfg.adapter, cfg.data, cfg.optim, cfg.run
    if cfg.model.quant == "int8":
        raise ConfigError(
            "--quant int8 is not supported: bitsandbytes 8-bit weights lose their scales under ZeRO-3; use --quant nf4"
        )
    for name in POSITIVE_OPTIONS:
        if (value := cfg.value(name)) is not None and value < 1:
            raise ConfigError(f"option {name} must be >= 1, got {value}")
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
    try:
        task = get_task(d.task) if d.task is not None else None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    for name in ("lr_prompt", "lr_ffn", "adam_eps"):
        if (value := getattr(o, name)) is not None and value <= 0:
            raise ConfigError(f"option {name} must be > 0, got {value}")
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
    if r.reschedule and not r.resume:
        raise ConfigError("--reschedule changes the schedule of a resumed run: it needs --resume (and --max_steps)")
    if d.packing and a.method == "dept":
        raise ConfigError("--packing does not apply to dept (its offsets are per position over a fixed length): pass "
                          "--no-packing")  # fmt: skip


def resolve_config(cfg: Config) -> Config:
    """The one resolution pass: a new Config whose defaults that depend on other options are filled
    (prompt length by method, packing by method and attention, the packed row's length, the FFN's
    learning rate, steps, evaluation interval and warmup by task); `cfg` is left as it was."""
    from adept_dist.model.lm import PACKED_ATTENTION

    a, d, o, r = cfg.adapter, cfg.data, cfg.optim, cfg.run
    builtin_task = d.train_file is None and d.task is None
    task = get_task(d.task) if d.task is not None else None
    prompt_length = a.prompt_length if a.prompt_length is not None else 100 if a.method == "pt" else 60
    packing = (
        d.packing if d.packing is not None else a.method != "dept" and cfg.model.attn_implementation in PACKED_ATTENTION
    )
    max_steps = o.max_steps if o.max_steps is not None else task.max_steps if task else 300 if builtin_task else 30000
    values = {
        "prompt_length": prompt_length,
        "packing": packing,
        "pack_tokens": d.pack_tokens
        if d.pack_tokens is not None
        else max(PACK_TOKENS_MIN, prompt_length + d.max_length),
        # both values are in the reference's grid (1e-4, 5e-4, 1e-3, 5e-3)
        "lr_ffn": o.lr_ffn if o.lr_ffn is not None else 1e-3 if builtin_task else 1e-4,
        "max_steps": max_steps,
        # the reference evaluates every 1000 steps
        "eval_every": 1000 if r.eval_every is None and d.task is not None and max_steps > 1000 else r.eval_every,
        "warmup_steps": o.warmup_steps if o.warmup_steps is not None else min(500, max_steps // 10),
    }
    return cfg.replaced(**values)


def check_resolved(cfg: Config) -> None:
    """The checks that need the resolved values; reads cfg, changes nothing."""
    from adept_dist.model.lm import PACKED_ATTENTION

    a, d, o, attn = cfg.adapter, cfg.data, cfg.optim, cfg.model.attn_implementation
    if d.packing and attn not in PACKED_ATTENTION:
        raise ConfigError(f"--packing needs --attn_implementation {' or '.join(PACKED_ATTENTION)} (it passes its own "
                          f"attention mask), not {attn}: pass --no-packing or change the attention")  # fmt: skip
    need = a.prompt_length + d.max_length
    if d.pack_tokens < need:
        raise ConfigError(f"--pack_tokens {d.pack_tokens} cannot hold the longest example: it needs --prompt_length + "
                          f"--max_length = {need}; raise --pack_tokens")  # fmt: skip
    if o.warmup_steps < 0 or (o.warmup_steps >= o.max_steps and o.max_steps > 1 and o.warmup_steps > 0):
        raise ConfigError(f"warmup_steps={o.warmup_steps} must be in [0, max_steps={o.max_steps})")


def choose_loader(option: str, zero3: bool, model_type: str, ds_path: str) -> str:
    """layerwise or transformers. auto: layerwise under ZeRO-3 for the dense families its bitwise
    test covers; MoE experts load through transformers."""
    if option == "layerwise" and not zero3:
        raise ConfigError(f"--loader layerwise partitions the backbone with ZeRO-3: {ds_path} is not stage 3")
    if zero3 and (option == "layerwise" or (option == "auto" and model_type in DENSE_TYPES)):
        return "layerwise"
    return "transformers"


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
    check_given(cfg)
    resolved = resolve_config(cfg)
    check_resolved(resolved)
    return resolved
