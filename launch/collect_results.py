"""Collect the results.json of many runs (tasks x methods x seeds) into one table like the paper's.

    python launch/collect_results.py runs/ [more folders] [--split test] [--output table.md]

Each cell is the mean +- standard deviation over seeds (sample std; "+- 0" for one seed is shown
as the bare mean) of the task's first metric, in percent; family averages (GLUE, SuperGLUE, MRQA,
others, BIG-bench, and data files of one's own, named by their folder) average the task means of
the tasks present. A second table lists every metric.
A run trained for 0 steps from its initial prompt is the "untrained" row. For tasks scored by
accuracy, a "majority class" row gives the share of the split's most frequent target (read from
the runs' predictions). --plot FILE draws each task's validation score over the steps, one line per
method (the mean over seeds), from the runs' metrics.jsonl (needs matplotlib).

Paired comparisons: for every task and every two methods that ran on the same rows of the split
(their predictions/SPLIT.jsonl hold the same inputs and targets) with the same seeds, the first
metric is compared row by row: for a 0/1 metric (accuracy, exact match, pass@1) by the exact
McNemar test on the rows only one of them got right, otherwise by a paired bootstrap (the same
resampled rows scored for both, adept_dist/data/stats.py). With several seeds the rows of every
seed count (pooled: rows repeat across seeds, so such a p-value leans low; each seed's own p-value
is in the JSON too). A table says "a > b" or "a < b" where p < 0.05, else "no difference".
--json FILE writes the tables' numbers and `paired` (one entry per pair: task, a, b, p_value,
the counts, the test and the seeds).
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
from adept_dist.data.metrics import METRICS, ROW_METRICS
from adept_dist.data.stats import mcnemar_exact, paired_bootstrap
from adept_dist.data.tasks import TASK_LIST, find_task

FAMILIES = {"glue": "GLUE", "superglue": "SuperGLUE", "mrqa": "MRQA", "other": "Others", "bigbench": "BIG-bench",
            "files": "Data files"}  # fmt: skip
UNTRAINED = "untrained"
MAJORITY = "majority class"


def method_of(r: dict) -> str:
    """The row a run belongs to: its method, or "untrained" for an evaluation of the initial prompt."""
    return UNTRAINED if r.get("max_steps") == 0 and not r.get("init_adapter") else r["method"]


def family_of(task: str) -> str:
    t = find_task(task)
    return t.family if t is not None else "files"  # data files of one's own: averaged apart from the paper's


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
            r["task"] = task_name(r["task"])
            out.append(r)
    return out


def task_name(task: str) -> str:
    """A run of data files is recorded by its training file; DIR/train.jsonl (launch/fetch_data.py's
    layout, sweep.py's files:DIR) is named DIR's name, any other file by its path."""
    path = Path(task)
    return path.parent.name if path.stem == "train" and path.suffix in (".jsonl", ".csv") and path.parent.name else task


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


ALPHA = 0.05  # the level at which a table calls a difference


def split_rows(r: dict, split: str) -> list[dict] | None:
    """The rows of a run's predictions/SPLIT.jsonl (None when missing or unreadable)."""
    path = Path(r["_path"]).parent / "predictions" / f"{split}.jsonl"
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return None
    return rows if rows and all(isinstance(x, dict) and "prediction" in x and "target" in x for x in rows) else None


def row_scores(rows: list[dict], metric: str) -> list[float] | None:
    """Each row's score (0..1) of a metric that is a mean over rows: as the run wrote it, or worked out
    from the prediction (not for pass@1, which would run the programs again)."""
    if all(metric in (x.get("scores") or {}) for x in rows):
        return [float(x["scores"][metric]) for x in rows]
    if metric == "pass@1":
        return None
    return ROW_METRICS[metric][0]([x["prediction"].strip() for x in rows], rows, None)


def labels_of(task: str, rows: list[dict]) -> tuple[str, ...]:
    t = find_task(task)
    return tuple(t.labels) if t is not None and t.labels else tuple(sorted({x["target"] for x in rows}))


def row_keys(rows: list[dict]) -> list[tuple]:
    """What makes two runs' rows the same rows: each row's input and target, in order."""
    return [(x.get("input"), x["target"]) for x in rows]


def compare(task: str, metric: str, a: dict[int, list[dict]], b: dict[int, list[dict]]) -> dict | None:
    """The paired comparison of two methods' rows ({seed: rows}) on the seeds both have, or None when
    their rows differ (not the same inputs and targets) or the metric cannot be paired."""
    seeds = sorted(set(a) & set(b))
    if not seeds or not all(row_keys(a[s]) == row_keys(b[s]) for s in seeds):
        return None
    if metric in ROW_METRICS and ROW_METRICS[metric][1]:  # 0/1 per row: exact McNemar
        per_seed, pooled_a, pooled_b = [], [], []
        for s in seeds:
            sa, sb = row_scores(a[s], metric), row_scores(b[s], metric)
            if sa is None or sb is None:
                return None
            p, only_a, only_b = mcnemar_exact(sa, sb)
            per_seed.append({"seed": s, "p_value": p, "only_a": only_a, "only_b": only_b})
            pooled_a += sa
            pooled_b += sb
        p, only_a, only_b = mcnemar_exact(pooled_a, pooled_b)
        counts = {"only_a": only_a, "only_b": only_b, "rows": len(pooled_a)}
        delta = only_a - only_b
        test = "exact McNemar"
    else:  # any metric: the same resampled row indices for every seed, the metric recomputed
        fn, n = METRICS[metric], len(a[seeds[0]])
        labels = labels_of(task, a[seeds[0]])

        def scorer(runs: dict[int, list[dict]]):
            return lambda idx: statistics.fmean(
                fn([runs[s][i]["prediction"].strip() for i in idx], [runs[s][i] for i in idx], labels) for s in seeds
            )

        p = paired_bootstrap(scorer(a), scorer(b), n)
        per_seed = [{"seed": s, "p_value": paired_bootstrap(scorer({s: a[s]}), scorer({s: b[s]}), n)} for s in seeds]
        delta = scorer(a)(range(n)) - scorer(b)(range(n))
        counts = {"rows": n * len(seeds)}
        test = "paired bootstrap"
    return {"test": test, "p_value": p, "delta_sign": (delta > 0) - (delta < 0), **counts, "seeds": seeds,
            "per_seed": per_seed}  # fmt: skip


def paired(results: list[dict], split: str) -> list[dict]:
    """Every pair of methods on the same task, rows and seeds: their paired comparison."""
    runs: dict = defaultdict(lambda: defaultdict(dict))  # task -> method -> seed -> rows
    first = {}
    for r in results:
        if not r.get(split) or r.get("k_shot"):
            continue
        rows = split_rows(r, split)
        if rows is not None:
            runs[r["task"]][method_of(r)][r["seed"]] = rows
            first[r["task"]] = r["metrics"][0]
    out = []
    for task, methods in runs.items():
        names = sorted(methods, key=lambda m: (ROW_ORDER.index(m) if m in ROW_ORDER else len(ROW_ORDER), m))
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                found = compare(task, first[task], methods[a], methods[b])
                if found is not None:
                    out.append({"task": task, "a": a, "b": b, "metric": first[task], **found})
    return out


def verdict(entry: dict) -> str:
    a, b, p = entry["a"], entry["b"], entry["p_value"]
    if p < ALPHA and entry["delta_sign"]:
        return f"{a} > {b}" if entry["delta_sign"] > 0 else f"{a} < {b}"
    return "no difference"


def render_paired(entries: list[dict], split: str) -> str:
    if not entries:
        return ""
    lines = ["", f"paired comparisons on the same {split} rows (p < {ALPHA} called a difference)", "",
             "| task | a | b | metric | test | seeds | rows | only a right | only b right | p | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for e in entries:
        seeds = ",".join(map(str, e["seeds"]))
        lines.append(f"| {e['task']} | {e['a']} | {e['b']} | {e['metric']} | {e['test']} | {seeds} | {e['rows']} | "
                     f"{e.get('only_a', '-')} | {e.get('only_b', '-')} | {e['p_value']:.3g} | {verdict(e)} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def table_numbers(table: dict) -> dict:
    """{row: {task: {metric: {mean, std, n, values}}}} of the tables, for --json."""
    out: dict = {}
    for (method, k), tasks in sorted(table.items(), key=row_key):
        name = method if k is None else f"{method} ({k}-shot)"
        out[name] = {
            t: {m: {"mean": mean_std(v)[0], "std": mean_std(v)[1], "n": len(v), "values": v} for m, v in ms.items()}
            for t, ms in tasks.items()
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="+", help="run folders (searched recursively) or results.json files")
    p.add_argument("--split", default="test", choices=("test", "validation"))
    p.add_argument("--output", help="also write the table to this markdown file")
    p.add_argument("--json", help="also write the tables' numbers and the paired comparisons to this JSON file")
    p.add_argument("--plot", help="also draw each task's validation score over the steps per method to this PNG")
    args = p.parse_args(argv)
    results = find_results(args.paths)
    table = collect(results, args.split)
    for task, share in majority_share(results, args.split).items():
        table[(MAJORITY, None)][task]["accuracy"].append(share)
    if not table:
        print(f"error: no results.json with {args.split} scores under {', '.join(args.paths)}", file=sys.stderr)
        return 2
    pairs = paired(results, args.split)
    text = render(table, [r for r in results if r.get(args.split)], args.split) + render_paired(pairs, args.split)
    print(text, end="")
    if args.output:
        Path(args.output).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"split": args.split, "table": table_numbers(table), "paired": pairs},
                                              indent=2) + "\n")  # fmt: skip
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
