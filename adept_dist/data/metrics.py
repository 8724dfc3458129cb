"""Evaluation metrics of the ADePT paper's tasks, following the ATTEMPT/DePT conventions.

Every score is a percentage (x100), as in the paper's tables, and a plain Python float, never NaN.
``preds[i]`` is the generated text of example ``i``; ``refs[i]`` is a dict with ``"target"`` (the gold
label or answer text) and, depending on the task, ``"answers"`` (all gold answers of a QA example),
``"group"`` (the MultiRC question an answer option belongs to) or ``"program"`` (MBPP: ``"setup"`` code
and a list of assertion ``"tests"``).

Classification conventions: a prediction that is not one of the task's labels is counted as wrong
(``f1``/``f1a`` replace it by a label different from the target, as ATTEMPT's ``f1_score_with_invalid``
does; ``macro_f1``/``mcc``/``accuracy`` simply never match it). STS-B predictions that do not parse as
a finite float score as -1.0 (ATTEMPT's ``string_to_float`` default). QA answers are compared after
SQuAD v1.1 normalisation.

``pass@1`` runs the model's generated code. Each program runs in a fresh ``python -I`` subprocess in
an empty temporary directory with a reduced environment, a wall-clock timeout and POSIX resource
limits (CPU time, address space, file size, no core dumps). That is resource-limited isolation, NOT
a security sandbox: the program can still read the file system, use the network and do anything the
user running the evaluation may do. ``compute`` refuses it unless ``allow_code_execution=True``; run
it inside a container or VM. (``METRICS["pass@1"]`` itself executes without asking: the gate is in
``compute``.)
"""

from __future__ import annotations

import math
import os
import re
import signal
import string
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from adept_dist.data.stats import bootstrap_interval, wilson

EXEC_TIMEOUT_S = 10  # wall-clock (and CPU) seconds one MBPP program may run
_EXEC_MEMORY_BYTES = 2 * 1024**3  # RLIMIT_AS
_EXEC_FILE_BYTES = 10 * 1024**2  # RLIMIT_FSIZE
_EXEC_ENV = {"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0"}
_BINARY_LABELS = ("0", "1")
_POSITIVE = "1"
_PUNCTUATION = frozenset(string.punctuation)

MetricFn = Callable[[list[str], list[dict], tuple[str, ...] | None], float]


class MetricError(ValueError):
    """A metric cannot be computed; the message names the problem and says how to fix it."""


# --------------------------------------------------------------------------------------------- helpers


def parse_float(text: str) -> float:
    """``text`` as a float, or -1.0 when it is not a finite number (ATTEMPT's ``string_to_float``)."""
    try:
        value = float(text.strip())
    except (ValueError, AttributeError):
        return -1.0
    return value if math.isfinite(value) else -1.0


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 answer normalisation: lowercase, drop punctuation and articles, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _targets(refs: list[dict]) -> list[str]:
    return [r["target"] for r in refs]


def _answers(ref: dict) -> list[str]:
    """All gold answers of a QA example; ``[target]`` when ``"answers"`` is absent or empty."""
    return list(ref.get("answers") or [ref["target"]])


def _check_targets(targets: list[str], labels: tuple[str, ...], metric: str) -> None:
    bad = sorted({t for t in targets if t not in labels})
    if bad:
        raise MetricError(
            f"{metric}: targets {bad[:5]} are not among the labels {list(labels)}; fix the data or labels"
        )


def _mean_percent(rows: list[float]) -> float:
    return _percent(sum(rows) / len(rows))


def _percent(value: float) -> float:
    """100 * value as a Python float; an undefined (NaN/inf) value becomes 0.0."""
    value = float(value)
    return 100.0 * value if math.isfinite(value) else 0.0


# ------------------------------------------------------------------------------------- classification


def _accuracy_rows(preds: list[str], refs: list[dict], labels: tuple[str, ...] | None) -> list[float]:
    """1.0 where the prediction equals the target string, else 0.0."""
    return [float(p == t) for p, t in zip(preds, _targets(refs))]


def _accuracy(preds: list[str], refs: list[dict], labels: tuple[str, ...] | None) -> float:
    """Percent of predictions equal to the target string."""
    return _mean_percent(_accuracy_rows(preds, refs, labels))


