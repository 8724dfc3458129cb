"""The plan (adept_dist/plan.py, ``adept-plan``) against measured training runs: traffic per step and
peak memory per rank, predicted and measured, with their ratio.

    python bench/bench_plan.py                                   # 7B layer shape, 2 layers; the built-in model
    python bench/bench_plan.py --shapes 7b-2l,7b-4l --worlds 1,2 --json bench_plan.json
    python bench/bench_plan.py --extra smollm2=~/.cache/adept_dist_tests/SmolLM2-135M-Instruct.Q4_1.gguf

Each run is the real trainer (adept_dist.commands.train.main, what launch/train.py runs) under the deepspeed
launcher on CPU, a few steps, at world 1, 2 and 4 (4 = 2 simulated nodes x 2 ranks, --ranks_per_node
2), once per sharding scope (global; node at 4; none), with ds_configs/zero3.json. On CPU the
compute dtype is fp32: NF4's packed bytes are stored as fp32 elements, the same bytes.

What is compared, per rank:
- traffic: the intra- and inter-node bytes per step of the run's traffic.json against the plan's,
  averaged over the same steps (the first step records ZeRO-3's trace and gathers more).
- memory: the rank's peak resident set while the training steps run (VmHWM, reset as the first step
  starts) minus the process baseline, against the plan's peak. The baseline is the same peak of a
  run of a tiny model (hidden 64, 2 layers) with the measured model's tokenizer and vocabulary, in
  the same layout, with the same data and options: Python, torch, DeepSpeed, gloo and its
  shared-memory buffers, the tokenizer, the data. It is measured once per layout (and tokenizer) and
  subtracted; the plan's figure for the tiny model is subtracted from the plan's likewise. On CPU a
  buffer counts the bytes written into it and gloo stages each all-gather (plan(cpu=True)); glibc is
  told to map every allocation over 64 KB on its own (MALLOC_MMAP_THRESHOLD_), so that freed tensors
  leave the resident set. The built-in model's weights (5 MB) are below the noise of this measure
  (a few MB): its memory ratio says nothing, its traffic does.

On a GPU (``--device cuda``: the GPU check's second part, launch/gpu_check.sh) the compute dtype is
bf16, the ranks use NCCL, and the measured peak is CUDA's allocator peak while the steps run
(torch.cuda.max_memory_allocated, reset as the first step starts), against the plan's peak per GPU as
adept-plan prints it (no CPU staging). The allocator holds nothing but tensors, so no baseline run is
subtracted: the CUDA context and NCCL's buffers are outside both figures (the plan leaves them to its
headroom). Worlds up to the GPUs of the machine (default 1).

    python bench/bench_plan.py --device cuda --shapes 7b-2l,7b-4l,7b --json gpu_plan.json

The runs' figures come from adept_dist.plan.measure (one JSON line per rank and step in
$ADEPT_MEMORY_REPORT). Until the trainer writes them itself, the worker (``--worker``) takes them
around the trainer's own functions and then calls adept_dist.commands.train.main, as launch/train.py does.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from adept_dist.plan import measure
from adept_dist.plan.inputs import Cluster, Workload, Zero, read_shape
from adept_dist.plan.layout import LayoutPlan, plan_layout

REPO = Path(__file__).resolve().parent.parent
SHAPES = {  # name -> (hidden, intermediate, layers, heads, kv_heads, vocab)
    "tiny": (64, 128, 2, 4, 2, 120),  # the baseline (tests/conftest.py's tiny LLaMA)
    "7b-2l": (4096, 11008, 2, 32, 32, 32000),  # LLaMA-2-7B's layer, embedding and head; 2 layers
    "7b-4l": (4096, 11008, 4, 32, 32, 32000),
    "7b": (4096, 11008, 32, 32, 32, 32000),  # LLaMA-2-7B whole (13 GB of bf16 to write first)
    "1b-2l": (2048, 5632, 2, 16, 16, 32000),
    "1k-2l": (1024, 2816, 2, 8, 8, 32000),  # small enough for a test: 0.3 GB of fp32 embedding and head
}
LAYOUTS = {1: [(None, "global"), (None, "none")], 2: [(None, "global"), (None, "none")],
           4: [(2, "global"), (2, "node"), (2, "none")]}  # fmt: skip
SEPARATOR = " Label : "  # config.py's default
# glibc maps every allocation above this many bytes on its own and unmaps it when freed, so the resident
# set follows the bytes alive; by default freed tensors under 32 MB stay in malloc's heap (resident)
MMAP_THRESHOLD = 1 << 16


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench_plan.py", description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="7b-2l,builtin",
                   help=f"random models of these shapes ({', '.join(s for s in SHAPES if s != 'tiny')}) and/or "
                        f"'builtin' (adept_dist/model/builtin.py's model)")  # fmt: skip
    p.add_argument("--extra", action="append", default=[], help="NAME=PATH: a model folder or .gguf file, run too")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu: gloo ranks, fp32, peak resident set less a baseline run's; cuda: one GPU a rank, "
                        "bf16, CUDA's allocator peak")  # fmt: skip
    p.add_argument("--worlds", default=None, help="ranks of each layout (default 1,2,4 on cpu, 1 on cuda)")
    p.add_argument("--scopes", default="global,node,none")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--micro_batch", type=int, default=None, help="default 2 on cpu, 4 on cuda")
    p.add_argument("--max_length", type=int, default=None,
                   help="every example is cut to exactly this many tokens (default 48 on cpu, 1024 on cuda)")  # fmt: skip
    p.add_argument("--ds_config", default="ds_configs/zero3.json")
    p.add_argument("--workdir", default=None, help="keep models and runs here (default: a temporary folder)")
    p.add_argument("--json", default=None, help="write the table's figures here")
    p.add_argument("--reuse", action="store_true", help="score the finished runs found in --workdir again")
    p.add_argument("--keep_going", action="store_true",
                   help="a run that fails is recorded in the JSON's \"failed\" and the others still run")  # fmt: skip
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    args.worlds = args.worlds or ("1" if cuda else "1,2,4")
    args.micro_batch = args.micro_batch or (4 if cuda else 2)
    args.max_length = args.max_length or (1024 if cuda else 48)
    args.compute_dtype = "bf16" if cuda else "fp32"
    return args


# ----------------------------------------------------------------------------- the worker (one rank)
def install_marks() -> None:
    """adept_dist.plan.measure's figures around the trainer's own functions, one JSON line per rank and step
    in $ADEPT_MEMORY_REPORT: the resident set before the backbone loads, and the peak while the steps
    run (the peak reset as the first starts). A hook in the trainer, once there, replaces this."""
    from adept_dist.plan import measure
    from adept_dist.run import build, loop

    state: dict = {}

    def before_backbone(load):
        def wrapped(*args, **kwargs):
            from adept_dist.model.backbone import import_bitsandbytes

            import_bitsandbytes()  # before the figure: a library, not the model
            import transformers.models.llama.modeling_llama  # noqa: F401

            state["rss_before_backbone_mb"] = measure.status_mb("VmRSS")
            return load(*args, **kwargs)

        return wrapped

    build.load_layerwise = before_backbone(build.load_layerwise)
    build.load_backbone = before_backbone(build.load_backbone)
    step = loop.train_step

    def train_step(run, stop=0):
        if "watch" not in state:  # the peak from here on
            state["watch"] = measure.LoadWatch.start(run.d.device)
        rec = step(run, stop)
        measure.append_report({"rank": run.d.rank, "step": run.step, "rss_before_backbone_mb":
                              state.get("rss_before_backbone_mb"), **state["watch"].figures()})  # fmt: skip
        return rec

    loop.train_step = train_step


def worker(argv: list[str]) -> int:
    from adept_dist.commands.train import main

    install_marks()
    return main(argv)


# ----------------------------------------------------------------------------- models and data
def save_random(folder: Path, dims: tuple, tokenizer) -> None:
    """A random LLaMA of `dims` in bf16 (as checkpoints ship), built without materialising it in fp32."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, inter, layers, heads, kv, vocab = dims
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=2048,
                      tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    g = torch.Generator().manual_seed(0)
    state = {}
    for name, p in model.state_dict().items():
        if name.endswith("norm.weight"):
            state[name] = torch.ones(p.shape, dtype=torch.bfloat16)
        else:
            state[name] = (torch.randn(p.shape, generator=g) * 0.02).to(torch.bfloat16)
    folder.mkdir(parents=True, exist_ok=True)
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.dtype = torch.bfloat16
    cfg.to_json_file(folder / "config.json")
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(folder)


