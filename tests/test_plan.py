"""The plan (adept_dist/plan.py, adept-plan): its rules and shapes, the ZeRO-3 coordinator it
simulates worked out by hand, and its predictions against real runs: traffic per rank of 4-rank
runs (2 simulated nodes x 2) within 5% (on the runs of tests/test_layouts.py), the peak memory of a
small run within 15%."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from adept_dist.commands.plan import ds_config_for, main
from adept_dist.common.errors import ConfigError
from adept_dist.config.resolve import make_config
from adept_dist.model.builtin import ensure_builtin
from adept_dist.plan.inputs import SHAPES, Cluster, PlanError, Workload, Zero, memory_size, read_shape
from adept_dist.plan.layout import plan, plan_layout, scopes_for
from adept_dist.plan.memory import Param, Step, activations, simulate
from adept_dist.run.build import size
from tests.conftest import REPO, child_env, ranks_cmd, run_cmd

GB = 10**9
ZERO3 = Zero.from_ds(json.loads((REPO / "ds_configs" / "zero3.json").read_text()))


def cluster(nodes: int, gpus: int, gb: float, **kw) -> Cluster:
    return Cluster(nodes, gpus, int(gb * GB), **kw)


# ----------------------------------------------------------------------------- rules and shapes
def test_scopes_node_only_where_it_differs_from_global():
    assert scopes_for(cluster(1, 8, 80)) == ["global", "none"]
    assert scopes_for(cluster(2, 8, 80)) == ["global", "node", "none"]
    assert scopes_for(cluster(1, 8, 80, group_size=4)) == ["global", "node", "none"]
    with pytest.raises(PlanError, match="must divide the 8 GPUs of a node"):
        plan(SHAPES["llama-2-7b"], cluster(2, 8, 80, group_size=3), Workload(), ZERO3)


def test_70b_does_not_fit_replicated_on_24gb_gpus_but_fits_sharded_with_checkpointing():
    shape = SHAPES["llama-2-70b"]
    small = Workload(micro_batch=1, activation_checkpointing=True)
    pl = plan(shape, cluster(1, 8, 24), small, ZERO3)
    none, glob = pl.layout("none"), pl.layout("global")
    # NF4 is half a byte per weight: 68.5e9 linear weights -> 34.3 GB, with the bf16 embedding and head 35.3 GB
    assert 35.2 * GB < none.memory["backbone"] < 35.4 * GB and not none.fits
    assert glob.fits and glob.memory["backbone"] == pytest.approx(none.memory["backbone"] / 8, rel=1e-3)
    assert pl.recommended == "global"
    # every rank keeps all NF4 statistics: 1 byte per 64 weights and an fp32 per 256 blocks, ~1.1 GB
    assert glob.memory["quant_stats"] == none.memory["quant_stats"] == pytest.approx(68.5e9 / 64 * 1.0156, rel=0.01)
    assert plan(shape, cluster(1, 8, 24), Workload(), ZERO3).recommended is None  # 8 x 1024 tokens, no ckpt


def test_node_is_recommended_on_several_nodes_where_it_fits():
    ckpt = Workload(activation_checkpointing=True)
    # 70B on 2 x 8 x 40 GB: replicated does not fit (53 GB), node-local does and ships no backbone across nodes
    big = plan(SHAPES["llama-2-70b"], cluster(2, 8, 40), ckpt, ZERO3)
    assert not big.layout("none").fits and big.layout("node").fits and big.recommended == "node"
    # 7B fits replicated: that gathers nothing at all, so it wins (DISTRIBUTED.md: faster where it fits)
    pl = plan(SHAPES["llama-2-7b"], cluster(2, 8, 80), ckpt, ZERO3)
    glob, node, none = (pl.layout(s) for s in ("global", "node", "none"))
    assert all(lay.fits for lay in pl.layouts) and pl.recommended == "none"
    # the backbone's gathers stay inside the node; only the adapter's collectives cross (7B: 0.4M parameters)
    assert node.inter_node_bytes_per_step < 10e6 < glob.inter_node_bytes_per_step
    assert node.inter_node_bytes_per_step < none.inter_node_bytes_per_step
    # global: each rank receives (W-1)/W of every gathered tensor, 8 of its 15 peers on the other node
    by = glob.by_collective["all_gather"]
    assert by["recv_inter_node"] / by["recv_intra_node"] == pytest.approx(8 / 7, rel=1e-3)


def test_checkpointing_keeps_one_input_per_layer():
    shape, work = SHAPES["llama-2-7b"], Workload()
    act = activations(shape, work)
    rows, width, _, _ = work.tokens()
    assert (rows, width) == (3, 60 + 3 * 1024)  # data.pack_rows: 8 examples of 1024 in rows of 4096
    assert act.checkpoint == rows * width * 4096 * 2  # the bf16 layer input
    lay = plan_layout(shape, cluster(1, 8, 80), work, ZERO3, "global")
    assert lay.activation_bytes["with_checkpointing"] < lay.activation_bytes["without_checkpointing"] / 4


def test_shapes_from_a_folder_or_a_config_file(tiny_model_dir, tmp_path):
    shape = read_shape(str(tiny_model_dir))
    assert (shape.hidden, shape.intermediate, shape.layers, shape.heads, shape.kv_heads, shape.vocab) == (
        64, 128, 2, 4, 2, 120)  # fmt: skip
    assert read_shape(str(tiny_model_dir / "config.json")) == shape
    with pytest.raises(PlanError, match="give a local model folder, its config.json, or one of llama-2-7b"):
        read_shape(str(tmp_path / "missing"))
    (tmp_path / "config.json").write_text('{"hidden_size": 8}')
    with pytest.raises(PlanError, match="is not a LLaMA-family config.json"):
        read_shape(str(tmp_path))


def test_memory_sizes():
    assert memory_size("80GB") == 80 * 10**9 and memory_size("40GiB") == 40 * 2**30 and memory_size("24") == 24 * 10**9
    with pytest.raises(PlanError, match="give a size such as 80GB"):
        memory_size("lots")


# ----------------------------------------------------------------------------- the coordinator
def three_params_there_and_back(persistent: Param | None = None) -> list[Step]:
    a, b, c = (Param(n, 100, 4, 2) for n in "abc")  # 100 fp32 elements over 2 ranks: 200 bytes from the peer
    extra = [persistent] if persistent else []
    return [Step([a, *extra]), Step([b]), Step([c]), Step([c]), Step([b]), Step([a, *extra])]


@pytest.mark.parametrize(
    "reuse, gathers",
    [(0, 6), (150, 5), (10**9, 3)],  # worked out by hand from DeepSpeed's rule, see below
)
def test_simulated_coordinator_releases_unless_reused_within_the_distance(reuse, gathers):
    """Released after use unless used again within `reuse` elements of the trace: at 0 every use gathers;
    at 150 only c (used again at once; a and b are 200 elements away); at 1e9 each is gathered once."""
    zero = Zero(prefetch_bucket=0, max_reuse=reuse)
    sim = simulate(three_params_there_and_back(), zero)
    assert sim.per_peer == {2: 200 * gathers}
    if reuse == 10**9:
        assert sim.live == [400, 800, 1200, 1200, 800, 400]  # whole fp32 tensors: 400 bytes each


def test_simulated_first_micro_batch_gathers_every_use_persistent_ones_too():
    kept = Param("norm", 10, 4, 2, persistent=True)  # 5 elements each rank: 20 bytes
    steps = three_params_there_and_back(kept)
    assert simulate(steps, Zero(max_reuse=10**9)).per_peer == {2: 600}  # prefetched once, kept
    assert simulate(steps, Zero(max_reuse=10**9), recording=True).per_peer == {2: 6 * 200 + 2 * 20}


def test_tiny_model_traffic_equals_a_measured_run(tiny_model_dir):
    """The numbers of a run's traffic.json (rank 0): 4 ranks as 2 nodes x 2, 6 steps of micro-batch 2, fp32,
    ds_configs/zero3.json with stage3_param_persistence_threshold 0 (measured 2026-12-06 with the 4-rank
    command of tests/test_layouts.py, --max_steps 6, which assert_traffic_matches_the_plan checks)."""
    shape, work = read_shape(str(tiny_model_dir)), Workload(micro_batch=2, compute_dtype="fp32")
    zero = Zero.from_ds({"zero_optimization": {**json.loads((REPO / "ds_configs" / "zero3.json").read_text())[
        "zero_optimization"], "stage3_param_persistence_threshold": 0}})  # fmt: skip
    for scope, measured in (("global", (47909, 95817)), ("node", (75674, 40287))):
        lay = plan_layout(shape, cluster(2, 2, 80), work, zero, scope)
        assert tuple(round(x) for x in lay.run_average(6)) == measured, scope


@pytest.mark.dist
def test_deepspeed_buffers_are_the_reduce_buffers_deepspeed_allocates(tiny_model_dir):
    """The plan's "deepspeed_buffers" on a GPU against the reduce buffers DeepSpeed itself holds
    (tests/bucket_check.py, world 1, a 4096-element bucket): ZeRO-3 one for good; ZeRO-2 (scope none)
    two with overlap_comm (a double buffer; its default is off: one), from the adapter's gradients in the
    backward's last step to its end, none after the step. So the plan adds ZeRO-2's buffers only where
    that last step is the peak: with a small bucket the tiny model's peak is elsewhere and they add
    nothing; with a bucket of 10^8 elements the last step is the peak and they add all of it."""
    proc = run_cmd(ranks_cmd("tests/bucket_check.py", num_gpus=1))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    real = json.loads(proc.stdout.strip().splitlines()[-1])
    bucket = 4096  # tests/bucket_check.py's reduce_bucket_size
    count = {"2-True": 2, "2-False": 1, "2-None": 1, "3-True": 1, "3-None": 1}
    assert real == {k: {"in_backward": n * bucket, "after_step": n * bucket if k[0] == "3" else 0}
                    for k, n in count.items()}  # fmt: skip
    shape, work = read_shape(str(tiny_model_dir)), Workload(micro_batch=1, compute_dtype="fp32")
    for key, n in count.items():
        stage, overlap = key.split("-")
        scope = "none" if stage == "2" else "global"
        for elements in (bucket, 10**8):
            zero = {"stage": int(stage), "contiguous_gradients": True, "reduce_bucket_size": elements}
            if overlap != "None":
                zero["overlap_comm"] = overlap == "True"
            lay = plan_layout(shape, cluster(1, 1, 80), work, Zero.from_ds({"zero_optimization": zero}), scope)
            at_peak = 0 if stage == "2" and elements == bucket else n * elements * work.b
            assert lay.memory["deepspeed_buffers"] == at_peak, (key, elements)
            assert lay.peak_bytes_per_gpu == sum(lay.memory.values())


# ----------------------------------------------------------------------------- the command
def test_json_interface(capsys, tmp_path):
    out = tmp_path / "ds.json"
    assert main(["--model", "llama-2-70b", "--nodes", "2", "--gpu_memory", "40GB", "--activation_checkpointing",
                 "--json", "--write_ds_config", str(out)]) == 0  # fmt: skip
    got = json.loads(capsys.readouterr().out)
    assert set(got) == {"recommended", "layouts"} and got["recommended"] == "node"
    assert [lay["scope"] for lay in got["layouts"]] == ["global", "node", "none"]
    for lay in got["layouts"]:
        assert {"scope", "fits", "peak_bytes_per_gpu", "intra_node_bytes_per_step", "inter_node_bytes_per_step"} <= set(
            lay
        )
        assert isinstance(lay["fits"], bool) and lay["peak_bytes_per_gpu"] == sum(lay["memory_bytes"].values())
    assert json.loads(out.read_text())["zero_optimization"]["stage"] == 3
    assert ds_config_for("none", "ds_configs/zero3.json")["zero_optimization"]["stage"] == 2


def test_text_names_the_fix_when_nothing_fits(capsys):
    assert main(["--model", "llama-2-70b", "--gpus_per_node", "8", "--gpu_memory", "24GB"]) == 0
    text = capsys.readouterr().out
    assert "no scope fits in 21.60 GB per GPU: try --activation_checkpointing" in text
    assert "| fits | no | no |" in text
    assert main(["--model", "nowhere/at/all"]) == 2
    assert "error: --model nowhere/at/all: no such config.json" in capsys.readouterr().err


# ----------------------------------------------------------------------------- against real runs
def assert_traffic_matches_the_plan(model_dir, ds_config, run, scope: str, steps: int) -> None:
    """A 4-rank run as 2 simulated nodes x 2 (micro-batch 2, fp32): every rank's intra- and inter-node
    bytes per step in its traffic.json within 5% of the plan's (measured: equal to the byte but for
    rank 0's broadcasts). tests/test_layouts.py checks its global and node runs with it."""
    work = Workload(micro_batch=2, compute_dtype="fp32")
    zero = Zero.from_ds(json.loads(ds_config.read_text()))
    lay = plan_layout(read_shape(str(model_dir)), cluster(2, 2, 80), work, zero, scope)
    intra, inter = lay.run_average(steps)
    traffic = json.loads((run / "traffic.json").read_text())
    assert traffic["scope"] == scope and len(traffic["ranks"]) == 4
    for r in traffic["ranks"]:
        assert r["intra_node_bytes_per_step"] == pytest.approx(intra, rel=0.05), (scope, r)
        assert r["inter_node_bytes_per_step"] == pytest.approx(inter, rel=0.05), (scope, r)


