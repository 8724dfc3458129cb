"""The benchmarks run and write well-formed JSON (smoke tests: no timing is asserted); the rounds
of bench/bench.py combine as its docstring says."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from tests.conftest import REPO, run_cmd

TINY = ["--hidden", "64", "--layers", "1", "--heads", "4", "--vocab", "400"]


def load_bench():
    """bench/bench.py as a module (bench/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("bench_main", REPO / "bench" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rounds_combine_into_medians_and_ratios_taken_within_each_round():
    """Three rounds of five modes (made-up figures, machine load changing between rounds): step time
    and tokens/s are the medians over the rounds, memory the largest; each ratio is taken within a
    round (same load) and its median and range reported; a padded mode is set against the padded
    floor, a packed mode against its padded twin; the table prints ratio ranges."""
    bench = load_bench()
    load = (1.0, 2.0, 1.5)  # the machine twice as slow in round 1 (rounds counted from 0)
    base = {"floor": (1.0, 1000), "floor_padded": (1.2, 700), "anchor": (2.0, 400), "ours": (1.1, 900),
            "ours_padded": (1.4, 600)}  # fmt: skip
    rounds = [
        {m: {"step_s": s * k * (1.1 if (m, i) == ("ours", 2) else 1.0), "tokens_per_s": t / k, "peak_rss_mb": 100 + i,
             "world": 1, "padding_fraction": 0.1, "packed": not m.endswith("padded") and m != "anchor"}
         for m, (s, t) in base.items()}
        for i, k in enumerate(load)
    ]  # fmt: skip
    res = bench.combine(rounds)
    ours = res["ours"]
    assert ours["step_s"] == pytest.approx(1.1 * 1.5 * 1.1) and ours["tokens_per_s"] == pytest.approx(900 / 1.5)
    assert ours["peak_rss_mb"] == 102 and ours["step_s_per_round"] == [r["ours"]["step_s"] for r in rounds]
    # within-round ratios: 1.1 in rounds 0 and 1, 1.21 in round 2 (ours 10% slower there only)
    assert ours["vs_floor"] == pytest.approx(1.1) and ours["vs_floor_range"] == pytest.approx([1.1, 1.21])
    assert ours["vs_anchor"] == pytest.approx(900 / 400) and ours["vs_padded"] == pytest.approx(900 / 600)
    padded = res["ours_padded"]
    assert padded["vs_floor"] == pytest.approx(1.4 / 1.2) and "vs_padded" not in padded  # the padded floor
    assert res["anchor"]["vs_floor"] == pytest.approx(2.0 / 1.2)  # the anchor (PEFT) pads its batches
    assert res["floor"]["vs_floor"] == 1.0 and res["anchor"]["vs_anchor"] == 1.0
    assert res["floor"]["vs_padded"] == pytest.approx(1000 / 700)  # the packed floor against the padded one
    text = bench.table(res)
    assert "| ours | 1 | 1.815 | 600 | 1.10 (1.10-1.21) | 2.25 | 1.50 | 10.0% | 102 |" in text, text
    assert "| floor | 1 | 1.500 | 667 | 1.00 | 2.50 | 1.43 | 10.0% | 102 |" in text, text  # equal ends: no range


@pytest.mark.dist
def test_bench_load_smoke(tmp_path):
    out = tmp_path / "load.json"
    proc = run_cmd([sys.executable, "bench/bench_load.py", "--hidden", "64", "--layers", "2", "--vocab", "400",
                    "--json", str(out)])  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    for loader in ("transformers", "layerwise"):
        assert len(res["per_rank"][loader]) == 2
        for r in res["per_rank"][loader]:
            assert r["peak_rss_mb"] >= r["rss_before_mb"] > 0
            assert r["local_elements"] < r["whole_elements"]  # partitioned after initialize, either way
    assert res["ratio_peak"] > 0 and res["ratio_peak_minus_before"] > 0


@pytest.mark.dist
@pytest.mark.slow
def test_gpu_check_runs_its_modes_and_names_missing_packages(tmp_path):
    """The GPU check's script on the CPU with small shape flags (its defaults are the 7B shape), with
    the world-2 ZeRO-3 mode added: every mode runs, lands in one JSON and in the printed table, with
    figures of the right kind (no timing is asserted); a --wheels folder without wheels stops it
    with pip's error. Without a GPU the plan check after it says it cannot run and fails nothing."""
    out = tmp_path / "gpu_check.json"
    modes = ["floor", "floor_padded", "anchor", "ours", "ours_padded", "ours_zero3", "ours_w2_zero3"]
    cmd = ["bash", "launch/gpu_check.sh", "--json", str(out), *TINY, "--examples", "16", "--min_len", "12",
           "--max_len", "40", "--batch", "4", "--steps", "1", "--warmup", "1", "--modes", ",".join(modes)]  # fmt: skip
    proc = run_cmd(cmd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["failed"] == {} and res["rounds"] == 1 and len(res["per_round"]) == 1
    assert list(res["results"]) == modes
    assert res["model"]["hidden"] == 64 and "gpu_check:" in proc.stdout and "s in all" in proc.stdout
    assert "no GPU, so no plan check" in proc.stdout  # its second part needs CUDA
    for mode, r in res["results"].items():
        assert r["step_s"] > 0 and r["tokens_per_s"] > 0 and 0 <= r["padding_fraction"] < 1, mode
        assert r["peak_rss_mb"] > 0 and "vs_floor" in r and "vs_anchor" in r, mode
        assert f"| {mode} | {r['world']} |" in proc.stdout  # the table is printed
    results = res["results"]
    assert results["floor"]["vs_floor"] == 1.0 and results["anchor"]["vs_anchor"] == 1.0
    assert results["anchor"]["prompt_tokens"] == 100 and results["ours"]["prompt_tokens"] == 60
    assert results["ours"]["r"] == 19  # budget-matched rank of m=60
    w2 = results["ours_w2_zero3"]
    assert w2["world"] == 2 and len(w2["memory_per_rank"]) == 2 and results["ours_zero3"]["world"] == 1
    ours, padded = results["ours"], results["ours_padded"]
    assert ours["packed"] and results["floor"]["packed"] and not padded["packed"]
    assert "vs_padded" in ours and "vs_padded" not in padded
    assert ours["padding_fraction"] < padded["padding_fraction"]  # 4 examples of 12-40 tokens: one row each step
    (tmp_path / "empty").mkdir()
    proc = run_cmd(["bash", "launch/gpu_check.sh", "--wheels", str(tmp_path / "empty"), "--json", str(out)])
    assert proc.returncode == 2 and "no .whl files in" in proc.stderr
