"""Plot a run's metrics.jsonl (loss, learning rate, throughput, evaluation) to a PNG.

    python launch/plot_metrics.py runs/builtin            # writes runs/builtin/metrics.png
    python launch/plot_metrics.py runs/a runs/b -o cmp.png # several runs on one figure

Needs matplotlib (pip install matplotlib); it is not a training dependency.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def load(run: Path) -> tuple[list[dict], list[dict]]:
    path = run / "metrics.jsonl" if run.is_dir() else run
    if not path.is_file():
        sys.exit(f"error: {path} not found: give a run folder written by launch/train.py")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if "loss" in r], [r for r in rows if "eval_loss" in r]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("-o", "--output", type=Path, help="PNG path (default: RUN/metrics.png)")
    args = p.parse_args()
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("error: matplotlib is not installed: pip install matplotlib")
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    panels = [
        (axes[0, 0], "loss", "train loss (per target token)"),
        (axes[0, 1], "lr", "prompt learning rate"),
        (axes[1, 0], "tokens_per_s", "input tokens / s (all ranks)"),
    ]
    for run in args.runs:
        train, evals = load(run)
        for ax, key, title in panels:
            ax.plot([r["step"] for r in train], [r[key] for r in train], label=run.name)
            ax.set_title(title)
        if evals:  # the task's selecting metric (e.g. accuracy), in percent
            metric = evals[-1].get("eval_metric", "accuracy")
            axes[1, 1].plot(
                [r["step"] for r in evals], [r.get(f"eval_{metric}") for r in evals], marker="o", label=run.name
            )
            axes[1, 1].set_title(f"validation {metric} (%)")
    for ax in axes.flat:
        ax.set_xlabel("step")
        ax.legend()
    fig.tight_layout()
    out = args.output or (args.runs[0] / "metrics.png")
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
