"""Collect the results.json of many runs (tasks x methods x seeds) into one table like the paper's.

    python launch/collect_results.py runs/ [more folders] [--split test] [--output table.md]

Each cell is the mean +- standard deviation over seeds (sample std; "+- 0" for one seed is shown
as the bare mean) of the task's first metric, in percent; family averages (GLUE, SuperGLUE, MRQA,
others) average the task means of the tasks present. A second table lists every metric.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from adept_dist.tasks import TASK_LIST

FAMILIES = {"glue": "GLUE", "superglue": "SuperGLUE", "mrqa": "MRQA", "other": "Others"}


def find_results(paths: list[str]) -> list[dict]:
    out = []
    for p in map(Path, paths):
        files = [p] if p.is_file() else sorted(p.rglob("results.json"))
        for f in files:
            try:
                r = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                print(f"skipping {f}: {exc}", file=sys.stderr)
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
        key = (r["method"], r.get("k_shot"))
        ident = (key, r["task"], r["seed"])
        if ident in seen:
            print(f"warning: {r['_path']} repeats {ident} of {seen[ident]}; both are counted", file=sys.stderr)
        seen[ident] = r["_path"]
        for m in r["metrics"]:
            table[key][r["task"]][m].append(scores[m])
    return table


def render(table: dict, results: list[dict], split: str) -> str:
    first = {r["task"]: r["metrics"][0] for r in results}
    order = [t.name for t in TASK_LIST if t.name in first] + sorted(set(first) - {t.name for t in TASK_LIST})
    family = {t.name: t.family for t in TASK_LIST}
    fams = [f for f in FAMILIES if any(family.get(t, "other") == f for t in order)]
    head = ["method"] + [f"{t} ({first[t]})" for t in order] + [f"{FAMILIES[f]} avg" for f in fams]
    lines = [f"{split} scores (%), mean ± std over seeds", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for (method, k), tasks in sorted(table.items(), key=lambda kv: (str(kv[0][1]), kv[0][0])):
        name = method if k is None else f"{method} ({k}-shot)"
        row = [name]
        for t in order:
            vals = tasks.get(t, {}).get(first[t])
            row.append(cell(vals) + (f" (n={len(vals)})" if vals and len(vals) > 1 else "") if vals else "-")
        for f in fams:
            means = [statistics.fmean(tasks[t][first[t]]) for t in order if family.get(t, "other") == f and t in tasks]
            total = sum(1 for t in TASK_LIST if t.family == f) or len(means)  # the family's tasks in the paper
            if not means:
                row.append("-")
                continue
            row.append(f"{statistics.fmean(means):.1f}" + (f" ({len(means)}/{total})" if len(means) < total else ""))
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "all metrics", "", "| task | method | metric | seeds | mean | std |", "|---|---|---|---|---|---|"]
    for (method, k), tasks in sorted(table.items(), key=lambda kv: (str(kv[0][1]), kv[0][0])):
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
    args = p.parse_args(argv)
    results = find_results(args.paths)
    table = collect(results, args.split)
    if not table:
        print(f"error: no results.json with {args.split} scores under {', '.join(args.paths)}", file=sys.stderr)
        return 2
    text = render(table, [r for r in results if r.get(args.split)], args.split)
    print(text, end="")
    if args.output:
        Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