def model_folder(name: str, spec: str | None, root: Path) -> Path:
    from adept_dist.model import builtin, gguf

    if spec is not None:
        return gguf.converted_folder(spec) if gguf.is_gguf(spec) else Path(spec).expanduser()
    if name == "builtin":
        return builtin.ensure_builtin() / "model"
    folder = root / "models" / name
    if not (folder / "config.json").is_file():
        save_random(folder, SHAPES[name], builtin.build_tokenizer())
    return folder


def baseline_folder(name: str, spec: str | None, folder: Path, root: Path) -> Path:
    """The tiny model whose run is a model's process baseline: the built-in word-level tokenizer's for
    the random shapes and the built-in model; for a model of --extra, one with its tokenizer and
    vocabulary (a tokenizer takes tens of MB: it belongs to the baseline, not to the model)."""
    if spec is None:
        return model_folder("tiny", None, root)
    from adept_dist.model.backbone import load_tokenizer

    tiny = root / "models" / f"tiny-{name}"
    if not (tiny / "config.json").is_file():
        vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
        save_random(tiny, (*SHAPES["tiny"][:5], vocab), load_tokenizer(str(folder)))
    return tiny


def write_rows(path: Path, max_length: int) -> None:
    """Reviews long enough that every input is cut: each example is exactly max_length tokens."""
    from adept_dist.model.builtin import task_rows

    rng = random.Random(0)
    rows = []
    for row in task_rows(64, seed=7):
        words = row["input"].split()
        while len(words) < 3 * max_length:
            words += rng.choice(task_rows(8, seed=len(words)))["input"].split()[2:]
        rows.append({"input": " ".join(words), "target": row["target"]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def target_tokens(folder: Path, rows_path: Path) -> int:
    """Target tokens of an example (with EOS), as the trainer tokenises it; the same for every row."""
    from adept_dist.data.examples import Joiner
    from adept_dist.model.backbone import load_tokenizer

    tok = load_tokenizer(str(folder))
    targets = sorted({json.loads(line)["target"] for line in rows_path.read_text().splitlines()})
    counts = {len(ids) + 1 for ids in Joiner(tok, SEPARATOR).targets(targets)}
    if len(counts) != 1:
        raise SystemExit(f"targets of {folder} tokenise to different lengths {counts}: use one-token targets")
    return counts.pop()


# ----------------------------------------------------------------------------- runs
def run_training(folder: Path, rows: Path, out: Path, world: int, rpn: int | None, scope: str, args) -> dict:
    """One training run; every rank's memory figures and the run's traffic.json."""
    from adept_dist.distributed.comm import free_port

    train = ["--model", str(folder), "--train_file", str(rows), "--ds_config", args.ds_config, "--output_dir",
             str(out / "run"), "--max_steps", str(args.steps), "--log_every", str(args.steps), "--micro_batch_size",
             str(args.micro_batch), "--max_length", str(args.max_length), "--compute_dtype", args.compute_dtype,
             "--shard_scope", scope] + (["--ranks_per_node", str(rpn)] if rpn else [])  # fmt: skip
    # torchrun: the ranks start ~9 s sooner than under the deepspeed launcher, same ranks
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world), "--master_port",
           str(free_port()), str(Path(__file__).resolve()), "--worker", *train]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)  # keeps gpu_check's wheels
    env.update(PYTHONPATH=path, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
               **{measure.MEMORY_REPORT: str(out / "measure.jsonl")})  # fmt: skip
    if args.device == "cpu":
        env.update(DS_ACCELERATOR="cpu", MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD))
    t0 = time.perf_counter()
    if not (args.reuse and (out / "run" / "traffic.json").is_file()):
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"run {out} failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    last = {}  # rank -> its figures after the last step
    for line in (out / "measure.jsonl").read_text().splitlines():
        rec = json.loads(line)
        last[rec["rank"]] = rec
    mb = 2**20
    peak_key = "cuda_peak_mb" if args.device == "cuda" else "peak_rss_mb"
    missing = [r for r in range(world) if peak_key not in last.get(r, {})]
    if missing:
        raise SystemExit(f"run {out}: no {peak_key} from ranks {missing} in {out / 'measure.jsonl'}")
    return {
        "seconds": round(time.perf_counter() - t0, 1),
        "traffic": json.loads((out / "run" / "traffic.json").read_text()),
        # the most resident (cpu) or allocated (cuda) while the steps ran
        "peak": [last[r][peak_key] * mb for r in range(world)],
        "peak_key": peak_key,
        "before_backbone": [last[r]["rss_before_backbone_mb"] * mb for r in range(world)],
        "before_steps": [last[r]["rss_before_mb"] * mb for r in range(world)],
    }


