"""Plot a run's metrics.jsonl (loss, learning rate, throughput, evaluation) to a PNG.

    python launch/plot_metrics.py runs/builtin            # writes runs/builtin/metrics.png
    python launch/plot_metrics.py runs/a runs/b -o cmp.png # several runs on one figure

The loss is on a log scale (it falls by orders of magnitude, then looks flat on a linear one), with
the validation loss as points; the evaluation panel marks the test score of the selected adapter
with a star. Needs matplotlib (pip install -e ".[plot]"); it is not a training dependency.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from adept_dist.common.fileio import read_metrics


def load(run: Path) -> tuple[list[dict], list[dict], list[dict]]:
    """The run's training, validation and test records."""
    path = run / "metrics.jsonl" if run.is_dir() else run
    if not path.is_file():
        sys.exit(f"error: {path} not found: give a run folder written by launch/train.py")
    rows, skipped = read_metrics(path)
    if skipped:
        print(f"warning: {path}: skipped {len(skipped)} line(s) that are not records ({skipped[0]})", file=sys.stderr)
    return (
        [r for r in rows if "loss" in r],
        [r for r in rows if "eval_loss" in r],
        [r for r in rows if r.get("split") == "test"],
    )


def selected_step(run: Path) -> int | None:
    """The step of the adapter the run kept (results.json's selection), if the run says."""
    try:
        return json.loads((run / "results.json").read_text())["selection"]["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def figure(runs: list[Path]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    loss, lr, speed, score = axes[0, 0], axes[0, 1], axes[1, 0], axes[1, 1]
    for run in runs:
        train, evals, test = load(run)
        steps = [r["step"] for r in train]
        line = loss.plot(steps, [r["loss"] for r in train], label=f"{run.name} train")[0]
        if evals:
            loss.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o", color=line.get_color(),
                      label=f"{run.name} validation")  # fmt: skip
        lr.plot(steps, [r["lr"] for r in train], label=run.name)
        speed.plot(steps, [r["tokens_per_s"] for r in train], label=run.name)
        metric = (evals[-1] if evals else {}).get("eval_metric")
        if metric:  # the task's selecting metric (e.g. accuracy), in percent
            score.plot([r["step"] for r in evals], [r.get(f"eval_{metric}") for r in evals], marker="o",
                       color=line.get_color(), label=f"{run.name} validation")  # fmt: skip
            score.set_title(f"validation {metric} (%), test as a star")
            for t in test:  # at the step of the adapter it scored (the one validation selected)
                if f"test_{metric}" in t:
                    at = selected_step(run)
                    at = t["step"] if at is None else at
                    score.plot([at], [t[f"test_{metric}"]], "*", markersize=14, color=line.get_color(),
                               label=f"{run.name} test")  # fmt: skip
    loss.set_yscale("log")
    loss.set_title("loss per target token (log scale)")
    lr.set_title("prompt learning rate")
    speed.set_title("input tokens / s (all ranks)")
    for ax in axes.flat:
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    return fig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("-o", "--output", type=Path, help="PNG path (default: RUN/metrics.png)")
    args = p.parse_args()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        sys.exit('error: matplotlib is not installed: pip install -e ".[plot]" (or pip install matplotlib)')
    fig = figure(args.runs)
    out = args.output or (args.runs[0] / "metrics.png")
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