def _binary_f1_with_invalid(
    preds: list[str], refs: list[dict], labels: tuple[str, ...] | None, metric: str = "f1"
) -> float:
    """Binary F1 of label "1"; a prediction outside ``labels`` is replaced by a label other than the target."""
    labels = tuple(labels) if labels else _BINARY_LABELS
    if _POSITIVE not in labels or len(labels) < 2:
        raise MetricError(f"{metric} needs the positive label '1' and another label, got {list(labels)}; fix labels")
    targets = _targets(refs)
    _check_targets(targets, labels, metric)
    fixed = [p if p in labels else next(lab for lab in labels if lab != t) for p, t in zip(preds, targets)]
    y_true = [t == _POSITIVE for t in targets]
    y_pred = [p == _POSITIVE for p in fixed]
    from sklearn.metrics import f1_score  # here: importing sklearn (and scipy) costs every process ~2 s

    return _percent(f1_score(y_true, y_pred, zero_division=0.0))


def _f1(preds: list[str], refs: list[dict], labels: tuple[str, ...] | None) -> float:
    """MRPC/QQP: binary F1 of "1", invalid predictions counted wrong."""
    return _binary_f1_with_invalid(preds, refs, labels, "f1")


def _f1a(preds: list[str], refs: list[dict], labels: tuple[str, ...] | None) -> float:
    """MultiRC F1a: binary F1 of "1" over all answer options, invalid predictions counted wrong."""
    return _binary_f1_with_invalid(preds, refs, labels, "f1a")


def _macro_f1(preds: list[str], refs: list[dict], labels: tuple[str, ...] | None) -> float:
    """CB: unweighted mean of the per-label F1 over ``labels``; invalid predictions never match."""
    if not labels:
        raise MetricError("macro_f1 needs the task's labels; pass labels=(...) for this classification task")
    targets = _targets(refs)
    _check_targets(targets, labels, "macro_f1")
    from sklearn.metrics import f1_score

    return _percent(f1_score(targets, preds, average="macro", labels=list(labels), zero_division=0.0))


def _mcc(preds: list[str], refs: list[dict], labels: tuple[str, ...] | None) -> float:
    """CoLA: Matthews correlation on the label strings (an invalid prediction is one more class)."""
    from sklearn.metrics import matthews_corrcoef

    return _percent(matthews_corrcoef(_targets(refs), preds))


def _em_groups(preds: list[str], refs: list[dict], labels: tuple[str, ...] | None) -> float:
    """MultiRC EM: percent of questions (``ref["group"]``) whose every answer option is predicted right."""
    all_right: dict[object, bool] = {}
    for i, (pred, ref) in enumerate(zip(preds, refs)):
        if "group" not in ref:
            raise MetricError(f"em needs refs[i]['group'] (the MultiRC question id); example {i} has none")
        group = ref["group"]
        all_right[group] = all_right.get(group, True) and pred == ref["target"]
    return _percent(sum(all_right.values()) / len(all_right))


# ----------------------------------------------------------------------------------------- regression


def _regression_pairs(preds: list[str], refs: list[dict], metric: str) -> tuple[list[float], list[float]]:
    xs = [parse_float(p) for p in preds]
    ys: list[float] = []
    for i, ref in enumerate(refs):
        try:
            y = float(ref["target"])
        except ValueError:
            y = math.nan
        if not math.isfinite(y):
            raise MetricError(f"{metric}: target {ref['target']!r} of example {i} is not a finite number; fix the data")
        ys.append(y)
    return xs, ys


def _correlation(xs: list[float], ys: list[float], fn: Callable) -> float:
    """fn(xs, ys) as a percent; 0.0 where it is undefined (constant input or a single example)."""
    if len(set(xs)) < 2 or len(set(ys)) < 2:
        return 0.0
    return _percent(fn(xs, ys)[0])


def _pearson(preds: list[str], refs: list[dict], labels: tuple[str, ...] | None) -> float:
    """STS-B: Pearson correlation of the parsed scores."""
    from scipy.stats import pearsonr

    return _correlation(*_regression_pairs(preds, refs, "pearson"), pearsonr)


def _spearman(preds: list[str], refs: list[dict], labels: tuple[str, ...] | None) -> float:
    """STS-B: Spearman rank correlation of the parsed scores."""
    from scipy.stats import spearmanr

    return _correlation(*_regression_pairs(preds, refs, "spearman"), spearmanr)


# ------------------------------------------------------------------------------------------------- QA


def _exact(pred: str, gold: str) -> float:
    return float(normalize_answer(pred) == normalize_answer(gold))


