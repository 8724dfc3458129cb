"""Training speed side by side: floor, anchor (Hugging Face PEFT prompt tuning) and ours.

One command builds one randomly initialised LLaMA-architecture model (and a word-level tokenizer
with a vocabulary as large as the model's, so token ids spread over the whole table like real
text) and one set of examples of varied length, then runs each mode in a fresh process on them,
so that each mode's peak memory is its own:

- ``floor``: the frozen backbone's forward + backward to ``inputs_embeds`` in plain PyTorch, on the
  same layout as ours (packed rows, each opening with the m prompt slots its examples share), the
  head only at target tokens, no adapter, no optimizer, no DeepSpeed: the least any input-level
  PEFT method can do. ``floor_padded``: the same on padded batches (m prompt positions in front of
  every example), the floor of ``ours_padded``.
- ``anchor``: Hugging Face PEFT prompt tuning (``PromptTuningConfig``, 100 virtual tokens, the
  budget ADePT matches) forward + backward + AdamW step in plain PyTorch.
- ``ours``: adept-dist's real train step (``trainer.train_step`` on a DeepSpeed engine; ADePT
  m=60, budget-matched r; packed, the default), world size 1; ``ours_padded`` the same with
  ``--no-packing``; ``ours_zero3`` the same with the backbone under ZeRO-3 (layerwise loader) at
  world size 1; ``ours_ckpt`` the same as ``ours`` with activation checkpointing;
  ``ours_w2_zero3`` / ``ours_w2_zero2``: world size 2 (CPU, or 2 GPUs) with the backbone
  partitioned (ZeRO-3) or replicated.

Figures per mode: step time (median of the timed steps after warm-up), tokens/s (input tokens of
all ranks, prompt and padding excluded), padding fraction (padded slots among the slots that are
not prompt), peak memory per rank
(CPU: the process's peak RSS, VmHWM, which includes loading, and the largest RSS seen during the
timed steps; GPU: max allocated), and on a GPU the model FLOP utilisation: 4N (6N with
recompute) FLOPs per processed token (prompt slots included, padding not; N = the decoder layers'
parameters) over the bf16 matmul peak measured in the same run. "x padded" is a mode's tokens/s
over its padded twin's (ours / ours_padded, floor / floor_padded).

The modes run in turn, A B C A B C ..., for ``--rounds`` rounds (3 by default): step time and
tokens/s are medians over the rounds, and each ratio (x floor, x anchor) is taken within a round,
reported as its median with its range, so one noisy run cannot make a ratio. A padded mode's
"x floor" (and the anchor's: PEFT pads) is against floor_padded.

    python bench/bench.py                                   # defaults: about 8 minutes on a 2-core CPU
    python bench/bench.py --hidden 4096 --layers 32 --heads 32 --vocab 32000 --min_len 1024 --max_len 1024 \\
        --batch 4 --modes floor,anchor,ours,ours_ckpt --json bench_7b.json       # LLaMA-7B shape, on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from adept_dist.data.examples import pack_rows, padding_fraction

REPO = Path(__file__).resolve().parent.parent  # the checkout: ds_configs/ and this script
DEFAULT_MODES = ("floor", "floor_padded", "anchor", "ours", "ours_padded", "ours_ckpt", "ours_w2_zero3", "ours_w2_zero2")  # fmt: skip
MODES = (*DEFAULT_MODES, "ours_zero3")  # ours_zero3: world 1 under ZeRO-3, for the GPU check
PT_TOKENS = 100
M = 60


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.py", description="Training speed: floor vs anchor (PEFT PT) vs ours.")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv_heads", type=int, default=None, help="default: --heads (LLaMA-2-7B has no GQA)")
    p.add_argument("--intermediate", type=int, default=None, help="default: LLaMA's ~8/3 x hidden")
    p.add_argument("--vocab", type=int, default=16000)
    p.add_argument("--quant", default="nf4", choices=("nf4", "none"))
    p.add_argument("--batch", type=int, default=8, help="global batch (examples per optimizer step)")
    p.add_argument("--min_len", type=int, default=32, help="shortest example (tokens, incl. target and EOS)")
    p.add_argument("--max_len", type=int, default=160, help="longest example")
    p.add_argument("--examples", type=int, default=512)
    p.add_argument("--group_window", type=int, default=0,
                   help="ours and floor: length grouping window in global batches (0: random batches, as anchor)")  # fmt: skip
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=6, help="timed steps per mode (the median is reported)")
    p.add_argument("--modes", default=None, help=f"comma list of {', '.join(MODES)}; default: all that fit")
    p.add_argument("--rounds", type=int, default=3,
                   help="the modes run in turn (A B C A B C ...) this many times; medians and the ratios' spread "
                        "are reported, so that a ratio is not one noisy run")  # fmt: skip
    p.add_argument("--json", default="bench.json", help="where the figures go")
    p.add_argument("--keep_going", action="store_true",
                   help="a mode that fails is reported (its error in the JSON) and the others still run")  # fmt: skip
    p.add_argument("--distinct_ids", action="store_true",
                   help="ablation: ours computes the ADePT FFN once per distinct token id in training too")  # fmt: skip
    p.add_argument("--keep", default=None, help="keep the model and data in this folder (reused if present)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- the shared inputs
def make_inputs(args, root: Path) -> None:
    """A random LLaMA (HF folder, with a word-level tokenizer of `vocab` words) and train.jsonl."""
    import random

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from adept_dist.model.builtin import llama_shape

    if (root / "train.jsonl").is_file():
        return
    words = [f"w{i}" for i in range(args.vocab - 4)]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, **{w: i + 4 for i, w in enumerate(words)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  pad_token="<pad>")  # fmt: skip
    shape = llama_shape(args.vocab, args.hidden, args.layers, args.heads, args.kv_heads, args.intermediate,
                        max_positions=max(4096, args.max_len + PT_TOKENS + 8))  # fmt: skip
    cfg = LlamaConfig(**shape, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    torch.manual_seed(0)
    # on a GPU, built there in bf16 (a 7B shape in seconds, saved as the 13 GB a real checkpoint is)
    device, dtype = ("cuda", torch.bfloat16) if torch.cuda.is_available() else ("cpu", torch.float32)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # made in that dtype, not made in fp32 and cast (28 GB at 7B)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(default)
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    del model
    rng = random.Random(0)
    sep = 3  # " Label : " is 3 words (unknown to this vocabulary: <unk> x3), bos + eos 2 more
    with open(root / "train.jsonl", "w") as f:
        for _ in range(args.examples):
            n = rng.randint(args.min_len, args.max_len) - sep - 2 - 1
            text = " ".join(rng.choice(words) for _ in range(max(1, n)))
            f.write(json.dumps({"input": text, "target": rng.choice(words)}) + "\n")


def load_examples(root: Path, tokenizer, max_len: int):
    from adept_dist.data.examples import encode, read_rows

    examples, _ = encode(read_rows(str(root / "train.jsonl")), tokenizer, max_len, " Label : ")
    return examples


def step_indices(lengths: list[int], batch: int, count: int, group_window: int, seed: int = 42) -> list[list[int]]:
    """The examples of each step, as the trainer's stream deals them (its default seed)."""
    from adept_dist.data.examples import make_stream

    stream = make_stream(lengths, seed, batch, group_window)
    return [stream.take(i * batch, batch) for i in range(count)]


