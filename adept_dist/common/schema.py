"""Reading back what the project wrote: every JSON file (and safetensors header) checked against its
schema when it is read, a bad one turned into one line naming the file, the field, what was
expected, what was found and the fix (``SchemaError``, a ``UserError``: exit code 2, no traceback).

The schemas are pydantic v2 models in strict mode (``Record``): no "1" for 1, no 1.0 or true for an
integer, NaN and inf refused where a number must be finite; a field the model does not name passes
through untouched (files of older and newer releases keep loading; a format change bumps the file's
``format_version`` instead). A model says what a file holds; the module that owns the file defines
it next to the code that reads it, on top of the field types here:

    adapter_config.json, adept_merge.json's "adapter"  export.AdapterConfigFile
    adept_merge.json                                   merge.MergeInfoFile
    checkpoints/stepN/adept_meta.json                  checkpoint.CheckpointMeta
    config.json (a run's record)                       config.check_run_record (the options' own types)
    best.json                                          schema.BestFile
    results.json                                       schema.ResultsFile (read by launch/collect_results.py)
    lock.json                                          schema.LockFile (for lock.py)
    adapter tensors (safetensors headers)              schema.check_tensors

Reading one: ``read_json(path, Model, fix)`` (a missing file, bad JSON, a key given twice or a field
off its schema: one ``SchemaError``); ``load_json`` + ``check`` where the caller keeps the dict as it
was read (``check`` returns the validated model). ``error=`` raises the owner's own UserError
subclass instead, so a command that catches that class still sees one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adept_dist.common.errors import UserError, first_line
from adept_dist.common.fileio import refuse_duplicate_keys


class SchemaError(UserError, ValueError):
    """A file the project reads back does not hold what it should; the message names the file, the
    field, what was expected, what was found and the fix."""


class Record(BaseModel):
    """A file's schema: strict types, fields not named here kept as they are."""

    model_config = ConfigDict(strict=True, extra="allow")


M = TypeVar("M", bound=BaseModel)
PositiveInt = Annotated[int, Field(ge=1)]
Count = Annotated[int, Field(ge=0)]
Finite = Annotated[float, Field(allow_inf_nan=False)]

# what pydantic's error types mean, in the words of a JSON file
EXPECTED = {
    "int_type": "an integer",
    "string_type": "a string",
    "bool_type": "true or false",
    "float_type": "a number",
    "finite_number": "a finite number",
    "list_type": "a list",
    "dict_type": "a JSON object",
    "model_type": "a JSON object",
    "model_attributes_type": "a JSON object",
    "missing": "a value (the field is required)",
}


def shown(value, limit: int = 60) -> str:
    """A value as the file spells it (JSON), cut to `limit` characters."""
    try:
        text = json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def field_name(loc: tuple) -> str:
    """("scheduler", "base_lrs", 0) -> scheduler.base_lrs[0]."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(the whole file)"


def problem(path: str | Path, field: str, expected: str, got: str, fix: str) -> str:
    """The one line every schema error is: FILE: field F: expected ..., got ...; fix: ..."""
    return f"{path}: field {field}: expected {expected}, got {got}; fix: {fix}"


def explain(exc: ValidationError, path: str | Path, fix: str) -> str:
    """The first problem pydantic found, as one line (and how many more it found)."""
    errors = exc.errors()
    e = errors[0]
    kind, msg = e["type"], e["msg"]
    bound = {"greater_than_equal": ">=", "less_than_equal": "<=", "greater_than": ">", "less_than": "<"}
    if kind in EXPECTED:
        expected = EXPECTED[kind]
    elif kind in bound:
        limit = next(iter(e["ctx"].values()))
        expected = f"{'an integer' if isinstance(e['input'], int) else 'a number'} {bound[kind]} {limit}"
    elif kind == "too_short":
        expected = f"a list of at least {e['ctx']['min_length']} item(s)"
    elif kind == "string_pattern_mismatch":
        expected = f"a string matching the pattern {e['ctx']['pattern']}"
    elif kind == "value_error":
        expected = msg.removeprefix("Value error, ")
    else:
        expected = msg.removeprefix("Input should be ")
    got = "nothing" if kind == "missing" else shown(e.get("input"))
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return problem(path, field_name(e["loc"]), expected, got + more, fix)


def check(data, model: type[M], path: str | Path, fix: str, error: type[UserError] = SchemaError) -> M:
    """`data` (read from `path`) validated against `model`; one `error` line where it is not."""
    try:
        return model.model_validate(data, strict=True)
    except ValidationError as exc:
        raise error(explain(exc, path, fix)) from None


def load_json(path: str | Path, fix: str, error: type[UserError] = SchemaError, what: str = "") -> dict:
    """A JSON object from `path`: a missing file, unreadable bytes, bad JSON, a key given twice or
    anything but an object is one `error` line naming the file (`what` says what it is)."""
    path = Path(path)
    label = f"{path}{f' ({what})' if what else ''}"
    if not path.is_file():
        raise error(f"{label} not found; fix: {fix}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=refuse_duplicate_keys)
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{label} is unreadable ({first_line(exc, 200)}); fix: {fix}") from None
    except ValueError as exc:  # JSONDecodeError, a key given twice
        raise error(f"{label} is not valid JSON ({first_line(exc, 200)}); fix: {fix}") from None
    if not isinstance(data, dict):
        raise error(problem(label, "(the whole file)", "a JSON object", shown(data), fix))
    return data


def read_json(path: str | Path, model: type[M], fix: str, error: type[UserError] = SchemaError, what: str = "") -> M:
    """load_json + check: the file's validated record."""
    return check(load_json(path, fix, error, what), model, path, fix, error)