@pytest.mark.dist
def test_memory_prediction_matches_a_real_run(tmp_path):
    """bench/bench_plan.py at world 1 (ZeRO-3): the peak resident set while the steps run, above the
    tiny model's (the process baseline), within 15% of the plan's peak above its tiny-model figure
    (a random LLaMA, hidden 1024, 2 layers, vocab 32000: 0.3 GB of fp32 embedding and head; measured
    311 MB predicted, 319 MB measured)."""
    out = tmp_path / "bench.json"
    proc = run_cmd([sys.executable, "bench/bench_plan.py", "--shapes", "1k-2l", "--worlds", "1", "--scopes", "global",
                    "--workdir", str(tmp_path / "work"), "--json", str(out)])  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [row] = json.loads(out.read_text())["rows"]
    assert row["memory_predicted"] > 250e6 and row["memory_ratio"] == pytest.approx(1.0, abs=0.15), row
    assert row["intra_measured"] == row["inter_measured"] == 0  # one rank: nothing sent


# ----------------------------------------------------------------------------- --ds_config auto
def test_auto_scope_is_refused_beside_a_given_scope():
    with pytest.raises(ConfigError, match="--ds_config auto lets the plan choose the sharding scope"):
        make_config({"ds_config": "auto", "shard_scope": "node"})


