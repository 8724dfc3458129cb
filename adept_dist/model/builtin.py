"""The built-in default: a tiny LLaMA and a word-level tokenizer built (never downloaded) by this
project, briefly pre-trained on a synthetic review corpus, plus a sentiment task to adapt it to.

The pre-training corpus pairs each review with a continuation that shows its sentiment ("i loved
it", "i will never come back", "overall it was positive"), so the frozen model has learnt what the
reviews mean; the task asks for a bare label after " Label : ", which the adapter has to learn.
Everything is deterministic in a seed and cached in ``$ADEPT_DIST_HOME`` (default
``~/.cache/adept_dist``) in the Hugging Face formats a real model folder uses, so the demo goes
through exactly the loading code of a real model.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import torch

from adept_dist.common.fileio import home

VERSION = "v2"
SUBJECTS = [
    "food",
    "service",
    "staff",
    "room",
    "movie",
    "music",
    "pasta",
    "coffee",
    "hotel",
    "show",
    "pizza",
    "waiter",
    "view",
    "bed",
    "soup",
    "ending",
    "actors",
    "price",
    "menu",
    "trip",
]
POSITIVE = [
    "great",
    "wonderful",
    "excellent",
    "delicious",
    "friendly",
    "lovely",
    "amazing",
    "fantastic",
    "superb",
    "pleasant",
    "perfect",
    "charming",
]
NEGATIVE = [
    "awful",
    "terrible",
    "horrible",
    "rude",
    "bland",
    "boring",
    "dirty",
    "disappointing",
    "poor",
    "dreadful",
    "noisy",
    "stale",
]
ADVERBS = ["really", "very", "quite", "so", "truly", "rather"]
POS_TAILS = [
    "i loved it",
    "i will come back",
    "we had a good time",
    "overall it was positive",
    "i would recommend it",
    "we were happy",
]
NEG_TAILS = [
    "i hated it",
    "i will never come back",
    "we had a bad time",
    "overall it was negative",
    "i would not recommend it",
    "we were unhappy",
]
LABELS = {1: "positive", 0: "negative"}
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]
EXTRA = [
    "the",
    "was",
    "were",
    "and",
    "but",
    "not",
    "also",
    ".",
    ",",
    ":",
    "label",
    "review",
    "read",
    "input",
    "answer",
    "with",
    "correct",
    "so",
    "a",
    "it",
    "is",
]
# digits and the field names of the paper's task formats, so `--task` runs on the demo model too
# (their words are unknown to it, but labels and fields are real tokens)
TASK_WORDS = [str(i) for i in range(10)] + [
    "sentence",
    "sentence1",
    "sentence2",
    "premise",
    "hypothesis",
    "question",
    "question1",
    "question2",
    "passage",
    "paragraph",
    "context",
    "text",
    "word",
    "query",
    "entities",
    "option0",
    "option1",
]


def _words_of(lines: list[str]) -> set[str]:
    return {w for line in lines for w in line.lower().replace(".", " . ").replace(",", " , ").split()}


def vocabulary() -> list[str]:
    words = set(SUBJECTS + POSITIVE + NEGATIVE + ADVERBS + EXTRA + TASK_WORDS + list(LABELS.values()))
    words |= _words_of(POS_TAILS + NEG_TAILS)
    return SPECIALS + sorted(words)


def review(rng: random.Random) -> tuple[str, int]:
    """One synthetic review and its label (1 positive). Some clauses are negated ('was not great')."""
    label = rng.randint(0, 1)
    clauses = []
    for _ in range(rng.choice([1, 1, 2, 2, 3])):
        negate = rng.random() < 0.2
        pool = POSITIVE if (label == 1) != negate else NEGATIVE
        adv = rng.choice(ADVERBS) + " " if rng.random() < 0.4 else ""
        subj = rng.choice(SUBJECTS)
        verb = "were" if subj == "actors" else "was"
        clauses.append(f"the {subj} {verb} {'not ' if negate else ''}{adv}{rng.choice(pool)}")
    return " and ".join(clauses), label


def task_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        text, label = review(rng)
        rows.append({"input": f"review : {text}", "target": LABELS[label]})
    return rows


def corpus(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        text, label = review(rng)
        tail = rng.choice(POS_TAILS if label else NEG_TAILS)
        lines.append(f"{text} , {tail} ." if rng.random() < 0.5 else f"{text} . {tail} .")
    return lines


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces, no other change
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        add_bos_token=True,
    )


def llama_shape(
    vocab_size: int,
    hidden: int,
    layers: int,
    heads: int,
    kv_heads: int | None = None,
    intermediate: int | None = None,
    max_positions: int = 512,
) -> dict:
    """The size arguments of a LLaMA-shaped config (LlamaConfig and its look-alikes: Mistral, Qwen2):
    the built-in model, the tests' and the benchmarks' random models. No GQA unless `kv_heads`;
    the MLP is LLaMA's ~8/3 x hidden (rounded up to 256) unless `intermediate`."""
    return {
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": intermediate or int(hidden * 8 / 3 + 255) // 256 * 256,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads or heads,
        "max_position_embeddings": max_positions,
    }


