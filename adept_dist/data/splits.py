"""A task's data, ready to train on: load (hub or local copy) -> split -> few-shot -> format ->
tokenise, done once by the main process and cached; the other ranks receive the result.

Local copies: ``--data_dir`` is a folder holding, per hub split, a ``save_to_disk`` dataset, or
JSONL / JSON / CSV / parquet files named after the split (``train.jsonl``, ``validation.parquet``,
``train-00000-of-00001.parquet`` as in a hub snapshot, optionally under a folder named after the
dataset config, e.g. ``glue/rte/train-00000-of-00001.parquet``), with the hub's columns.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from adept_dist.common.fileio import atomic_write
from adept_dist.data import bigbench
from adept_dist.data.examples import DataError, Example, encode, read_rows
from adept_dist.data.tasks import Task, is_bigbench

CACHE_VERSION = 2  # bump when formatting or encoding changes (2: data.leading_ids, data.Joiner)
FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass
class EvalSet:
    """Examples to score: ids for the teacher-forced loss (source + first target) and references."""

    examples: list[Example]
    refs: list[dict]  # {"target": str, "answers"?: [str], "group"?: str, "program"?: {...}, "options"?: [str]}


@dataclass
class TaskData:
    name: str
    metrics: tuple[str, ...]
    labels: tuple[str, ...] | None
    train: list[Example]
    evals: dict[str, EvalSet]  # "validation", "test" (either may be absent for custom files)
    info: dict = field(default_factory=dict)  # sizes, truncations, dropped rows: logged and kept in results


# ----------------------------------------------------------------------------- loading
def find_split_files(root: Path, split: str, config: str | None) -> list[Path]:
    """Files of one split under a local copy (see the module doc)."""
    base = root / config if config and (root / config).is_dir() else root
    found = []
    for p in sorted(base.rglob("*")):
        if not p.is_file() or p.suffix not in FORMATS:
            continue
        stem = p.name[: -len(p.suffix)]
        if stem == split or stem.startswith(split + "-"):
            found.append(p)
    return found


def load_split(task: Task, data_dir: str | None, split: str):
    """One hub split of a task as a datasets.Dataset (not yet filtered to the task's subset)."""
    import datasets

    datasets.disable_progress_bars()
    if data_dir is None:
        try:
            return datasets.load_dataset(task.hub, task.hub_config, split=split)
        except Exception as exc:  # noqa: BLE001 - offline, unknown id, network: one actionable line
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(
                f"task {task.name}: cannot load {task.hub} ({task.hub_config or 'default'}) split {split} "
                f"from the hub ({msg}); without hub access pass --data_dir with a local copy in the hub's schema"
            ) from None
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"--data_dir {data_dir} is not a folder: give the folder that holds the task's split files")
    for cand in (root / task.hub_config if task.hub_config else None, root):
        if cand is not None and (cand / "dataset_dict.json").is_file():  # DatasetDict.save_to_disk
            dd = datasets.load_from_disk(str(cand))
            if split not in dd:
                raise DataError(f"task {task.name}: {cand} has splits {', '.join(dd)} but not {split}")
            return dd[split]
    for cand in (root / (task.hub_config or "") / split, root / split):
        if (cand / "state.json").is_file():  # Dataset.save_to_disk
            return datasets.load_from_disk(str(cand))
    files = find_split_files(root, split, task.hub_config)
    if not files:
        raise DataError(
            f"task {task.name}: no {split} data under {data_dir}: expected {split}.jsonl, {split}.csv, "
            f"{split}.parquet or {split}-*.parquet (the hub split name) in that folder"
        )
    kinds = {FORMATS[p.suffix] for p in files}
    if len(kinds) > 1:
        raise DataError(f"task {task.name}: split {split} has files of several formats: {', '.join(map(str, files))}")
    try:
        return datasets.load_dataset(kinds.pop(), data_files=[str(p) for p in files], split="train")
    except Exception as exc:  # noqa: BLE001 - malformed files: name them
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"task {task.name}: cannot read {', '.join(map(str, files))}: {msg}") from None


def check_columns(task: Task, ds, where: str) -> None:
    missing = [c for c in task.columns if c not in ds.column_names]
    if missing:
        raise DataError(
            f"task {task.name}: {where} lacks column(s) {', '.join(missing)}; it needs the schema of "
            f"{task.hub}{' (' + task.hub_config + ')' if task.hub_config else ''}: {', '.join(task.columns)}"
        )