def _token_f1(pred: str, gold: str) -> float:
    """SQuAD token F1 of one pair; two empty answers agree (1.0), one empty answer scores 0.0."""
    pred_tokens = normalize_answer(pred).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _exact_rows(preds: list[str], refs: list[dict], labels: tuple[str, ...] | None) -> list[float]:
    return [max(_exact(p, g) for g in _answers(r)) for p, r in zip(preds, refs)]


def _exact_match(preds: list[str], refs: list[dict], labels: tuple[str, ...] | None) -> float:
    """SQuAD EM: percent of predictions matching some gold answer after normalisation."""
    return _mean_percent(_exact_rows(preds, refs, labels))


def _token_f1_rows(preds: list[str], refs: list[dict], labels: tuple[str, ...] | None) -> list[float]:
    return [max(_token_f1(p, g) for g in _answers(r)) for p, r in zip(preds, refs)]


def _squad_f1(preds: list[str], refs: list[dict], labels: tuple[str, ...] | None) -> float:
    """SQuAD token F1: mean over examples of the best token F1 against any gold answer."""
    return _mean_percent(_token_f1_rows(preds, refs, labels))


# ----------------------------------------------------------------------------------------------- MBPP


def _set_limits(timeout_s: int) -> None:
    """preexec_fn: cap CPU time, address space and file size, and disable core dumps."""
    import resource

    def cap(which: int, value: int, hard_extra: int = 0) -> None:
        _, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
            hard_value = min(value + hard_extra, hard)
        else:
            hard_value = value + hard_extra
        resource.setrlimit(which, (value, hard_value))

    cap(resource.RLIMIT_CPU, timeout_s, hard_extra=1)  # SIGXCPU at the soft limit, SIGKILL one second later
    cap(resource.RLIMIT_AS, _EXEC_MEMORY_BYTES)
    cap(resource.RLIMIT_FSIZE, _EXEC_FILE_BYTES)
    cap(resource.RLIMIT_CORE, 0)


def _run_program(source: str, timeout_s: int) -> bool:
    """Run ``source`` in an isolated, resource-limited Python subprocess; True if it exits 0 in time."""
    with tempfile.TemporaryDirectory(prefix="adept_exec_") as tmp:
        path = Path(tmp) / "program.py"
        path.write_text(source, encoding="utf-8")
        proc = subprocess.Popen(
            [sys.executable, "-I", str(path)],
            cwd=tmp,
            env=dict(_EXEC_ENV),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=lambda: _set_limits(timeout_s),
            start_new_session=True,  # its own process group, so a timeout also kills what it spawned
        )
        try:
            return proc.wait(timeout=timeout_s) == 0
        except subprocess.TimeoutExpired:
            return False
        finally:
            # Kill the program's whole process group, children it left behind included. After a timeout the
            # child is not reaped yet, so its group id is still ours; after an exit the id stays reserved while
            # any group member lives, and with none left killpg just finds nothing.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()


def _program(pred: str, ref: dict, i: int) -> str:
    prog = ref.get("program")
    if not isinstance(prog, dict) or not isinstance(prog.get("tests"), list):
        raise MetricError(f"pass@1 needs refs[i]['program'] = {{'setup': str, 'tests': [str]}}; example {i} has none")
    return f"{prog.get('setup', '')}\n{pred}\n" + "\n".join(prog["tests"]) + "\n"


def _pass_rows(preds: list[str], refs: list[dict], labels: tuple[str, ...] | None) -> list[float]:
    """1.0 for each program (setup + prediction + assertions) that exits 0 within the timeout."""
    sources = [_program(p, r, i) for i, (p, r) in enumerate(zip(preds, refs))]
    timeout_s = int(EXEC_TIMEOUT_S)  # read at call time so tests can lower it
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return [float(ok) for ok in pool.map(lambda src: _run_program(src, timeout_s), sources)]


def _pass_at_1(preds: list[str], refs: list[dict], labels: tuple[str, ...] | None) -> float:
    """MBPP pass@1: percent of programs that pass."""
    return _mean_percent(_pass_rows(preds, refs, labels))


# ------------------------------------------------------------------------------------------------- API

METRICS: dict[str, MetricFn] = {
    "accuracy": _accuracy,
    "f1": _f1,
    "macro_f1": _macro_f1,
    "mcc": _mcc,
    "pearson": _pearson,
    "spearman": _spearman,
    "f1a": _f1a,
    "em": _em_groups,
    "exact_match": _exact_match,
    "token_f1": _squad_f1,
    "pass@1": _pass_at_1,
}