@pytest.mark.dist
def test_ds_config_auto_trains_with_the_plans_scope(tmp_path):
    """--ds_config auto at world 2 on one node: the run plans this model and these options as adept-plan
    does (its log line gives the plan's figures for both scopes) and takes the recommended scope. A model
    this small is smaller replicated than sharded (ZeRO-3's gather buffers outweigh half of its weights),
    so with room to spare that is none, run as ZeRO stage 2 (the rules that pick global or node where
    memory is short: the tests above). With $ADEPT_DEVICE_MEMORY=1MB nothing fits: a one-line refusal
    before any data is read."""
    opts = ["--max_length", "64", "--micro_batch_size", "2", "--compute_dtype", "fp32", "--max_steps", "1",
            "--max_eval_samples", "8"]  # fmt: skip
    shape = read_shape(str(ensure_builtin() / "model"))  # built once per session, as the run would
    work = Workload(max_length=64, micro_batch=2, compute_dtype="fp32")
    pl = plan(shape, Cluster(1, 2, 10**12), work, ZERO3, cpu=True)
    assert pl.recommended == "none"
    out = tmp_path / "run"
    proc = run_cmd(ranks_cmd("launch/train.py", "--ds_config", "auto", "--output_dir", str(out), *opts))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "--shard_scope auto: none on 1 node(s) x 2 rank(s)" in log, log[-3000:]
    for scope in ("global", "none"):
        assert f"{scope}: {size(pl.layout(scope).peak_bytes_per_gpu)} peak" in log, log[-3000:]
    assert json.loads((out / "config.json").read_text())["run"]["shard_scope"] == "none"
    assert json.loads((out / "ds_config.json").read_text())["zero_optimization"]["stage"] == 2
    env = {**child_env(), "ADEPT_DEVICE_MEMORY": "1MB"}
    proc = subprocess.run(ranks_cmd("launch/train.py", "--ds_config", "auto", "--output_dir",
                                        str(tmp_path / "small"), *opts),
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "--shard_scope auto: no sharding scope fits in 0.90 MB per rank" in log, log[-3000:]
    assert "data (" not in log  # refused before the data is read
