"""BIG-bench JSON tasks as ``--task bigbench:NAME`` (``bigbench:NAME/SUBTASK`` for one subtask).

Where the task comes from, in order: ``--data_dir`` as a BIG-bench checkout (``.../bigbench/
benchmark_tasks/NAME``), the ``benchmark_tasks`` folder, a task folder itself (holding
``task.json``), or the PyPI sdist tarball ``bigbench-1.0.0.tar.gz`` (read member by member, never
extracted); without ``--data_dir`` the hub's ``tasksource/bigbench`` (its columns ``inputs``,
``targets``, ``multiple_choice_targets``, ``multiple_choice_scores``).

A task with subtasks (``logical_deduction/three_objects``, ...) and no examples of its own is the
union of its subtasks, each example formatted with its own subtask's prefixes (BIG-bench scores
such a task over all of them too).

An example becomes text to text, as BIG-bench prompts a model zero-shot: ``task_prefix +
example_input_prefix + input (+ the choices, where the task appends them) + example_output_prefix``
(BIG-bench's defaults where the task sets none), stripped; the run's ``--separator`` follows.
- Multiple choice (``target_scores``): the target is the best-scoring option; an example whose
  best score is shared by several options is dropped and counted (``dropped_tied`` in the run's data info). When every
  example has the same options (in any order), they are the task's label words (``--k_shot``
  balances them). Options and targets are compared stripped (what evaluation compares); options
  that then coincide make the example a tie.
  The metric is exact-match accuracy: a generated answer outside the options scores wrong.
- Free text (``target``: a string or a list): every target is a training example; the metric is
  exact match against any of them (SQuAD-normalised, as for the paper's QA tasks).

Splits (the paper's small-task convention, ``--split_seed``): a BIG-bench task has one pool of
examples, so a seeded shuffle of it holds out 20% (at least 2), which is halved into validation
and test as a small task's official validation set is; training takes the rest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tarfile
from pathlib import Path

from adept_dist.data.examples import DataError
from adept_dist.data.tasks import BIGBENCH_HUB, Task, parse_name

HELD_OUT = 0.2  # of the pool: validation + test
# BIG-bench's own defaults (bigbench/api/json_task.py) for a task.json that does not set them
DEFAULTS = {"task_prefix": "", "example_input_prefix": "\nQ: ", "example_output_prefix": "\nA: ",
            "choice_prefix": "\n  choice: ", "append_choices_to_input": True}  # fmt: skip


# ----------------------------------------------------------------------------- reading task.json files
def read_local(data_dir: str, task: str, sub: str | None) -> list[tuple[str, dict]]:
    """[(subtask path, parsed task.json)] of a task from a checkout, a folder or the sdist tarball."""
    root = Path(data_dir).expanduser()
    if root.is_file():
        return read_tarball(root, task, sub)
    if not root.is_dir():
        raise DataError(
            f"--data_dir {data_dir} does not exist: give a BIG-bench checkout, a task folder, or the sdist "
            f"bigbench-1.0.0.tar.gz"
        )
    folder = None
    for cand in (root / "bigbench" / "benchmark_tasks" / task, root / "benchmark_tasks" / task, root / task, root):
        # a task folder is named after its task: another task's folder is never read by mistake
        if cand.name == task and ((cand / "task.json").is_file() or any(cand.glob("*/task.json"))):
            folder = cand
            break
    if folder is None:
        raise DataError(
            f"task bigbench:{task}: no {task}/task.json under --data_dir {data_dir} (looked in bigbench/benchmark_tasks/, "
            f"benchmark_tasks/ and the folder itself, which must be named {task}): give a BIG-bench checkout or the "
            f"sdist tarball"
        )
    files = {p.relative_to(folder).parent.as_posix(): p for p in [folder / "task.json", *folder.glob("*/task.json")]
             if p.is_file()}  # fmt: skip
    return pick(files, task, sub, str(folder), lambda p: p.read_bytes())


def read_tarball(path: Path, task: str, sub: str | None) -> list[tuple[str, dict]]:
    """The task's task.json files from the sdist, streamed (one pass, nothing extracted)."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r|*") as tf:
            for member in tf:
                parts = member.name.split("/")
                if "benchmark_tasks" not in parts or not member.isfile() or parts[-1] != "task.json":
                    continue
                rel = parts[parts.index("benchmark_tasks") + 1 : -1]
                if rel and rel[0] == task and len(rel) <= 2:
                    found["/".join(rel[1:]) or "."] = tf.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(
            f"--data_dir {path} is not a readable tar archive ({exc}): give the sdist bigbench-1.0.0.tar.gz "
            f"(download it again if it is damaged), a checkout or a task folder"
        ) from None
    if not found:
        raise DataError(
            f"task bigbench:{task}: {path} holds no benchmark_tasks/{task}/task.json: check the task's name "
            f"(its folder in bigbench/benchmark_tasks)"
        )
    return pick(found, task, sub, str(path), lambda raw: raw)