# ----------------------------------------------------------------------------- measuring
class Meter:
    def __init__(self, device: torch.device) -> None:
        self.device, self.times, self.rss = device, [], 0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def step(self, fn, timed: bool) -> None:
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        if timed:
            self.times.append(time.perf_counter() - t0)
            self.rss = max(self.rss, current_rss_mb())

    def memory(self) -> dict:
        if self.device.type == "cuda":
            return {"peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20}
        return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "train_rss_mb": self.rss}


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def device_and_dtype():
    from adept_dist.model.backbone import DTYPES, resolve_compute_dtype

    device = (
        torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else torch.device("cpu")
    )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device, DTYPES[resolve_compute_dtype("auto", device)]


def run_plain(mode: str, args, root: Path) -> dict:
    """floor and anchor: one process, plain PyTorch."""
    from adept_dist.config.resolve import make_config
    from adept_dist.data.examples import collate, pack
    from adept_dist.model.adapters import IGNORE_INDEX
    from adept_dist.model.backbone import load_backbone, load_tokenizer, quantization_config
    from adept_dist.model.lm import packed_mask, positions_of

    device, dtype = device_and_dtype()
    tok = load_tokenizer(str(root / "model"))
    examples = load_examples(root, tok, args.max_len)
    lengths = [len(e.input_ids) for e in examples]
    window = 0 if mode == "anchor" else args.group_window  # the floor sees ours' batches; PEFT random ones
    batches = step_indices(lengths, args.batch, args.warmup + args.steps, window)
    meter = Meter(device)
    if mode == "floor":  # packed, as ours: the rows' slots gathered from [filler prompt | tokens | zero]
        model = load_backbone(str(root / "model"), args.quant, device, dtype=dtype)
        decoder, head, emb = model.get_decoder(), model.get_output_embeddings(), model.get_input_embeddings()
        filler = torch.randn(M, model.config.hidden_size, dtype=dtype, device=device) * 0.02
        pack_tokens = make_config({"max_length": args.max_len}).data.pack_tokens  # ours' default row

        def step(idx):
            b = {k: v.to(device) for k, v in pack([examples[i] for i in idx], M, pack_tokens).items()}
            e = emb(b["input_ids"][0]).detach().requires_grad_(True)
            table = torch.cat([filler, e, e.new_zeros(1, e.shape[-1])])
            mask = packed_mask(b["segments"], "sdpa", dtype)
            hidden = decoder(inputs_embeds=table[b["slots"]], attention_mask=mask, position_ids=b["position_ids"],
                             use_cache=False).last_hidden_state  # fmt: skip
            logits = head(hidden.flatten(0, 1)[b["predict_at"]]).float()
            torch.nn.functional.cross_entropy(logits, b["targets"]).backward()
    elif mode == "floor_padded":
        model = load_backbone(str(root / "model"), args.quant, device, dtype=dtype)
        decoder, head, emb = model.get_decoder(), model.get_output_embeddings(), model.get_input_embeddings()
        filler = torch.randn(M, model.config.hidden_size, dtype=dtype, device=device) * 0.02

        def step(idx):
            b = {k: v.to(device) for k, v in collate([examples[i] for i in idx], tok.pad_token_id).items()}
            e = emb(b["input_ids"]).detach().requires_grad_(True)
            bsz = e.shape[0]
            embeds = torch.cat([filler.expand(bsz, -1, -1), e], dim=1)
            mask = torch.cat([b["attention_mask"].new_ones(bsz, M), b["attention_mask"]], dim=1)
            labels = torch.cat([b["labels"].new_full((bsz, M), IGNORE_INDEX), b["labels"]], dim=1)
            hidden = decoder(
                inputs_embeds=embeds, attention_mask=mask, position_ids=positions_of(mask)
            ).last_hidden_state
            keep = labels[:, 1:] != IGNORE_INDEX
            logits = head(hidden[:, :-1][keep]).float()
            torch.nn.functional.cross_entropy(logits, labels[:, 1:][keep]).backward()
    else:
        from peft import PromptTuningConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(
            str(root / "model"), dtype=dtype, quantization_config=quantization_config(args.quant, dtype),
            device_map={"": device}, attn_implementation="sdpa",
        )  # fmt: skip
        model = get_peft_model(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=PT_TOKENS))
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=0.3, eps=1e-6, weight_decay=0.0)

        def step(idx):
            b = {k: v.to(device) for k, v in collate([examples[i] for i in idx], tok.pad_token_id).items()}
            model(**b).loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

    for k, idx in enumerate(batches):
        meter.step(lambda idx=idx: step(idx), timed=k >= args.warmup)
    timed = batches[args.warmup :]
    prompt = PT_TOKENS if mode == "anchor" else M
    packed = pack_tokens if mode == "floor" else None
    return summary(mode, args, meter, timed, examples, 1, prompt, model_params(root), packed=packed)