def source_fingerprint(task: Task, data_dir: str | None, raw: dict) -> list:
    fp = []
    for split, ds in raw.items():
        files = [(f["filename"]) for f in (ds.cache_files or [])]
        stats = [(f, os.path.getsize(f), os.stat(f).st_mtime_ns) for f in files if os.path.exists(f)]
        fp.append([split, len(ds), getattr(ds, "_fingerprint", None), stats])
    return [task.name, task.hub, task.hub_config, data_dir and str(Path(data_dir).resolve()), fp]


# ----------------------------------------------------------------------------- splits
def attempt_permutation(n: int, seed: int) -> list[int]:
    """The reference's shuffle: torch.randperm with a generator seeded by the split seed."""
    g = torch.Generator()
    g.manual_seed(seed)
    return torch.randperm(n, generator=g).tolist()


def subset_indices(task: Task, ds) -> list[int]:
    if task.subset is None:
        return list(range(len(ds)))
    column, value = task.subset
    return [i for i, v in enumerate(ds[column]) if v == value]


def make_splits(task: Task, raw: dict, split_seed: int, validation_size: int | None) -> dict[str, tuple]:
    """{"train"|"validation"|"test": (hub split, row indices)} by the task's split rule."""
    idx = {s: subset_indices(task, ds) for s, ds in raw.items()}
    if task.splits == "pool":  # one pool of examples (BIG-bench): a seeded held-out part, halved
        parts = bigbench.pool_splits(len(idx[task.train_split]), split_seed, attempt_permutation)
        return {name: (task.train_split, [idx[task.train_split][i] for i in rows]) for name, rows in parts.items()}
    train_idx = idx[task.train_split]
    if task.splits == "small":  # official validation halved: validation, test
        val = idx[task.validation_split]
        perm = [val[i] for i in attempt_permutation(len(val), split_seed)]
        half = len(val) // 2
        return {
            "train": (task.train_split, train_idx),
            "validation": (task.validation_split, perm[:half]),
            "test": (task.validation_split, perm[half:]),
        }
    if task.splits == "large":  # validation_size training rows as validation, official validation as test
        size = validation_size or task.validation_size
        if len(train_idx) <= size:
            raise DataError(
                f"task {task.name}: the train split has {len(train_idx)} rows, not more than the {size} held out "
                f"as validation; give the full train split or a smaller --validation_size"
            )
        perm = [train_idx[i] for i in attempt_permutation(len(train_idx), split_seed)]
        return {
            "train": (task.train_split, perm[size:]),
            "validation": (task.train_split, perm[:size]),
            "test": (task.test_hub_split, idx[task.test_hub_split]),
        }
    return {
        "train": (task.train_split, train_idx),
        "validation": (task.validation_split, idx[task.validation_split]),
        "test": (task.test_hub_split, idx[task.test_hub_split]),
    }


def few_shot(rows: list[dict], k: int, seed: int, labels: tuple[str, ...] | None, task: str) -> list[dict]:
    """k rows per class (class balanced), drawn with the run seed; STS-B's classes are label >= 2.5
    and < 2.5; a task without classes (QA, code) takes k rows in all."""
    if task == "stsb":
        key = lambda r: float(r["targets"][0]) >= 2.5  # noqa: E731
    elif labels is not None:
        key = lambda r: r["targets"][0]  # noqa: E731
    else:
        key = lambda r: 0  # noqa: E731
    classes: dict = defaultdict(list)
    for i, r in enumerate(rows):
        classes[key(r)].append(i)
    out = []
    for c in sorted(classes, key=str):
        members = classes[c]
        if len(members) < k:
            raise DataError(
                f"task {task}: --k_shot {k} needs {k} training rows of class {c!r}, the split has {len(members)}"
            )
        g = torch.Generator().manual_seed(seed)
        out += [members[i] for i in torch.randperm(len(members), generator=g)[:k].tolist()]
    return [rows[i] for i in sorted(out)]


