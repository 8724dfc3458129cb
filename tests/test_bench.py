"""The benchmarks run and write well-formed JSON (smoke tests: no timing is asserted)."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import run_cmd

TINY = ["--hidden", "64", "--layers", "1", "--heads", "4", "--vocab", "400"]


@pytest.mark.dist
@pytest.mark.slow
def test_bench_smoke(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_cmd([sys.executable, "bench/bench.py", *TINY, "--examples", "32", "--min_len", "12", "--max_len", "40",
                    "--batch", "4", "--warmup", "1", "--steps", "2", "--modes", "floor,floor_padded,anchor,ours,ours_padded,ours_w2_zero3",
                    "--rounds", "2", "--json", str(out)])  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert set(res["results"]) == {"floor", "floor_padded", "anchor", "ours", "ours_padded", "ours_w2_zero3"}
    for mode, r in res["results"].items():
        assert r["step_s"] > 0 and r["tokens_per_s"] > 0 and 0 <= r["padding_fraction"] < 1, mode
        assert r["peak_rss_mb"] > 0 and "vs_floor" in r and "vs_anchor" in r
    assert res["results"]["floor"]["vs_floor"] == 1.0 and res["results"]["anchor"]["vs_anchor"] == 1.0
    assert res["results"]["anchor"]["prompt_tokens"] == 100 and res["results"]["ours"]["prompt_tokens"] == 60
    assert res["results"]["ours"]["r"] == 19  # budget-matched rank of m=60
    assert (
        res["results"]["ours_w2_zero3"]["world"] == 2 and len(res["results"]["ours_w2_zero3"]["memory_per_rank"]) == 2
    )
    assert "| floor | 1 |" in proc.stdout  # the table is printed
    # two rounds, modes in turn: medians of the rounds, each ratio taken within a round
    assert res["rounds"] == 2 and len(res["per_round"]) == 2
    ours, rounds = res["results"]["ours"], res["per_round"]
    each = sorted(r["ours"]["step_s"] / r["floor"]["step_s"] for r in rounds)
    assert ours["vs_floor_range"] == each and ours["vs_floor"] == sum(each) / 2
    assert ours["step_s"] == sum(r["ours"]["step_s"] for r in rounds) / 2
    # packed modes against their padded twins; a padded mode against the padded floor
    padded = res["results"]["ours_padded"]
    assert ours["packed"] and res["results"]["floor"]["packed"] and not padded["packed"]
    each = sorted(r["ours"]["tokens_per_s"] / r["ours_padded"]["tokens_per_s"] for r in rounds)
    assert ours["vs_padded_range"] == each and "vs_padded" in res["results"]["floor"] and "vs_padded" not in padded
    each = sorted(r["ours_padded"]["step_s"] / r["floor_padded"]["step_s"] for r in rounds)
    assert padded["vs_floor_range"] == each
    assert ours["padding_fraction"] < padded["padding_fraction"]  # 4 examples of 12-40 tokens: one row each step


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
    """The GPU check's script on the CPU with small shape flags (its defaults are the 7B shape): all
    six modes run and land in one JSON; a --wheels folder without wheels stops it with pip's error."""
    out = tmp_path / "gpu_check.json"
    cmd = ["bash", "launch/gpu_check.sh", "--json", str(out), *TINY, "--examples", "16", "--min_len", "12",
           "--max_len", "40", "--batch", "4", "--steps", "1", "--warmup", "1"]  # fmt: skip
    proc = run_cmd(cmd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["failed"] == {} and res["rounds"] == 1
    assert set(res["results"]) == {"floor", "floor_padded", "anchor", "ours", "ours_padded", "ours_zero3"}
    assert res["model"]["hidden"] == 64 and "gpu_check:" in proc.stdout and "s in all" in proc.stdout
    (tmp_path / "empty").mkdir()
    proc = run_cmd(["bash", "launch/gpu_check.sh", "--wheels", str(tmp_path / "empty"), "--json", str(out)])
    assert proc.returncode == 2 and "no .whl files in" in proc.stderr