_CODE_METRICS = frozenset({"pass@1"})


# The metrics that are a mean over examples: their per-example scores (0..1), and whether those are 0 or 1
# (then the interval is Wilson's; otherwise a bootstrap over examples, as for every other metric).
ROW_METRICS: dict[str, tuple[Callable[[list[str], list[dict], tuple[str, ...] | None], list[float]], bool]] = {
    "accuracy": (_accuracy_rows, True),
    "exact_match": (_exact_rows, True),
    "pass@1": (_pass_rows, True),
    "token_f1": (_token_f1_rows, False),
}


@dataclass
class Scores:
    """A split's scores: `values` {metric: %}; `rows` {metric: per-example scores in 0..1} for the
    metrics that are a mean over examples; `intervals` {metric: [low, high]} (95%, in %) and
    `interval_method` {metric: "wilson" | "bootstrap"} when asked for."""

    values: dict[str, float]
    rows: dict[str, list[float]] = field(default_factory=dict)
    intervals: dict[str, list[float]] = field(default_factory=dict)
    interval_method: dict[str, str] = field(default_factory=dict)


def check_inputs(names: Sequence[str], preds: list[str], refs: list[dict], allow_code_execution: bool) -> None:
    """Everything checked before any metric runs: the names, the lengths, every ref's ``"target"``,
    and that ``allow_code_execution`` is set when a metric executes the model's code."""
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise MetricError(f"unknown metric(s) {unknown}; choose from {sorted(METRICS)}")
    if len(preds) != len(refs):
        raise MetricError(f"{len(preds)} predictions but {len(refs)} references; pass one prediction per reference")
    if not preds:
        raise MetricError("no predictions to score; pass at least one example")
    for i, (pred, ref) in enumerate(zip(preds, refs)):
        if not isinstance(pred, str):
            raise MetricError(f"preds[{i}] must be the generated text (str); got {type(pred).__name__}")
        if not isinstance(ref, dict) or not isinstance(ref.get("target"), str):
            raise MetricError(f"refs[{i}] must be a dict with a string 'target'; got {ref!r:.80}")
    if not allow_code_execution and _CODE_METRICS.intersection(names):
        raise MetricError(
            "pass@1 executes the model's generated code; pass --allow_code_execution to accept that "
            "(run it in a container or VM)"
        )


def score(
    names: Sequence[str],
    preds: list[str],
    refs: list[dict],
    labels: tuple[str, ...] | None = None,
    allow_code_execution: bool = False,
    intervals: bool = True,
) -> Scores:
    """The named metrics of ``preds`` against ``refs`` (percentages, in order), the per-example
    scores of those that are a mean over examples, and with `intervals` each one's 95% interval
    (data/stats.py: Wilson for 0/1 scores, else a bootstrap over examples). pass@1 runs each
    program once."""
    check_inputs(names, preds, refs, allow_code_execution)
    clean = [p.strip() for p in preds]
    labels = tuple(labels) if labels is not None else None
    n = len(clean)
    out = Scores({})
    for name in names:
        if name in ROW_METRICS:
            rows_of, binary = ROW_METRICS[name]
            rows = rows_of(clean, refs, labels)
            out.values[name], out.rows[name] = _mean_percent(rows), rows
            if not intervals:
                continue
            if binary:
                low, high = wilson(int(sum(rows)), n)
            else:
                arr = np.asarray(rows, dtype=float)
                low, high = bootstrap_interval(lambda idx, arr=arr: 100.0 * float(arr[idx].mean()), n)
            out.interval_method[name] = "wilson" if binary else "bootstrap"
        else:
            fn = METRICS[name]
            out.values[name] = float(fn(clean, refs, labels))
            if not intervals:
                continue
            low, high = bootstrap_interval(
                lambda idx, fn=fn: float(fn([clean[i] for i in idx], [refs[i] for i in idx], labels)), n
            )
            out.interval_method[name] = "bootstrap"
        out.intervals[name] = [round(low, 4), round(high, 4)]
    return out


def compute(
    names: Sequence[str],
    preds: list[str],
    refs: list[dict],
    labels: tuple[str, ...] | None = None,
    allow_code_execution: bool = False,
) -> dict[str, float]:
    """Compute the named metrics (percentages) of ``preds`` against ``refs``; returns {name: value} in order
    (`score` without the intervals)."""
    return score(names, preds, refs, labels, allow_code_execution, intervals=False).values