# ----------------------------------------------------------------------------- formatting
def format_rows(task: Task, ds, indices: list[int], split_name: str, hub_split: str) -> tuple[list[dict], int]:
    """Rows -> {"input", "targets", "ref"}; rows without a gold answer are dropped (counted)."""
    out, dropped = [], 0
    sub = ds.select(indices) if len(indices) != len(ds) or indices != list(range(len(ds))) else ds
    for pos, row in zip(indices, sub):
        where = f"task {task.name}, {hub_split} row {pos}"
        if empty := [c for c in task.columns if row.get(c) is None]:
            raise DataError(
                f"{where}: lacks column(s) {', '.join(empty)} (null); every row needs {', '.join(task.columns)}"
            )
        try:
            source, targets = task.source(row), task.target(row)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{where}: cannot format the row ({exc}); check it has the hub schema") from None
        targets = [t for t in targets if isinstance(t, str) and t.strip()]
        if not targets:
            if task.multi_answer:  # e.g. a ReCoRD query without answers: nothing to learn or score
                dropped += 1
                continue
            raise DataError(f"{where}: empty target; every row needs a label or answer")
        if task.labels is not None and targets[0] not in task.labels:
            raise DataError(
                f"{where}: label {targets[0]!r} is not one of {', '.join(task.labels)} "
                f"(GLUE/SuperGLUE test splits hide their labels as -1: use the train and validation splits)"
            )
        if task.name == "stsb" and not 0.0 <= float(targets[0]) <= 5.0:
            raise DataError(f"{where}: STS-B label {row['label']} is outside [0, 5]")
        ref = {"target": targets[0]}
        if task.multi_answer:
            ref["answers"] = targets
        if task.group is not None:
            ref["group"] = task.group(row)
        if task.program is not None:
            ref["program"] = task.program(row)
        if isinstance(row.get("options"), list):  # BIG-bench multiple choice: for --eval_mode rank
            ref["options"] = [str(o) for o in row["options"]]
        out.append({"input": source, "targets": targets, "ref": ref, "_line": pos})
    if not out:
        raise DataError(f"task {task.name}: the {split_name} split (from hub split {hub_split}) is empty")
    return out, dropped


def encode_train(rows: list[dict], tokenizer, max_length: int, separator: str, where: str) -> tuple[list, int]:
    flat = [{"input": r["input"], "target": t, "_line": r["_line"]} for r in rows for t in r["targets"]]
    return encode(flat, tokenizer, max_length, separator, where)


def encode_eval(rows: list[dict], tokenizer, max_length: int, separator: str, where: str) -> tuple[EvalSet, int]:
    flat = [{"input": r["input"], "target": r["targets"][0], "_line": r["_line"]} for r in rows]
    examples, n_trunc = encode(flat, tokenizer, max_length, separator, where)
    return EvalSet(examples, [r["ref"] for r in rows]), n_trunc


def _from_raw(task: Task, raw: dict, tokenizer, opts: dict) -> TaskData:
    info: dict = {}
    rows = {}
    for name, (hub_split, idx) in make_splits(task, raw, opts["split_seed"], opts["validation_size"]).items():
        rows[name], dropped = format_rows(task, raw[hub_split], idx, name, hub_split)
        info[f"{name}_rows"] = len(rows[name])
        if dropped:
            info[f"{name}_dropped_without_answer"] = dropped
    if opts.get("k_shot"):
        rows["train"] = few_shot(rows["train"], opts["k_shot"], opts["seed"], task.labels, task.name)
        info["train_rows"] = len(rows["train"])
    ml, sep = opts["max_length"], opts["separator"]
    train, info["train_truncated"] = encode_train(rows["train"], tokenizer, ml, sep, f"task {task.name} train row")
    evals = {}
    for name in ("validation", "test"):
        evals[name], info[f"{name}_truncated"] = encode_eval(rows[name], tokenizer, ml, sep, f"task {task.name} {name}")
    return TaskData(task.name, task.metrics, task.labels, train, evals, info)


