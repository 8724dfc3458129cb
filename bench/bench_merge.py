"""How much faster is inference with the merged export than with the ADePT FFN applied on the fly?

    python bench/bench_merge.py                       # a random LLaMA-shaped NF4 model (d=1024)
    python bench/bench_merge.py --model /path/to/model --batch 8 --source_len 128 --new_tokens 32

Both sides run in one process on the same weights, same batch and the same greedy decoding:
- unmerged: backbone + ADePT adapter (the offset FFN runs on every token read, prompt in front);
- merged: the same backbone with the merged table E + FFN(E) (adept_dist.export.merge.merged_table, what
  launch/export.py --merge writes) and only the soft prompt.
Printed and written as JSON (--json): median prefill time, per-token decode time and generated
tokens/s of each, the speedups, the time of the FFN alone (what merging saves) and its share of
the unmerged step, and whether both gave the same tokens.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from adept_dist.export.merge import merged_table
from adept_dist.model.adapters import ADePT, PromptAdapter, adept_rank
from adept_dist.model.backbone import DTYPES, load_backbone, resolve_compute_dtype
from adept_dist.model.lm import AdeptLM


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model folder; default: a random LLaMA of the sizes below")
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--quant", default="nf4", choices=("nf4", "none"))
    p.add_argument("--compute_dtype", default="auto", choices=("auto", "bf16", "fp32"))
    p.add_argument("--m", type=int, default=60, help="soft prompt length")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--source_len", type=int, default=128)
    p.add_argument("--new_tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5, help="timed runs after one warm-up; the median is reported")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    return p.parse_args(argv)


def random_model(folder: Path, hidden: int, layers: int, vocab: int) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    from adept_dist.model.builtin import llama_shape

    heads = max(1, hidden // 128)
    shape = llama_shape(vocab, hidden, layers, heads, intermediate=int(hidden * 8 / 3) // 64 * 64, max_positions=4096)
    cfg = LlamaConfig(**shape, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return str(folder)


def timed(fns: dict, repeats: int, sync) -> dict[str, float]:
    """Median seconds of each function; the functions take turns, in ABBA order (one warm-up round
    first), so a drift of the machine's speed or an order effect hits both sides alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(repeats + 1):
        for k, fn in list(fns.items())[:: 1 if i % 2 else -1]:
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            if i:
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None) -> dict:
    args = parse(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype_name = resolve_compute_dtype(args.compute_dtype, device)
    dtype = DTYPES[dtype_name]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with tempfile.TemporaryDirectory() as tmp:
        name = args.model or random_model(Path(tmp) / "model", args.hidden, args.layers, args.vocab)
        plain = load_backbone(name, args.quant, device, dtype=dtype)
        merged = load_backbone(name, args.quant, device, dtype=dtype)
    d, vocab = plain.config.hidden_size, plain.config.vocab_size
    torch.manual_seed(1)
    adapter = ADePT(args.m, d, adept_rank(args.m, d), dropout=0.0)
    with torch.no_grad():  # a trained-looking adapter: non-zero offset
        adapter.prompt.normal_(0, 0.02)
        adapter.B.normal_(0, 0.02)
        adapter.b.normal_(0, 0.02)
    adapter = adapter.to(device).eval()
    emb = merged.get_input_embeddings()
    if merged.get_output_embeddings().weight is emb.weight:  # untie, as the export does
        merged.get_output_embeddings().weight = torch.nn.Parameter(emb.weight.detach().clone(), requires_grad=False)
    emb.weight.data = merged_table(emb.weight.data, adapter)
    prompt_only = PromptAdapter(args.m, d).to(device)
    prompt_only.init_prompt(adapter.prompt.detach())
    unmerged_lm, merged_lm = AdeptLM(plain, adapter).eval(), AdeptLM(merged, prompt_only.eval()).eval()

    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, vocab, (args.batch, args.source_len), generator=g).to(device)
    mask = torch.ones_like(ids)
    lms = {"unmerged": unmerged_lm, "merged": merged_lm}
    with torch.no_grad():
        prefill = timed({k: (lambda lm=lm: lm.generate(ids, mask, 1, eos_id=-1)) for k, lm in lms.items()},
                        args.repeats, sync)  # fmt: skip
        full = timed({k: (lambda lm=lm: lm.generate(ids, mask, args.new_tokens, eos_id=-1)) for k, lm in lms.items()},
                     args.repeats, sync)  # fmt: skip
        tokens = {k: lm.generate(ids, mask, args.new_tokens, eos_id=-1) for k, lm in lms.items()}
        e = plain.get_input_embeddings()(ids)
        ffn = timed(
            {"prefill": lambda: adapter.offset(e), "step": lambda: adapter.offset(e[:, :1])}, args.repeats, sync
        )
    out = {
        k: {
            "prefill_ms": prefill[k] * 1e3,
            "decode_ms_per_token": (full[k] - prefill[k]) / max(1, args.new_tokens - 1) * 1e3,
            "generate_ms": full[k] * 1e3,
            "generated_tokens_per_s": args.batch * args.new_tokens / full[k],
        }
        for k in lms
    }
    u, m = out["unmerged"], out["merged"]
    result = {
        "device": torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "model": args.model or f"random LLaMA d={args.hidden} layers={args.layers} vocab={args.vocab}",
        "quant": args.quant,
        "compute_dtype": dtype_name,
        "batch": args.batch,
        "source_len": args.source_len,
        "new_tokens": args.new_tokens,
        "m": args.m,
        "r": adapter.r,
        **out,
        "speedup_prefill": u["prefill_ms"] / m["prefill_ms"],
        "speedup_decode": u["decode_ms_per_token"] / m["decode_ms_per_token"],
        "speedup_generate": u["generate_ms"] / m["generate_ms"],
        "ffn_alone_prefill_ms": ffn["prefill"] * 1e3,
        "ffn_alone_decode_step_ms": ffn["step"] * 1e3,
        "ffn_share_of_unmerged_prefill": ffn["prefill"] * 1e3 / u["prefill_ms"],
        "ffn_share_of_unmerged_decode_step": ffn["step"] * 1e3 / u["decode_ms_per_token"],
        "same_tokens": bool(torch.equal(tokens["unmerged"], tokens["merged"])),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