# ----------------------------------------------------------------------------- tensors
# safetensors' dtype names -> ours; an adapter is saved in fp32 (export.save_adapter), and a copy
# cast to bf16/fp16 still loads (into fp32 parameters); integers and fp64 are refused
FLOAT_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
DTYPE_NAMES = {"F64": "float64", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
               "BOOL": "bool"}  # fmt: skip


def check_tensors(
    path: str | Path,
    expected: dict[str, tuple[int, ...]],
    fix: str,
    error: type[UserError] = SchemaError,
    why: str = "",
    optional: dict[str, tuple[int, ...]] | None = None,
) -> None:
    """A safetensors file holds exactly the tensors `expected` (name -> shape; plus any of
    `optional`), each a float of that shape: read from the header alone, before any tensor is
    allocated. `why` says where the shapes come from (e.g. "the m, d of adapter_config.json")."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise error(f"{path} not found; fix: {fix}")
    try:
        with safe_open(str(path), "pt") as f:
            slices = {k: f.get_slice(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
            header = {k: (s.get_dtype(), tuple(s.get_shape())) for k, s in slices.items()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise error(f"{path} is corrupt ({first_line(exc, 200)}); fix: {fix}") from None
    allowed = {**(optional or {}), **expected}
    because = f" ({why})" if why else ""
    missing = [k for k in expected if k not in header]
    if missing:
        raise error(f"{path}: tensor {missing[0]}: expected the tensors {', '.join(expected)}{because}, got none "
                    f"named {missing[0]} (the file holds {', '.join(header) or 'no tensor'}); fix: {fix}")  # fmt: skip
    extra = [k for k in header if k not in allowed]
    if extra:
        raise error(f"{path}: tensor {extra[0]}: expected only the tensors {', '.join(allowed)}{because}, got "
                    f"{len(extra)} other(s) ({', '.join(extra[:5])}); fix: {fix}")  # fmt: skip
    for name, (dtype, shape) in header.items():
        if dtype not in FLOAT_DTYPES:
            raise error(f"{path}: tensor {name}: expected dtype float32 (or bfloat16/float16), got "
                        f"{DTYPE_NAMES.get(dtype, dtype.lower())}; fix: {fix}")  # fmt: skip
        if shape != tuple(allowed[name]):
            raise error(f"{path}: tensor {name}: expected shape {tuple(allowed[name])}{because}, got {shape}; "
                        f"fix: {fix}")  # fmt: skip


# ----------------------------------------------------------------------------- files owned by no module below
class Selection(Record):
    metric: str
    step: Count


class BestFile(Record):
    """OUT/best.json (evaluation.keep_if_best): the best validation result so far."""

    step: Count
    metric: str
    value: float  # NaN where the metric was (a constant prediction's correlation): written so, read so
    validation: dict


class ResultsFile(Record):
    """OUT/results.json (evaluation.write_results): the selected step's validation and test scores."""

    task: str
    method: Literal["adept", "dept", "pt"]
    seed: int
    model: str | None = None  # the fields launch/collect_results.py does not read are optional
    k_shot: PositiveInt | None = None
    max_steps: Count | None = None
    init_adapter: str | None = None
    trainable_parameters: Count | None = None
    metrics: Annotated[list[str], Field(min_length=1)]
    selection: Selection | None = None
    validation: dict[str, float | int] | None = None
    test: dict[str, float | int] | None = None
    data: dict = {}
    n: dict[str, Count] = {}  # {split: examples}
    intervals: dict[
        str, dict[str, Annotated[list[float], Field(min_length=2, max_length=2)]]
    ] = {}  # 95%, {split: {metric: [low, high]}}
    interval_method: dict[str, Literal["wilson", "bootstrap"]] = {}  # {metric: how its interval was found}


class LockFile(Record):
    """OUT/lock.json (lock.me): the job that holds a run folder."""

    host: str
    boot_id: str | None = None
    pid_ns: int | None = None
    pid: PositiveInt
    pid_start: str | None = None
    slurm_cluster: str | None = None
    slurm_job_id: str | None = None
    slurm_restart: Count = 0
    started: str
