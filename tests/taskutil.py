"""Write task rows as local dataset copies (the layouts --data_dir accepts), and a synthetic RTE in
the hub's schema made of the built-in model's words, so the demo model can actually learn it."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path


def write_rows(path: Path, rows: list[dict], fmt: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "csv":
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        raise ValueError(fmt)
    return path


def write_copy(root: Path, files: dict[str, list[dict]], fmt: str, hub_layout: str | None = None) -> Path:
    """{split: rows} -> root/split.fmt, or the hub snapshot layout root/<config>/<split>-00000-of-00001.parquet."""
    for split, rows in files.items():
        if hub_layout:
            write_rows(root / hub_layout / f"{split}-00000-of-00001.{fmt}", rows, fmt)
        else:
            write_rows(root / f"{split}.{fmt}", rows, fmt)
    return root


def synthetic_rte(n: int, seed: int, start_idx: int = 0) -> list[dict]:
    """RTE rows (sentence1, sentence2, label, idx): a built-in review, and a claim about its
    sentiment; label 0 (entailment) when the claim is right, 1 when it is wrong."""
    from adept_dist.model.builtin import review

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        text, positive = review(rng)
        claim = rng.randint(0, 1)
        rows.append(
            {
                "sentence1": text,
                "sentence2": f"overall it was {'positive' if claim else 'negative'}",
                "label": 0 if claim == positive else 1,
                "idx": start_idx + i,
            }
        )
    return rows