def build_file_data(opts: dict, tokenizer) -> TaskData:
    """User files with 'input' and 'target' columns (the built-in task is such files): metric is
    exact string match ("accuracy")."""
    ml, sep = opts["max_length"], opts["separator"]
    train, n_trunc = encode(read_rows(opts["train_file"]), tokenizer, ml, sep, opts["train_file"])
    info = {"train_rows": len(train), "train_truncated": n_trunc}
    evals = {}
    for name, key in (("validation", "eval_file"), ("test", "test_file")):
        if opts.get(key):
            rows = read_rows(opts[key])
            for r in rows:
                r["target"] = r["target"].strip()
            examples, n = encode(rows, tokenizer, ml, sep, opts[key])
            refs = [{"target": r["target"], **({"options": r["options"]} if "options" in r else {})} for r in rows]
            evals[name] = EvalSet(examples, refs)
            info[f"{name}_rows"], info[f"{name}_truncated"] = len(rows), n
    return TaskData("files", ("accuracy",), None, train, evals, info)


# ----------------------------------------------------------------------------- cache + sharing
def pack(data: TaskData) -> tuple[dict[str, torch.Tensor], str]:
    """TaskData -> flat tensors (ids and per-example lengths per split) + a JSON string of the rest."""
    tensors, meta = {}, {"name": data.name, "metrics": data.metrics, "labels": data.labels, "info": data.info}
    sets = {"train": data.train, **{k: v.examples for k, v in data.evals.items()}}
    for key, examples in sets.items():
        tensors[f"{key}.ids"] = torch.tensor([t for e in examples for t in e.input_ids], dtype=torch.int32)
        tensors[f"{key}.lens"] = torch.tensor(
            [[len(e.input_ids), e.n_target, e.source_len] for e in examples], dtype=torch.int64
        ).reshape(-1, 3)
    meta["refs"] = {k: v.refs for k, v in data.evals.items()}
    return tensors, json.dumps(meta)


def unpack(tensors: dict[str, torch.Tensor], meta_text: str) -> TaskData:
    meta = json.loads(meta_text)

    def examples(key: str) -> list[Example]:
        ids, out, start = tensors[f"{key}.ids"].tolist(), [], 0
        for n, n_target, source_len in tensors[f"{key}.lens"].tolist():
            out.append(Example(ids[start : start + n], n_target, source_len))
            start += n
        return out

    evals = {k: EvalSet(examples(k), refs) for k, refs in meta["refs"].items()}
    labels = tuple(meta["labels"]) if meta["labels"] is not None else None
    return TaskData(meta["name"], tuple(meta["metrics"]), labels, examples("train"), evals, meta["info"])


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()


def cache_key(parts: list) -> str:
    return hashlib.sha256(json.dumps([CACHE_VERSION, *parts], sort_keys=True, default=str).encode()).hexdigest()[:32]


def load_cached(path: Path) -> TaskData | None:
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()["taskdata"]
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
        return unpack(tensors, meta)
    except Exception:  # noqa: BLE001 - a damaged cache is rebuilt, never trusted
        return None


def save_cached(path: Path, data: TaskData) -> None:
    from safetensors.torch import save_file

    tensors, meta = pack(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"taskdata": meta}))


def prepare_main(task: Task | None, tokenizer, opts: dict, cache_dir: Path | None, log=print) -> TaskData:
    """Main process: a task's data from the cache, or built and cached."""
    if task is None:
        return build_file_data(opts, tokenizer)
    if is_bigbench(task.name):  # its labels and metric follow from the examples
        task, raw, read_info = bigbench.load(task, opts["data_dir"])
    else:
        raw, read_info = {s: load_split(task, opts["data_dir"], s) for s in task.hub_splits()}, {}
    for s, ds in raw.items():
        check_columns(task, ds, f"split {s}")
    keyed_opts = {k: opts[k] for k in ("max_length", "separator", "split_seed", "validation_size", "k_shot")}
    if opts.get("k_shot"):
        keyed_opts["seed"] = opts["seed"]
    source = read_info.pop("fingerprint", None) or source_fingerprint(task, opts["data_dir"], raw)
    key = cache_key([source, tokenizer_fingerprint(tokenizer), keyed_opts])
    safe = task.name.replace(":", "-").replace("/", "-")  # bigbench:NAME/SUB is no file name
    path = cache_dir / f"{safe}-{key}.safetensors" if cache_dir else None
    if path is not None and (hit := load_cached(path)) is not None:
        log(f"task {task.name}: tokenised data from the cache {path}")
        return hit
    data = _from_raw(task, raw, tokenizer, opts)
    data.info.update({k: v for k, v in read_info.items() if v})
    if path is not None:
        save_cached(path, data)
    return data
