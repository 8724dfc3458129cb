"""Rows of ``input``/``target`` text -> token ids with target-only labels -> padded batches.

Decoder-only format: ``<bos> input separator target <eos>``; the loss is on ``target <eos>`` only.
``<bos>`` is what the tokenizer itself puts first (nothing for some); see ``Joiner`` for where the
separator's trailing space goes.
An input too long for ``max_length`` loses tokens from its end (the separator and the target are
kept whole); a target that cannot fit at all is an error naming the row.

Batches come from a deterministic infinite stream (one seeded permutation per epoch), so the data
position of a run is one integer (samples consumed), which makes resume exact.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from adept_dist.common.errors import UserError
from adept_dist.common.fileio import refuse_duplicate_keys
from adept_dist.model.adapters import IGNORE_INDEX


class DataError(UserError, ValueError):
    """Bad data; the message names the file and row and says how to fix it."""


@dataclass
class Example:
    input_ids: list[int]
    n_target: int  # the last n_target ids (target + eos) carry the loss
    source_len: int  # ids before the target: bos + input + separator


def text_lines(p: Path, path: str) -> list[str]:
    """The file's lines as UTF-8 text (a leading byte-order mark dropped, as Excel writes it); a
    byte that is not UTF-8 is an error naming the line."""
    lines = []
    for lineno, raw in enumerate(p.read_bytes().splitlines(keepends=True), 1):
        try:
            lines.append(raw.decode("utf-8-sig" if lineno == 1 else "utf-8"))
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{path}:{lineno}: not UTF-8 text (byte {raw[exc.start]:#04x} at column {exc.start + 1}): "
                f"save the file as UTF-8"
            ) from None
    return lines


def read_records(path: str, columns: tuple[str, ...] = ("input", "target")) -> list[dict]:
    """Parse a JSONL/JSON-lines or CSV file into row dicts (each with its line number in '_line');
    malformed lines are errors naming the line. A CSV header must have `columns`."""
    p = Path(path)
    if p.is_dir():
        raise DataError(f"data file {path} is a folder: give a .jsonl or .csv file")
    if not p.is_file():
        raise DataError(f"data file {path} not found: check the path")
    if p.suffix not in (".csv", ".jsonl", ".json"):
        raise DataError(f"data file {path}: unknown format {p.suffix!r}; use .jsonl or .csv")
    lines = text_lines(p, path)
    rows: list[dict] = []
    if p.suffix == ".csv":
        reader = csv.DictReader(iter(lines))
        missing = set(columns) - set(reader.fieldnames or [])
        if missing:
            raise DataError(
                f"{path}: CSV header lacks column(s) {', '.join(sorted(missing))}; need {' and '.join(map(repr, columns))}"
            )
        try:
            for r in reader:
                rows.append({**r, "_line": reader.line_num})  # the row's (last) line in the file
        except csv.Error as exc:
            raise DataError(f"{path}:{reader.line_num}: not valid CSV ({exc})") from None
    else:
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line, object_pairs_hook=refuse_duplicate_keys)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path}:{lineno}: not valid JSON ({exc.msg}); each line must be one JSON object"
                ) from None
            except ValueError as exc:  # a duplicate key
                raise DataError(f"{path}:{lineno}: {exc}; give each field once") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, one per line")
            row["_line"] = lineno
            rows.append(row)
    return rows


def read_rows(path: str) -> list[dict]:
    """Read a JSONL/JSON-lines or CSV file of rows with string 'input' and 'target'."""
    rows = read_records(path)
    if not rows:
        raise DataError(f"data file {path} holds no rows")
    for row in rows:
        where = f"{path}:{row['_line']}"
        for key in ("input", "target"):
            if key not in row or row[key] is None:
                raise DataError(f"{where}: row has no '{key}' field; every row needs 'input' and 'target'")
            if not isinstance(row[key], str):
                raise DataError(f"{where}: '{key}' must be a string, got {type(row[key]).__name__}")
        if not row["target"].strip():
            raise DataError(f"{where}: empty 'target'; every row needs a non-empty target")
        if "options" in row:  # the answers --eval_mode rank chooses from
            opts = row["options"]
            if not isinstance(opts, list) or not opts or not all(isinstance(o, str) and o.strip() for o in opts):
                raise DataError(f"{where}: 'options' must be a non-empty list of non-empty strings")
            row["options"] = [o.strip() for o in opts]
            if row["target"].strip() not in row["options"]:
                raise DataError(
                    f"{where}: the target {row['target'].strip()!r} is not one of the row's options: add it"
                )
    return rows


# How text becomes ids, recorded in every run and adapter. 1: the tokenizer's bos_token always put
# first, the separator tokenised as it is; 2: leading_ids and Joiner below. Adapters written with 1
# are still predicted with 1; runs started with 1 are not resumed with 2 (their data would change).
ENCODING = 2


def leading_ids(tokenizer, encoding: int = ENCODING) -> list[int]:
    """The ids the tokenizer itself puts before a text: LLaMA's <s> / <|begin_of_text|>, or none
    (GPT-2-style BPE tokenizers such as SmolLM2's: their bos_token <|im_start|> opens a chat turn
    and the model never saw it in front of plain text)."""
    if encoding < 2:
        return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    plain = tokenizer("a", add_special_tokens=False).input_ids
    full = tokenizer("a", add_special_tokens=True).input_ids
    for k in range(len(full) - len(plain) + 1):
        if full[k : k + len(plain)] == plain:
            return full[:k]
    return []


class Joiner:
    """How `source separator target` is cut into ids, the same in training and generation.

    A separator that ends in whitespace (" Label : ") gives that whitespace to the target where the
    tokenizer writes a word with its leading space (BPE: " plausible" is one token, while " " then
    "plausible" is a lone space token and word pieces the model never saw at a word's start): the
    source ends with the ids of the stripped separator and the target's ids are what tokenising
    `separator target` as one text adds after them. Where that text does not begin with the
    stripped separator's ids (a target that merges into it), the target is tokenised alone."""

    def __init__(self, tokenizer, separator: str, encoding: int = ENCODING) -> None:
        self.tokenizer = tokenizer
        core = separator.rstrip() if encoding >= 2 else separator
        self.core, self.space = (core, separator[len(core) :]) if core else (separator, "")
        self.sep_ids = self._ids(self.core)

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def targets(self, texts: list[str]) -> list[list[int]]:
        if not self.space:
            return self.tokenizer(texts, add_special_tokens=False).input_ids
        n, out = len(self.sep_ids), []
        joined = self.tokenizer([self.core + self.space + t for t in texts], add_special_tokens=False).input_ids
        for text, ids in zip(texts, joined):
            out.append(ids[n:] if ids[:n] == self.sep_ids and len(ids) > n and text else self._ids(text))
        return out


def encode(
    rows: list[dict], tokenizer, max_length: int, separator: str, path: str = "data"
) -> tuple[list[Example], int]:
    """Tokenize rows; return the examples and the number of rows whose input was truncated."""
    bos = leading_ids(tokenizer)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no EOS token: set eos_token in its tokenizer_config.json")
    joiner = Joiner(tokenizer, separator)
    sep_ids = joiner.sep_ids
    inputs = tokenizer([r["input"] for r in rows], add_special_tokens=False).input_ids
    targets = joiner.targets([r["target"] for r in rows])
    out, truncated = [], 0
    for i, (row, inp, tgt) in enumerate(zip(rows, inputs, targets)):
        tgt = tgt + [eos]
        room = max_length - len(bos) - len(sep_ids) - len(tgt)
        if room < 0:
            where = f"{path}:{row.get('_line', i + 2)}"
            raise DataError(
                f"{where}: target needs {len(tgt)} tokens (with EOS) and cannot fit in max_length={max_length} "
                f"beside the separator; raise --max_length or shorten the target"
            )
        if len(inp) > room:
            inp = inp[:room]
            truncated += 1
        src = bos + inp + sep_ids
        out.append(Example(src + tgt, len(tgt), len(src)))
    return out, truncated


UNKNOWN_WARN_SHARE = 0.05  # above this share of <unk> target tokens, the model cannot learn the targets


def unknown_shares(examples: list[Example], unk_id: int | None, special: set[int]) -> tuple[float, float]:
    """The shares of `unk_id` among the examples' input tokens and target tokens, the `special` ids
    (BOS, EOS, padding) left out of both counts. (0, 0) for a tokenizer without an unknown token
    (byte-level BPE) or whose unknown token is also a special one (GPT-2's <|endoftext|>). A
    tokenizer that does not know a task's words turns them into <unk>: "quantum" and "positive" alike."""
    if unk_id is None or unk_id in special:
        return 0.0, 0.0
    n_in = unk_in = n_tgt = unk_tgt = 0
    for e in examples:
        cut = len(e.input_ids) - e.n_target
        src = [t for t in e.input_ids[:cut] if t not in special]
        tgt = [t for t in e.input_ids[cut:] if t not in special]
        n_in, unk_in = n_in + len(src), unk_in + src.count(unk_id)
        n_tgt, unk_tgt = n_tgt + len(tgt), unk_tgt + tgt.count(unk_id)
    return unk_in / max(n_in, 1), unk_tgt / max(n_tgt, 1)


def collate(
    examples: list[Example], pad_id: int, pad_to: int | None = None, left: bool = False
) -> dict[str, torch.Tensor]:
    """Pad to the longest example (or to pad_to, for DePT's fixed positions); right padding for
    training, left padding for generation. Labels are -100 except on the target tokens."""
    length = pad_to or max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), length), dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        span = slice(length - n, length) if left else slice(0, n)
        ids[i, span] = torch.tensor(e.input_ids)
        mask[i, span] = 1
        if e.n_target:
            labels[i, span.stop - e.n_target : span.stop] = torch.tensor(e.input_ids[n - e.n_target :])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pack_rows(lengths: list[int], m: int, pack_tokens: int) -> list[list[int]]:
    """Which examples share a row: rows of at most `pack_tokens` slots (m prompt slots plus the
    examples' tokens), filled longest first onto the least-filled row so that the rows end up of
    similar length (a row is padded to the longest); as few as that greedy fill manages, starting
    from the least the lengths allow. Each row lists its examples in their
    order in the micro-batch. A function of the lengths only, so packing is deterministic."""
    room = pack_tokens - m
    if not lengths:
        return []
    if max(lengths) > room:
        raise ValueError(f"an example of {max(lengths)} tokens does not fit a packed row of {pack_tokens} with {m} "
                         f"prompt slots")  # fmt: skip
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    for n_rows in range(-(-sum(lengths) // room), len(lengths) + 1):
        rows: list[list[int]] = [[] for _ in range(n_rows)]
        load = [0] * n_rows
        for i in order:
            r = min(range(n_rows), key=lambda k: (load[k], k))
            rows[r].append(i)
            load[r] += lengths[i]
        if max(load) <= room:
            return [sorted(row) for row in rows]
    raise AssertionError("one example per row always fits")


def pack(examples: list[Example], m: int, pack_tokens: int) -> dict[str, torch.Tensor]:
    """A micro-batch laid end to end in rows (see `pack_rows`), each row opening with the m soft-prompt
    slots that its examples share, for `model.AdeptLM`'s packed forward.

    Sharing the prompt is exact: the prompt comes first and attends only to itself, so its keys and
    values are the same for every example, and each example attends to the prompt and to its own
    earlier tokens only (`segments` gives the mask). The decoder sees every example at the positions
    it has in the padded layout (prompt 0..m-1, the example m..m+len-1), and the loss is taken at the
    same target tokens, so a packed step computes what the padded one does, in a different order of
    summation (with dropout on, ADePT's masks are drawn over the packed layout: the same distribution,
    other draws). The m prompt positions are computed once per row instead of once per example.

    input_ids (1, N): the examples' ids, row after row; positions (1, N): each id's place in its
    example, as the adapter sees it. slots (R, L): where each row slot takes its input embedding
    from, an index into [prompt (m) | the N tokens | a zero row]. segments (R, L): 0 on the prompt,
    k on the row's k-th example (1, 2, ...), -1 on padding. position_ids (R, L): the decoder's
    positions. predict_at (K,): the flat slot (row * L + column) whose output predicts each of the K
    target tokens; targets (K,): those tokens.
    """
    groups = pack_rows([len(e.input_ids) for e in examples], m, pack_tokens)
    width = m + max(sum(len(examples[i].input_ids) for i in row) for row in groups)
    n_tokens = sum(len(e.input_ids) for e in examples)
    slots = torch.full((len(groups), width), m + n_tokens, dtype=torch.long)  # padding reads the zero row
    segments = torch.full((len(groups), width), -1, dtype=torch.long)
    position_ids = torch.zeros((len(groups), width), dtype=torch.long)
    ids, positions, predict_at, targets = [], [], [], []
    for r, row in enumerate(groups):
        slots[r, :m] = torch.arange(m)
        segments[r, :m] = 0
        position_ids[r, :m] = torch.arange(m)
        col = m
        for k, i in enumerate(row, start=1):
            e = examples[i]
            n = len(e.input_ids)
            slots[r, col : col + n] = torch.arange(m + len(ids), m + len(ids) + n)
            segments[r, col : col + n] = k
            position_ids[r, col : col + n] = torch.arange(m, m + n)
            for j in range(n - e.n_target, n):  # a target token is predicted by the slot before it (the
                predict_at.append(r * width + (col + j - 1 if j > 0 else m - 1))  # last prompt slot for the first)
                targets.append(e.input_ids[j])
            ids += e.input_ids
            positions += range(n)
            col += n
    return {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "positions": torch.tensor([positions], dtype=torch.long),
        "slots": slots,
        "segments": segments,
        "position_ids": position_ids,
        "predict_at": torch.tensor(predict_at, dtype=torch.long),
        "targets": torch.tensor(targets, dtype=torch.long),
    }


class SampleStream:
    """Deterministic endless order of example indices: epoch k is randperm(n, seed + k)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed
        self._epoch, self._perm = -1, None

    def index(self, position: int) -> int:
        epoch, offset = divmod(position, self.n)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._perm, self._epoch = torch.randperm(self.n, generator=g).tolist(), epoch
        return self._perm[offset]

    def take(self, start: int, count: int) -> list[int]:
        return [self.index(p) for p in range(start, start + count)]


class LengthGroupedStream:
    """A SampleStream's order with less padding: each window of `window` global batches of the
    stream (window x batch consecutive samples) is sorted by length and cut into global batches,
    and the order of those batches within the window is shuffled (seeded by window). Every sample
    is still seen once per epoch, batches stay random draws of the epoch's permutation, and a
    batch holds samples of similar length, so it pads little. Like SampleStream, the order is a
    function of (seed, position) only, which keeps resume exact."""

    def __init__(self, stream: SampleStream, lengths: list[int], batch: int, window: int) -> None:
        self.stream, self.lengths, self.batch = stream, lengths, batch
        self.n, self.span = stream.n, batch * window
        self._w, self._order = -1, None

    def _window(self, w: int) -> list[int]:
        if w != self._w:
            raw = self.stream.take(w * self.span, self.span)
            ranked = sorted(raw, key=lambda i: -self.lengths[i])  # stable: ties keep the stream's order
            chunks = [ranked[k : k + self.batch] for k in range(0, self.span, self.batch)]
            g = torch.Generator().manual_seed((self.stream.seed * 1_000_003 + w) % (2**63))
            self._order = [i for c in torch.randperm(len(chunks), generator=g).tolist() for i in chunks[c]]
            self._w = w
        return self._order

    def index(self, position: int) -> int:
        w, offset = divmod(position, self.span)
        return self._window(w)[offset]

    def take(self, start: int, count: int) -> list[int]:
        return [self.index(p) for p in range(start, start + count)]


def make_stream(lengths: list[int], seed: int, global_batch: int, group_window: int):
    """The training order: length-grouped over windows of `group_window` global batches, or the
    plain seeded permutation when group_window is 0."""
    stream = SampleStream(len(lengths), seed)
    return LengthGroupedStream(stream, lengths, global_batch, group_window) if group_window > 0 else stream


def padding_fraction(batches: list[list[int]], lengths: list[int]) -> float:
    """Share of padded positions when each batch is padded to its longest sample."""
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1 - real / padded if padded else 0.0


def step_batches(
    stream: SampleStream, position: int, micro: int, accum: int, world: int, rank: int
) -> tuple[list[list[int]], int]:
    """This rank's micro-batches for the optimizer step that starts at `position`, and the
    step's global sample indices (all ranks, all micro-batches) for global token counting."""
    global_idx = stream.take(position, micro * accum * world)
    mine = [global_idx[(k * world + rank) * micro : (k * world + rank + 1) * micro] for k in range(accum)]
    return mine, global_idx