def model_config(vocab_size: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        **llama_shape(vocab_size, hidden=128, layers=4, heads=4, kv_heads=2, intermediate=384, max_positions=512),
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )


def pretrain(model, tokenizer, steps: int, seed: int, batch: int = 64) -> list[float]:
    """Plain causal-LM training of the whole tiny model on the synthetic corpus."""
    lines = corpus(steps * batch, seed + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * max(0.05, 1 - s / steps))
    losses = []
    model.train()
    for step in range(steps):
        enc = tokenizer(
            [f"<s> {x} </s>" for x in lines[step * batch : (step + 1) * batch]],
            padding=True,
            add_special_tokens=False,
            return_tensors="pt",
        )
        labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
        loss = model(**enc, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def builtin_dir() -> Path:
    return home() / f"builtin-{VERSION}"


def save_model_folder(model, folder: Path) -> None:
    """The Hugging Face layout (config.json, generation_config.json, model.safetensors), written on any
    rank: transformers' save_pretrained writes no weights on a global rank other than 0, and the first
    rank of every node builds the built-in model (its home may be node-local)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    model.config.architectures = [type(model).__name__]  # as save_pretrained records them
    model.config.dtype = next(model.parameters()).dtype
    model.config.to_json_file(folder / "config.json")
    model.generation_config.to_json_file(folder / "generation_config.json")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}  # untied: no shared tensors
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def ensure_builtin(pretrain_steps: int = 600, seed: int = 0, log=print) -> Path:
    """Build (once) and return the folder holding model/, train.jsonl and dev.jsonl. One process
    builds at a time: others that need it meanwhile (a second job, the first ranks of other nodes
    sharing the cache) wait for that build instead of repeating it."""
    root = builtin_dir()
    if (root / "COMPLETE").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".builtin-{VERSION}.lock", "a") as baton:
        try:
            fcntl.flock(baton, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another process building the built-in model in {root}")
            fcntl.flock(baton, fcntl.LOCK_EX)  # released when its holder ends, however it ends
        except OSError:  # no flock on this file system: build, and the first to finish wins
            pass
        if (root / "COMPLETE").is_file():
            return root
        return _build(root, pretrain_steps, seed, log)


def _build(root: Path, pretrain_steps: int, seed: int, log) -> Path:
    from transformers import LlamaForCausalLM

    log(f"building the built-in tiny LLaMA and task in {root} (once, about two minutes on 2 cores)")
    tmp = Path(tempfile.mkdtemp(prefix=".builtin-", dir=root.parent))
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    model = LlamaForCausalLM(model_config(len(tokenizer)))
    # every core this process may use (up to 8), for the build only: a rank runs with one thread
    # (the launcher's OMP_NUM_THREADS) while the other ranks of its node wait for this build. The
    # weights do not depend on it: model.safetensors came out byte-identical on 1 and 2 threads
    # (2026-12-07), the build 1.3x faster on 2.
    threads = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(max(threads, min(8, cores)))
    try:
        losses = pretrain(model, tokenizer, pretrain_steps, seed)
    finally:
        torch.set_num_threads(threads)
    save_model_folder(model, tmp / "model")
    tokenizer.save_pretrained(tmp / "model")
    for name, n, s in (("train.jsonl", 4000, 100), ("dev.jsonl", 400, 200)):
        with open(tmp / name, "w") as f:
            for row in task_rows(n, s):
                f.write(json.dumps(row) + "\n")
    (tmp / "pretrain_losses.json").write_text(json.dumps(losses))
    missing = [n for n in ("config.json", "model.safetensors", "tokenizer.json") if not (tmp / "model" / n).is_file()]
    if missing:  # never mark a cache complete that every later run would fail on
        raise RuntimeError(f"building the built-in model in {tmp} wrote no {', '.join(missing)}")
    (tmp / "COMPLETE").write_text("ok\n")
    try:
        tmp.rename(root)
    except OSError:  # another process finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"built-in model ready (pre-training loss {losses[0]:.2f} -> {losses[-1]:.2f})")
    return root
