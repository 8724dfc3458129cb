"""Collect the results.json of many runs (tasks x methods x seeds) into one table like the paper's.

    python launch/collect_results.py runs/ [more folders] [--split test] [--output table.md]

Each cell is the mean +- standard deviation over seeds (sample std; "+- 0" for one seed is shown
as the bare mean) of the task's first metric, in percent; family averages (GLUE, SuperGLUE, MRQA,
others, BIG-bench) average the task means of the tasks present. A second table lists every metric.
A run trained for 0 steps from its initial prompt is the "untrained" row. For tasks scored by
accuracy, a "majority class" row gives the share of the split's most frequent target (read from
the runs' predictions). --plot FILE draws each task's validation score over the steps, one line per
method (the mean over seeds), from the runs' metrics.jsonl (needs matplotlib).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from adept_dist.common.fileio import read_metrics
from adept_dist.common.schema import ResultsFile, SchemaError, check, load_json
from adept_dist.data.tasks import TASK_LIST, find_task

FAMILIES = {"glue": "GLUE", "superglue": "SuperGLUE", "mrqa": "MRQA", "other": "Others", "bigbench": "BIG-bench"}
UNTRAINED = "untrained"
MAJORITY = "majority class"


def method_of(r: dict) -> str:
    """The row a run belongs to: its method, or "untrained" for an evaluation of the initial prompt."""
    return UNTRAINED if r.get("max_steps") == 0 and not r.get("init_adapter") else r["method"]


def family_of(task: str) -> str:
    t = find_task(task)
    return t.family if t is not None else "other"


def majority_share(results: list[dict], split: str) -> dict[str, float]:
    """{task: % of the split's rows whose target is the most frequent one}, for accuracy tasks."""
    out = {}
    for r in results:
        if r["task"] in out or r["metrics"][0] != "accuracy":
            continue
        path = Path(r["_path"]).parent / "predictions" / f"{split}.jsonl"
        try:
            targets = [json.loads(line)["target"] for line in path.read_text().splitlines() if line.strip()]
        except (OSError, ValueError, KeyError):
            continue
        examples = (r.get(split) or {}).get("examples")
        if targets and (examples is None or examples == len(targets)):
            out[r["task"]] = 100.0 * max(targets.count(t) for t in set(targets)) / len(targets)
    return out


def find_results(paths: list[str]) -> list[dict]:
    out = []
    for p in map(Path, paths):
        files = [p] if p.is_file() else sorted(p.rglob("results.json"))
        for f in files:
            try:
                r = load_json(f, "rerun that run, or leave it out")
                check(r, ResultsFile, f, "rerun that run, or leave it out")
            except SchemaError as exc:
                print(f"skipping {exc}", file=sys.stderr)
                continue
            r["_path"] = str(f)
            out.append(r)
    return out


def mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def cell(values: list[float]) -> str:
    m, s = mean_std(values)
    return f"{m:.1f}" if s is None else f"{m:.1f} ± {s:.1f}"


def collect(results: list[dict], split: str) -> dict:
    """{(method, k_shot): {task: {metric: [values over seeds]}}} for runs that have `split`."""
    table: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    seen: dict = {}
    for r in results:
        scores = r.get(split)
        if not scores:
            continue
        key = (method_of(r), r.get("k_shot"))
        ident = (key, r["task"], r["seed"])
        if ident in seen:
            print(f"warning: {r['_path']} repeats {ident} of {seen[ident]}; both are counted", file=sys.stderr)
        seen[ident] = r["_path"]
        for m in r["metrics"]:
            table[key][r["task"]][m].append(scores[m])
    return table


ROW_ORDER = ["adept", "dept", "pt", UNTRAINED, MAJORITY]


def row_key(kv) -> tuple:
    (method, k), _ = kv
    return (str(k), ROW_ORDER.index(method) if method in ROW_ORDER else len(ROW_ORDER), method)


def render(table: dict, results: list[dict], split: str) -> str:
    first = {r["task"]: r["metrics"][0] for r in results}
    order = [t.name for t in TASK_LIST if t.name in first] + sorted(set(first) - {t.name for t in TASK_LIST})
    family = {t: family_of(t) for t in order}
    fams = [f for f in FAMILIES if any(family[t] == f for t in order)]
    head = ["method"] + [f"{t} ({first[t]})" for t in order] + [f"{FAMILIES[f]} avg" for f in fams]
    lines = [f"{split} scores (%), mean ± std over seeds", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for (method, k), tasks in sorted(table.items(), key=row_key):
        name = method if k is None else f"{method} ({k}-shot)"
        row = [name]
        for t in order:
            vals = tasks.get(t, {}).get(first[t])
            row.append(cell(vals) + (f" (n={len(vals)})" if vals and len(vals) > 1 else "") if vals else "-")
        for f in fams:
            means = [statistics.fmean(tasks[t][first[t]]) for t in order if family[t] == f and t in tasks]
            # the family's tasks in the paper (BIG-bench: those present)
            total = sum(1 for t in TASK_LIST if t.family == f) or sum(1 for t in order if family[t] == f)
            if not means:
                row.append("-")
                continue
            row.append(f"{statistics.fmean(means):.1f}" + (f" ({len(means)}/{total})" if len(means) < total else ""))
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "all metrics", "", "| task | method | metric | seeds | mean | std |", "|---|---|---|---|---|---|"]
    for (method, k), tasks in sorted(table.items(), key=row_key):
        name = method if k is None else f"{method} ({k}-shot)"
        for t in order:
            for m, vals in tasks.get(t, {}).items():
                mu, sd = mean_std(vals)
                lines.append(f"| {t} | {name} | {m} | {len(vals)} | {mu:.2f} | {'-' if sd is None else f'{sd:.2f}'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="+", help="run folders (searched recursively) or results.json files")
    p.add_argument("--split", default="test", choices=("test", "validation"))
    p.add_argument("--output", help="also write the table to this markdown file")
    p.add_argument("--plot", help="also draw each task's validation score over the steps per method to this PNG")
    args = p.parse_args(argv)
    results = find_results(args.paths)
    table = collect(results, args.split)
    for task, share in majority_share(results, args.split).items():
        table[(MAJORITY, None)][task]["accuracy"].append(share)
    if not table:
        print(f"error: no results.json with {args.split} scores under {', '.join(args.paths)}", file=sys.stderr)
        return 2
    text = render(table, [r for r in results if r.get(args.split)], args.split)
    print(text, end="")
    if args.output:
        Path(args.output).write_text(text)
    if args.plot:
        return plot(results, args.plot)
    return 0


def curves(results: list[dict]) -> dict:
    """{task: {method: {step: [validation score of each seed]}}} from the runs' metrics.jsonl."""
    out: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in results:
        path = Path(r["_path"]).parent / "metrics.jsonl"
        metric = r["metrics"][0]
        try:
            lines, broken = read_metrics(path)
        except OSError:
            continue
        if broken:
            print(f"warning: {path}: skipped {len(broken)} line(s) that are not records ({broken[0]})", file=sys.stderr)
        for rec in lines:
            if rec.get("split") == "validation" and f"eval_{metric}" in rec:
                out[r["task"]][method_of(r)][rec["step"]].append(rec[f"eval_{metric}"])
    return out


def plot(results: list[dict], path: str) -> int:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print('error: --plot needs matplotlib: pip install matplotlib (or pip install -e ".[plot]")', file=sys.stderr)
        return 2
    data = curves(results)
    if not data:
        print("error: no validation scores in the runs' metrics.jsonl to plot", file=sys.stderr)
        return 2
    tasks = sorted(data)
    majority = majority_share(results, "validation")
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for method in sorted(data[task], key=lambda m: ROW_ORDER.index(m) if m in ROW_ORDER else 99):
            steps = sorted(data[task][method])
            means = [statistics.fmean(data[task][method][s]) for s in steps]
            if len(steps) == 1:  # one evaluation (untrained): a level line
                ax.axhline(means[0], ls=":", color="gray", label=f"{method}")
            else:
                ax.plot(steps, means, marker="o", ms=3, label=method)
        if task in majority:
            ax.axhline(majority[task], ls="--", color="black", lw=0.8, label=MAJORITY)
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("step")
        metric = next(r["metrics"][0] for r in results if r["task"] == task)
        ax.set_ylabel(f"validation {metric} (%)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