def pick(files: dict, task: str, sub: str | None, where: str, read) -> list[tuple[str, dict]]:
    """The task.json files that make the task: the subtask's, or the task's own examples, or all subtasks."""
    subs = sorted(k for k in files if k != ".")
    if sub is not None:
        if sub not in files:
            raise DataError(
                f"task bigbench:{task}/{sub}: no such subtask in {where}; it has {', '.join(subs) or 'none'}"
            )
        keys = [sub]
    else:
        keys = ["."] if "." in files else subs
    out = []
    for key in keys:
        raw = read(files[key])
        try:
            spec = json.loads(raw)
        except ValueError as exc:
            raise DataError(f"task bigbench:{task}: {key}/task.json in {where} is not valid JSON ({exc})") from None
        if not isinstance(spec, dict):
            raise DataError(f"task bigbench:{task}: {key}/task.json in {where} is not a JSON object")
        if key == "." and not spec.get("examples") and subs and sub is None:  # a parent with subtasks only
            return pick({k: v for k, v in files.items() if k != "."}, task, None, where, read)
        if not isinstance(spec.get("examples"), list) or not spec["examples"]:
            raise DataError(
                f"task bigbench:{task}: {key}/task.json in {where} has no examples "
                f"(a programmatic task, or a parent of subtasks: {', '.join(subs) or 'none'})"
            )
        out.append((key, spec))
    return out


# ----------------------------------------------------------------------------- examples -> rows
def source_text(spec: dict, text: str, options: list[str] | None) -> str:
    s = {**DEFAULTS, **{k: spec[k] for k in DEFAULTS if k in spec}}
    choices = ""
    if options and s["append_choices_to_input"]:
        choices = "".join(s["choice_prefix"] + o for o in options)
    return (s["task_prefix"] + s["example_input_prefix"] + text + choices + s["example_output_prefix"]).strip()


def choice_row(text: str, scores: list[tuple[str, float]]) -> dict | None:
    """A multiple-choice row: the best option as the target, options compared as the stripped text
    that is generated and scored; None when the best is not unique (a tie, or two options that
    differ only in surrounding whitespace)."""
    options = [(o.strip(), v) for o, v in scores]
    best = max(v for _, v in options)
    winners = {o for o, v in options if v == best}
    if len(winners) != 1 or sum(o in winners for o, _ in options) > 1:
        return None
    return {"input": text, "targets": sorted(winners), "options": list(dict.fromkeys(o for o, _ in options))}


def rows_from_specs(name: str, specs: list[tuple[str, dict]]) -> tuple[list[dict], dict]:
    """Rows {"input", "targets", "options"} in file order, and counts (tied and malformed examples)."""
    rows, tied = [], 0
    for key, spec in specs:
        for i, ex in enumerate(spec["examples"]):
            where = f"task {name}: {key}/task.json example {i}"
            if not isinstance(ex, dict) or not isinstance(ex.get("input"), str):
                raise DataError(f"{where} has no text 'input'")
            if isinstance(ex.get("target_scores"), dict) and ex["target_scores"]:
                try:
                    scores = [(o, float(v)) for o, v in ex["target_scores"].items()]
                except (TypeError, ValueError):
                    raise DataError(f"{where}: target_scores must map options to numbers") from None
                row = choice_row(source_text(spec, ex["input"], list(ex["target_scores"])), scores)
                if row is None:
                    tied += 1
                    continue
                rows.append(row)
            elif isinstance(ex.get("target"), (str, list)):
                targets = [ex["target"]] if isinstance(ex["target"], str) else ex["target"]
                if not all(isinstance(t, str) for t in targets):
                    raise DataError(f"{where}: target must be text or a list of texts")
                targets = [t.strip() for t in targets if t.strip()]
                if not targets:
                    raise DataError(f"{where}: empty target")
                rows.append({"input": source_text(spec, ex["input"], None), "targets": targets, "options": None})
            else:
                raise DataError(f"{where} has neither target_scores nor target")
    return rows, {"dropped_tied": tied}


