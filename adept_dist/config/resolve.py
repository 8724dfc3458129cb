"""The configuration resolved once: defaults that depend on other options filled in one pure
pass (`resolve_config` returns a new Config), then checks that read it and change nothing."""

from __future__ import annotations

from adept_dist.common.errors import ConfigError
from adept_dist.common.trackers import TrackerError, parse_report_to
from adept_dist.config.options import FIELD_SECTION, Config, _check_value, build_parser, load_config_file
from adept_dist.data.tasks import get_task

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
    from adept_dist.model.lm import PACKED_ATTENTION

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