def predicted(folder: Path, world: int, rpn: int | None, scope: str, n_target: int, args) -> LayoutPlan:
    from adept_dist.distributed.dsconfig import apply_shard_scope, read_ds_config

    ds, _, _ = apply_shard_scope(read_ds_config(args.ds_config), scope, args.ds_config)
    nodes, gpn = (world // rpn, rpn) if rpn else (1, world)
    work = Workload(max_length=args.max_length, micro_batch=args.micro_batch, compute_dtype=args.compute_dtype,
                    target_tokens=n_target)  # fmt: skip
    return plan_layout(read_shape(str(folder)), Cluster(nodes, gpn, 1 << 50), work, Zero.from_ds(ds), scope,
                       cpu=args.device == "cpu")  # fmt: skip


def compare(name: str, world: int, rpn, scope: str, run: dict, base: dict, plan, base_plan, steps: int) -> dict:
    intra, inter = plan.run_average(steps)
    ranks = run["traffic"]["ranks"]

    def worst(key: str, want: float) -> tuple[float, float]:
        got = [r[key] for r in ranks]
        far = max(got, key=lambda g: abs(g - want))
        return far, (far / want if want else (1.0 if far == 0 else float("inf")))

    mem_pred = plan.peak_bytes_per_gpu - (base_plan.peak_bytes_per_gpu if base_plan is not None else 0)
    mem_meas = [p - b for p, b in zip(run["peak"], base["peak"])]
    far_mem = max(mem_meas, key=lambda m: abs(m - mem_pred))
    intra_meas, intra_ratio = worst("intra_node_bytes_per_step", intra)
    inter_meas, inter_ratio = worst("inter_node_bytes_per_step", inter)
    return {
        "shape": name, "world": world, "nodes": world // rpn if rpn else 1, "scope": scope,
        "intra_predicted": round(intra), "intra_measured": intra_meas, "intra_ratio": intra_ratio,
        "inter_predicted": round(inter), "inter_measured": inter_meas, "inter_ratio": inter_ratio,
        "memory_predicted": mem_pred, "memory_measured": far_mem, "memory_ratio": far_mem / mem_pred,
        "memory_parts": plan.memory, "memory_measure": run["peak_key"],
        "peak_rss": run["peak"], "baseline_peak_rss": base["peak"],
        "rss_before_backbone": run["before_backbone"], "seconds": run["seconds"],
    }  # fmt: skip


def table(rows: list[dict]) -> str:
    def mb(b):
        return f"{b / 1e6:.3f}" if abs(b) < 1e7 else f"{b / 1e6:.0f}"

    lines = ["| model | ranks (nodes) | scope | intra MB/step pred / meas | ratio | inter MB/step pred / meas | ratio "
             "| peak MB pred / meas (cpu: less the baseline's) | ratio |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['world']} ({r['nodes']}) | {r['scope']} | {mb(r['intra_predicted'])} / "
            f"{mb(r['intra_measured'])} | {r['intra_ratio']:.3f} | {mb(r['inter_predicted'])} / {mb(r['inter_measured'])}"
            f" | {r['inter_ratio']:.3f} | {mb(r['memory_predicted'])} / {mb(r['memory_measured'])} | "
            f"{r['memory_ratio']:.3f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--worker" in argv:  # anywhere: the deepspeed launcher would put --local_rank=N first
        return worker([a for a in argv if a != "--worker"])
    args = parse(argv)
    worlds = [int(w) for w in args.worlds.split(",")]
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("bench_plan: --device cuda needs a GPU and torch sees none: run it on a GPU machine")
        if max(worlds) > torch.cuda.device_count():
            raise SystemExit(f"bench_plan: --worlds {args.worlds} needs one GPU a rank and this machine has "
                             f"{torch.cuda.device_count()}: give smaller worlds")  # fmt: skip
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="adept-bench-plan-"))
    root.mkdir(parents=True, exist_ok=True)
    rows_path = root / f"train_{args.max_length}.jsonl"
    write_rows(rows_path, args.max_length)
    models = {name: None for name in args.shapes.split(",") if name}
    models.update(dict(spec.split("=", 1) for spec in args.extra))
    scopes = args.scopes.split(",")
    results, failed = [], {}

    def save() -> None:  # after every row: a run cut short (a GPU's time running out) keeps what it has
        if args.json:
            Path(args.json).write_text(
                json.dumps({"args": vars(args), "rows": results, "failed": failed}, indent=1) + "\n"
            )

    try:
        folders = {name: model_folder(name, spec, root) for name, spec in models.items()}
        # on a GPU the allocator's peak is the model's tensors alone: no baseline process to subtract
        bases = {name: baseline_folder(name, spec, folders[name], root) for name, spec in models.items()
                 if args.device == "cpu"}  # fmt: skip
        for world in worlds:
            for rpn, scope in LAYOUTS[world]:
                if scope not in scopes:
                    continue
                where = root / "runs" / f"w{world}_{scope}"
                done = {}  # baseline folder -> (its run, its plan)
                for name, folder in folders.items():
                    tiny = bases.get(name)
                    if tiny is not None and tiny not in done:
                        done[tiny] = (run_training(tiny, rows_path, where / tiny.name, world, rpn, scope, args),
                                      predicted(tiny, world, rpn, scope, target_tokens(tiny, rows_path), args))  # fmt: skip
                    base, base_plan = done[tiny] if tiny is not None else ({"peak": [0] * world}, None)
                    try:
                        run = run_training(folder, rows_path, where / name, world, rpn, scope, args)
                    except SystemExit as exc:
                        if not args.keep_going:
                            raise
                        failed[f"{name} w{world} {scope}"] = str(exc)[-2000:]
                        print(f"[bench_plan] {name} at world {world}, {scope}: failed (--keep_going)\n{str(exc)[-1500:]}",
                              flush=True)  # fmt: skip
                        save()
                        continue
                    plan = predicted(folder, world, rpn, scope, target_tokens(folder, rows_path), args)
                    results.append(compare(name, world, rpn, scope, run, base, plan, base_plan, args.steps))
                    print(table(results[-1:]).splitlines()[-1], f"({run['seconds']} s)", flush=True)
                    save()
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    memory = ("peak resident set less the tiny model's run's" if args.device == "cpu" else
              "CUDA allocator peak (max_memory_allocated)")  # fmt: skip
    print(f"{args.steps} steps of micro-batch {args.micro_batch} x {args.max_length} tokens, {args.compute_dtype}, "
          f"{args.ds_config}, {args.device}; memory: {memory}; ratio = measured / predicted (the rank farthest "
          f"from the prediction)")  # fmt: skip
    print(table(results))
    save()
    if args.json:
        print(f"[bench_plan] figures written to {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    from adept_dist.common.errors import exit_process

    exit_process(main() or 0)  # its ranks (--worker) ran collectives: skip the interpreter's finalisation