def rows_from_hub(ds) -> tuple[list[dict], dict]:
    """tasksource/bigbench rows (`inputs`, the prompt as the hub gives it; options and scores in two lists)."""
    rows, tied = [], 0
    for i, r in enumerate(ds):
        options, scores = list(r.get("multiple_choice_targets") or []), list(r.get("multiple_choice_scores") or [])
        if options:
            if len(scores) != len(options):
                raise DataError(f"{BIGBENCH_HUB} row {i}: {len(options)} options but {len(scores)} scores")
            row = choice_row(r["inputs"].strip(), list(zip(options, map(float, scores))))
            if row is None:
                tied += 1
                continue
            rows.append(row)
        else:
            targets = [t.strip() for t in r["targets"] if t.strip()]
            if targets:
                rows.append({"input": r["inputs"].strip(), "targets": targets, "options": None})
    return rows, {"dropped_tied": tied}


def load(task: Task, data_dir: str | None) -> tuple[Task, dict, dict]:
    """(the task with its labels and metric, {"all": Dataset of rows}, info: counts and the content's fingerprint)."""
    import datasets

    name, sub = parse_name(task.name)
    if data_dir is not None:
        rows, info = rows_from_specs(task.name, read_local(data_dir, name, sub))
    elif sub is not None:
        raise DataError(
            f"task {task.name}: one subtask is read from a BIG-bench checkout or the sdist tarball: pass --data_dir "
            f"(the hub's {BIGBENCH_HUB} holds the task {name} as a whole)"
        )
    else:
        datasets.disable_progress_bars()
        try:
            hub = datasets.load_dataset(BIGBENCH_HUB, name)
            ds = datasets.concatenate_datasets([hub[s] for s in sorted(hub)])
        except Exception as exc:  # noqa: BLE001 - offline, unknown task: one actionable line
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(
                f"task {task.name}: cannot load {BIGBENCH_HUB} ({name}) from the hub ({msg}); without hub access pass "
                f"--data_dir with a BIG-bench checkout or the sdist tarball (pip download --no-deps "
                f"--no-binary :all: bigbench==1.0.0)"
            ) from None
        rows, info = rows_from_hub(ds)
    if not rows:
        raise DataError(f"task {task.name}: no usable examples ({info['dropped_tied']} dropped for tied best options)")
    option_sets = {frozenset(r["options"]) if r["options"] else None for r in rows}
    labels = None
    if len(option_sets) == 1 and None not in option_sets:  # the same options (in any order) everywhere
        labels = tuple(rows[0]["options"])
    generative = all(r["options"] is None for r in rows)
    refined = dataclasses.replace(
        task, labels=labels, metrics=("exact_match",) if generative else ("accuracy",), multi_answer=generative
    )
    records = [{"input": r["input"], "targets": r["targets"]} for r in rows]
    # an in-memory dataset's own fingerprint is random: the tokenised-data cache keys on the content
    info["fingerprint"] = hashlib.sha256(json.dumps([records, labels], sort_keys=True).encode()).hexdigest()
    return refined, {"all": datasets.Dataset.from_list(records)}, info


def pool_splits(n: int, split_seed: int, permutation) -> dict[str, list[int]]:
    """Seeded shuffle of the pool: 20% held out (at least 2) and halved into validation and test."""
    if n < 3:
        raise DataError(f"a BIG-bench task needs at least 3 usable examples to split, this one has {n}")
    perm = permutation(n, split_seed)
    held = max(2, round(n * HELD_OUT))
    half = held // 2
    return {"validation": perm[:half], "test": perm[half:held], "train": perm[held:]}