def run_ours(mode: str, args, root: Path) -> dict:
    """adept-dist's own train step on a DeepSpeed engine (any world size, under torchrun)."""
    import torch.distributed as dist

    from adept_dist.config.resolve import make_config
    from adept_dist.data.examples import step_batches
    from adept_dist.distributed.comm import init_distributed
    from adept_dist.model.adapters import build_adapter
    from adept_dist.run.build import assemble, prepare
    from adept_dist.run.loop import train_step

    d = init_distributed(args.local_rank)
    ds = "ds_configs/zero3.json" if mode in ("ours_zero3", "ours_w2_zero3") else "ds_configs/zero2.json"
    out = root / f"run_{mode}"
    if d.main:
        shutil.rmtree(out, ignore_errors=True)
    dist.barrier()
    total = args.warmup + args.steps
    cfg = make_config({
        "model": str(root / "model"), "train_file": str(root / "train.jsonl"), "quant": args.quant,
        "max_length": args.max_len, "micro_batch_size": args.batch // d.world, "max_steps": total + 1,
        "output_dir": str(out), "ds_config": ds, "activation_checkpointing": mode == "ours_ckpt",
        "log_every": 10**6, "save_every": 10**6, "cache_dir": str(root / "cache"), "prompt_init": "vocab",
        "group_window": args.group_window, "packing": mode != "ours_padded",
    })  # fmt: skip
    parts = prepare(cfg, d)
    if args.distinct_ids:  # the same adapter, built with the distinct-id FFN in training
        old, a = parts.model.adapter, cfg.adapter
        new = build_adapter(
            a.method, old.m, old.d, old.r, cfg.data.max_length, a.dropout, distinct_ids_in_training=True
        )
        new.load_state_dict(old.state_dict())
        parts.model.adapter = new.to(old.prompt.device, old.prompt.dtype)
    run = assemble(parts)
    run.engine.train()
    load_peak = torch.cuda.max_memory_allocated() / 2**20 if d.device.type == "cuda" else None
    meter = Meter(d.device)
    batches = []
    for k in range(total):
        _, global_idx = step_batches(run.stream, run.position, cfg.data.micro_batch_size, 1, d.world, d.rank)
        meter.step(lambda: train_step(run), timed=k >= args.warmup)
        if k >= args.warmup:
            batches.append(global_idx)
    # each rank's micro-batch is padded on its own: padding counted per rank's slice
    per_rank = [
        b[r * cfg.data.micro_batch_size : (r + 1) * cfg.data.micro_batch_size] for b in batches for r in range(d.world)
    ]
    packed = cfg.data.pack_tokens if cfg.data.packing else None
    res = summary(mode, args, meter, batches, run.train_examples, d.world, M, model_params(root), per_rank, packed)
    mems = [None] * d.world
    dist.all_gather_object(mems, meter.memory())
    res["memory_per_rank"] = mems
    if load_peak is not None:  # loading and partitioning (layerwise under ZeRO-3), before the first step
        loads = [None] * d.world
        dist.all_gather_object(loads, load_peak)
        res["load_peak_mem_mb"] = max(loads)
    for key in mems[0]:
        res[key] = max(m[key] for m in mems)
    res["ds_config"] = ds
    res["r"] = getattr(run.model.adapter, "r", None)
    return res if d.main else None


