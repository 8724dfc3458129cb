"""A run folder's record of its configuration (config.json): read and checked, and merged
with what a resumed start sets anew."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from adept_dist.common.errors import ConfigError
from adept_dist.common.fileio import refuse_duplicate_keys
from adept_dist.common.schema import Count, PositiveInt, Record, check, problem, shown
from adept_dist.config.options import FIELD_SECTION, SECTIONS, Config, _base_type, _check_value, _hints
from adept_dist.config.resolve import POSITIVE_OPTIONS, make_config

# What a resumed run may set anew: how it logs, evaluates, saves and runs on the machine (the global
# batch is checked against the checkpoint's; --max_steps needs --reschedule). Every other option
# changes the optimisation or the data, so it stays as the run's config.json says; --packing and
# --pack_tokens too: they lay the micro-batches out in other rows (other dropout draws, other sums).
CHANGEABLE_ON_RESUME = frozenset(
    ("resume", "reschedule", "take_over", "output_dir", "ds_config", "log_every", "eval_every", "save_every",
     "keep_checkpoints", "report_to", "max_eval_samples", "eval_batch_size", "eval_mode", "rank_by", "nonfinite", "cache_dir", "micro_batch_size",
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
    from adept_dist.model.lm import PACKED_ATTENTION

    attn = merged.get("attn_implementation")
    if merged.get("packing") and attn is not None and attn not in PACKED_ATTENTION:
        raise ConfigError(
            f"--resume: this run ({path}) packs its examples, which --attn_implementation {attn} cannot (it takes no "
            f"packed mask), and packing cannot change within a run: resume with --attn_implementation "
            f"{' or '.join(PACKED_ATTENTION)}, or start a new run in another --output_dir"
        )