def model_params(root: Path) -> int:
    """N: the decoder layers' parameters (what every processed token goes through)."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(root / "model")
    kv = c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)
    attn = 2 * c.hidden_size * c.hidden_size + 2 * c.hidden_size * kv
    return c.num_hidden_layers * (attn + 3 * c.hidden_size * c.intermediate_size)


def layout(micro_batches: list[list[int]], lengths: list[int], prompt: int, pack_tokens: int | None) -> tuple:
    """(padding fraction, prompt slots per micro-batch on average) of the micro-batches as laid out:
    padded (every example behind its own prompt) or packed (one prompt per row)."""
    if pack_tokens is None:
        return padding_fraction(micro_batches, lengths), prompt * statistics.mean(len(b) for b in micro_batches)
    real = pad = rows = 0
    for b in micro_batches:
        groups = pack_rows([lengths[i] for i in b], prompt, pack_tokens)
        loads = [sum(lengths[b[k]] for k in g) for g in groups]
        real, pad, rows = real + sum(loads), pad + sum(max(loads) - x for x in loads), rows + len(groups)
    return pad / (pad + real), prompt * rows / len(micro_batches)


def summary(mode, args, meter, batches, examples, world, prompt, n_params, pad_batches=None, packed=None) -> dict:
    """`batches`: each step's examples (all ranks); `pad_batches`: each micro-batch (default: a step
    is one); `packed`: the row length when the micro-batches were packed."""
    step = statistics.median(meter.times)
    tokens = statistics.mean(sum(len(examples[i].input_ids) for i in b) for b in batches)
    micro = pad_batches or batches
    padding, prompt_slots = layout(micro, [len(e.input_ids) for e in examples], prompt, packed)
    res = {
        "mode": mode,
        "world": world,
        "step_s": step,
        "tokens_per_s": tokens / step,
        "padding_fraction": padding,
        "prompt_tokens": prompt,
        "packed": packed is not None,
        **meter.memory(),
    }
    if meter.device.type == "cuda":
        processed = tokens + prompt_slots * len(micro) / len(batches)
        flops = (6 if mode == "ours_ckpt" else 4) * n_params * processed / step
        res["tflops"] = flops / 1e12
        res["mfu"] = flops / (matmul_peak_tflops() * 1e12)
    return res


def matmul_peak_tflops(n: int = 8192, reps: int = 20) -> float:
    """bf16 matmul throughput of this GPU, measured (the ceiling MFU is taken against)."""
    a = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


# ----------------------------------------------------------------------------- the driver
def worker(args) -> None:
    root = Path(args.workdir)
    res = run_ours(args.worker, args, root) if args.worker.startswith("ours") else run_plain(args.worker, args, root)
    if res is not None:
        (root / f"{args.worker}.json").write_text(json.dumps(res))


def default_modes() -> list[str]:
    gpus = torch.cuda.device_count()
    return [m for m in DEFAULT_MODES if "_w2_" not in m or gpus >= 2 or gpus == 0]


def launch(mode: str, args, root: Path, passthrough: list[str]) -> dict:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)  # keeps carried wheels
    env = {**os.environ, "PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    script = str(REPO / "bench" / "bench.py")
    common = [*passthrough, "--worker", mode, "--workdir", str(root)]
    if "_w2_" in mode:
        from adept_dist.distributed.comm import free_port

        # torchrun: the ranks the deepspeed launcher starts, without its two DeepSpeed-importing
        # Python processes before them (about 9 s on a 2-core machine); the mode times steps only
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), script, *common]  # fmt: skip
    else:
        cmd = [sys.executable, script, *common]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"bench mode {mode} failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")
    res = json.loads((root / f"{mode}.json").read_text())
    res["wall_s"] = time.perf_counter() - t0
    return res


def combine(rounds: list[dict]) -> dict:
    """One record per mode from the rounds: median step time and tokens/s, the largest memory, and
    each ratio against the floor and the anchor taken within a round (the modes of one round ran
    back to back, under the same machine load), then its median and range over the rounds."""
    results = {}
    for mode in rounds[0]:
        runs = [r[mode] for r in rounds]
        rec = dict(runs[0])
        rec["step_s"] = statistics.median(r["step_s"] for r in runs)
        rec["tokens_per_s"] = statistics.median(r["tokens_per_s"] for r in runs)
        for key in ("peak_rss_mb", "peak_mem_mb", "train_rss_mb"):
            if key in rec:
                rec[key] = max(r[key] for r in runs)
        for key in ("mfu", "tflops"):  # with the median step time they come from
            if key in rec:
                rec[key] = statistics.median(r[key] for r in runs)
        rec["step_s_per_round"] = [r["step_s"] for r in runs]
        padded = mode.endswith("_padded") or mode == "anchor"  # the anchor (PEFT) pads its batches
        floor = "floor_padded" if padded and "floor_padded" in rounds[0] else "floor"
        twin = f"{mode}_padded"
        for name, base, key in (("vs_floor", floor, "step_s"), ("vs_anchor", "anchor", "tokens_per_s"),
                                ("vs_padded", twin, "tokens_per_s")):  # fmt: skip
            if base in rounds[0]:
                each = [r[mode][key] / r[base][key] for r in rounds]
                rec[name] = statistics.median(each)
                rec[f"{name}_range"] = [min(each), max(each)]
        results[mode] = rec
    return results


def ratio_cell(r: dict, name: str) -> str:
    if name not in r:
        return "-"
    lo, hi = (f"{x:.2f}" for x in r[f"{name}_range"])
    return f"{r[name]:.2f}" if lo == hi else f"{r[name]:.2f} ({lo}-{hi})"  # a range only where it shows


def table(results: dict) -> str:
    mem_key = "peak_mem_mb" if any("peak_mem_mb" in r for r in results.values()) else "peak_rss_mb"
    head = ["mode", "world", "step s", "tokens/s", "x floor (range)", "x anchor (range)", "x padded (range)",
            "padding", f"{mem_key} per rank"]  # fmt: skip
    gpu = any("mfu" in r for r in results.values())
    if gpu:
        head.append("MFU")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for mode, r in results.items():
        row = [mode, str(r["world"]), f"{r['step_s']:.3f}", f"{r['tokens_per_s']:.0f}",
               ratio_cell(r, "vs_floor"), ratio_cell(r, "vs_anchor"), ratio_cell(r, "vs_padded"),
               f"{r['padding_fraction']:.1%}", f"{r[mem_key]:.0f}"]  # fmt: skip
        if gpu:
            row.append(f"{r['mfu']:.1%}" if "mfu" in r else "-")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse(argv)
    if args.worker:
        worker(args)
        return 0
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    if args.batch % 2:
        raise SystemExit("--batch must be even (the world-2 modes split it over 2 ranks)")
    modes = args.modes.split(",") if args.modes else default_modes()
    unknown = set(modes) - set(MODES)
    if unknown:
        raise SystemExit(f"unknown mode(s) {', '.join(sorted(unknown))}: choose from {', '.join(MODES)}")
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="adept-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
    for flag in ("--modes", "--json", "--keep", "--rounds"):  # driver-only flags (with their value)
        while flag in passthrough:
            i = passthrough.index(flag)
            del passthrough[i : i + 2]
    passthrough = [a for a in passthrough if a != "--keep_going"]
    failed: dict[str, str] = {}
    try:
        make_inputs(args, root)
        rounds: list[dict] = []
        for k in range(args.rounds):
            this = {}
            for mode in modes:
                if mode in failed:
                    continue
                print(f"[bench] round {k + 1}/{args.rounds}: {mode} ...", flush=True)
                try:
                    this[mode] = launch(mode, args, root, passthrough)
                except SystemExit as exc:
                    if not args.keep_going:
                        raise
                    failed[mode] = str(exc)
                    print(f"[bench] {mode} failed, going on: {str(exc)[:2000]}", flush=True)
                    continue
                print(f"[bench] {mode}: {this[mode]['step_s']:.3f} s/step, {this[mode]['tokens_per_s']:.0f} tokens/s",
                      flush=True)  # fmt: skip
                # what is measured so far, in case the run is cut short (a GPU lent for minutes); replaced below
                partial = {"partial": True, "per_round": [*rounds, this], "failed": failed}
                Path(args.json).write_text(json.dumps(partial, indent=2) + "\n")
            rounds.append(this)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    rounds = [{m: r for m, r in this.items() if m not in failed} for this in rounds]
    if not rounds[0]:
        raise SystemExit(f"every mode failed: {failed}")
    results = combine(rounds)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    out = {
        "device": device,
        "torch": torch.__version__,
        "model": {k: getattr(args, k) for k in ("hidden", "layers", "heads", "vocab", "quant")},
        "batch": args.batch,
        "lengths": [args.min_len, args.max_len],
        "steps": args.steps,
        "rounds": args.rounds,
        "results": results,
        "per_round": rounds,
        "failed": failed,
        "notes": "x floor = step time / floor's of the same layout (lower is better); x anchor = tokens/s / "
        "anchor's (higher is better); x padded = tokens/s / the padded twin's (higher is better); each the median "
        "over rounds of the ratio within a round, its min and max in *_range; step_s and tokens_per_s are medians "
        "over rounds, memory the largest",
    }
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(table(results))
    print(f"[bench] figures written to {args.json}")
    return 0


if __name__ == "__main__":
    from adept_dist.common.errors import exit_process

    exit_process(main() or 0)  # ranks ran gloo collectives: skip the interpreter's finalisation
