"""Real labeled tasks that anyone can fetch from the package registries (PyPI and Debian), made into
our data files the same way for everyone (`launch/fetch_data.py` is the command).

Sources, each pinned by version and sha256:
- `vaderSentiment` 3.3.2, PyPI sdist (MIT licence): `additional_resources/hutto_ICWSM_2014.tar.gz`
  holds 10,605 movie-review sentences (the Pang & Lee 2005 sentences that SST is built from), each
  with the mean sentiment of 20 human raters on -4..+4 (Hutto & Gilbert, ICWSM 2014).
- Debian `wordnet-base` 1:3.0-37 (WordNet 3.0, the WordNet 3.0 licence: permissive, keep the
  notice): every noun synset with its lemmas, hypernym pointers, lexicographer file and gloss.

Tasks (JSONL rows `{"input", "target"}`; `train`, `dev`, `test`, split by a seeded shuffle):
- `movie_sentiment`: a sentence -> `positive` (mean rating >= 0.5) or `negative` (<= -0.5); the
  533 sentences in between are left out, as SST-2 leaves out its neutral ones.
- `wordnet_hypernym` (lexical entailment): `Is X a kind of Y?` -> `yes` when Y names a hypernym of
  X at one or two steps, `no` when Y names a category that is no ancestor of X; one question per
  word X, half yes; so a word asked about is in one split only.
- `wordnet_category`: `word: gloss` -> the noun's lexicographer category among eight concrete
  ones (animal, artifact, body, food, location, person, plant, substance).
"""

from __future__ import annotations

import functools
import hashlib
import io
import random
import re
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from adept_dist.common.fileio import write_jsonl


@dataclass(frozen=True)
class Source:
    name: str
    version: str
    file: str
    sha256: str
    licence: str
    where: str  # how it is fetched, in words


VADER = Source(
    "vaderSentiment", "3.3.2", "vaderSentiment-3.3.2.tar.gz",
    "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
    "MIT", "PyPI sdist (pip download --no-deps --no-binary :all: vaderSentiment==3.3.2)",
)  # fmt: skip
WORDNET = Source(
    "wordnet-base", "1:3.0-37", "wordnet-base_3.0-37_all.deb",
    "61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752",
    "WordNet 3.0 licence (Princeton; permissive, keep its notice)",
    "Debian package (http://deb.debian.org/debian/pool/main/w/wordnet/), or apt-get download wordnet-base",
)  # fmt: skip
SOURCES = {"movie_sentiment": VADER, "wordnet_hypernym": WORDNET, "wordnet_category": WORDNET}
TASK_NAMES = tuple(SOURCES)

MOVIE_MEMBER = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
SENTIMENT_MARGIN = 0.5  # |mean rating| below this is neither positive nor negative
CATEGORIES = ("animal", "artifact", "body", "food", "location", "person", "plant", "substance")
# WordNet's lexicographer files by number (lexnames(5WN)); nouns are 03-28
NOUN_LEXFILES = ("Tops", "act", "animal", "artifact", "attribute", "body", "cognition", "communication", "event",
                 "feeling", "food", "group", "location", "motive", "object", "person", "phenomenon", "plant",
                 "possession", "process", "quantity", "relation", "shape", "state", "substance", "time")  # fmt: skip
NO_TRIES = 100  # draws for a "no" category before the word is left out (only tiny test trees run out)
MIN_DEPTH = 4  # a hypernym this close to `entity` (abstraction, object, whole, ...) says too little
SIZES = {"test": 1000, "dev": 200}  # the rest (up to TRAIN_MAX) trains
TRAIN_MAX = {"movie_sentiment": None, "wordnet_hypernym": 3000, "wordnet_category": 3000}


class DataError(ValueError):
    """A source file that is not what it should be; the message names the file and the fix."""


def check_sha256(path: Path, source: Source) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != source.sha256:
        raise DataError(f"{path}: sha256 {digest[:12]}... is not {source.name} {source.version}'s "
                        f"({source.sha256[:12]}...); delete it and fetch again")  # fmt: skip


def deb_member(deb: Path, suffix: str) -> bytes:
    """One file out of a .deb (an `ar` archive holding data.tar.*), read without dpkg."""
    try:
        return read_deb(deb, suffix)
    except (tarfile.TarError, EOFError, ValueError) as e:  # a cut or damaged archive; no lzma in this Python
        if isinstance(e, DataError):
            raise
        raise DataError(f"{deb}: cannot read its data archive ({e}); delete it and fetch again") from None


def read_deb(deb: Path, suffix: str) -> bytes:
    raw = deb.read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise DataError(f"{deb}: not a Debian package (no ar header); delete it and fetch again")
    pos = 8
    while pos + 60 <= len(raw):
        name, size = raw[pos : pos + 16].decode().strip().rstrip("/"), int(raw[pos + 48 : pos + 58])
        body = raw[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size % 2)
        if name.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                for member in tar.getmembers():
                    if member.isfile() and member.name.endswith(suffix):
                        return tar.extractfile(member).read()
            raise DataError(f"{deb}: no {suffix} in its data archive")
    raise DataError(f"{deb}: no data.tar member; delete it and fetch again")


def sdist_member(sdist: Path, inner_tar: str, member: str) -> bytes:
    """A file inside the tarball `inner_tar` inside the sdist (vaderSentiment ships its data so)."""
    try:
        return read_sdist(sdist, inner_tar, member)
    except (tarfile.TarError, EOFError, KeyError) as e:  # a cut or damaged archive, a missing member
        raise DataError(f"{sdist}: cannot read {member} from it ({e}); delete it and fetch again") from None


def read_sdist(sdist: Path, inner_tar: str, member: str) -> bytes:
    with tarfile.open(sdist) as outer:
        names = [n for n in outer.getnames() if n.endswith(inner_tar)]
        if not names:
            raise DataError(f"{sdist}: no {inner_tar} inside; delete it and fetch again")
        with tarfile.open(fileobj=io.BytesIO(outer.extractfile(names[0]).read())) as inner:
            return inner.extractfile(member).read()


# --- movie-review sentiment -------------------------------------------------------------------


def movie_rows(text: str) -> list[dict]:
    """`id<TAB>mean<TAB>sentence` lines -> rows; near-neutral sentences are left out."""
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise DataError(f"{MOVIE_MEMBER} line {n}: expected id, mean and sentence separated by tabs")
        mean, sentence = float(parts[1]), parts[2].replace("''", '"').strip()
        if abs(mean) >= SENTIMENT_MARGIN and sentence:
            rows.append({"input": sentence, "target": "positive" if mean > 0 else "negative"})
    return rows


# --- WordNet ------------------------------------------------------------------------------------


@dataclass
class Synset:
    lexfile: str
    words: list[str]
    hypernyms: list[str]  # offsets of `@` (class) hypernyms; instance hypernyms are left out
    gloss: str


def read_nouns(text: str) -> dict[str, Synset]:
    """WordNet's data.noun (wndb(5WN)): offset lex_filenum ss_type w_cnt(hex) [word lex_id]...
    p_cnt [symbol offset pos source/target]... | gloss; licence lines start with two spaces."""
    synsets = {}
    for line in text.splitlines():
        if line.startswith("  ") or not line.strip():
            continue
        head, _, gloss = line.partition(" | ")
        f = head.split()
        offset, lexfile, count = f[0], int(f[1]), int(f[3], 16)
        words = [f[4 + 2 * i] for i in range(count)]
        pos = 4 + 2 * count
        pointers = int(f[pos])
        hypernyms = [f[pos + 1 + 4 * i + 1] for i in range(pointers) if f[pos + 1 + 4 * i] == "@"]
        synsets[offset] = Synset(NOUN_LEXFILES[lexfile - 3], words, hypernyms, gloss.strip())
    return synsets


def plain_word(word: str) -> str | None:
    """A lemma as text (underscores to spaces), or None for proper nouns, markers and long phrases."""
    word = re.sub(r"\(.*\)$", "", word)
    if not re.fullmatch(r"[a-z][a-z_-]*", word) or word.count("_") > 2:
        return None
    return word.replace("_", " ")


def depths(synsets: dict[str, Synset]) -> dict[str, int]:
    """Each synset's shortest distance to a root (a synset with no hypernym)."""
    memo: dict[str, int] = {}

    def depth(offset: str) -> int:
        if offset not in memo:
            memo[offset] = 0  # guards a cycle, which WordNet does not have
            ups = synsets[offset].hypernyms
            memo[offset] = 1 + min(depth(h) for h in ups) if ups else 0
        return memo[offset]

    for offset in synsets:
        depth(offset)
    return memo


def ancestors(synsets: dict[str, Synset], offset: str) -> dict[str, int]:
    """Every ancestor of a synset with its shortest distance."""
    found, frontier, step = {}, [offset], 0
    while frontier:
        step += 1
        frontier = [h for o in frontier for h in synsets[o].hypernyms if h not in found]
        for h in frontier:
            found.setdefault(h, step)
    return found


def hypernym_rows(synsets: dict[str, Synset], seed: int) -> list[dict]:
    rng = random.Random(seed)
    depth = depths(synsets)
    named = {o: w for o, s in synsets.items() if (w := plain_word(s.words[0]))}
    categories = sorted({h for s in synsets.values() for h in s.hypernyms if h in named and depth[h] >= MIN_DEPTH})
    rows, used = [], set()
    for offset in sorted(named):
        word = named[offset]
        if word in used:
            continue
        above = ancestors(synsets, offset)
        near = [h for h, d in above.items() if d <= 2 and h in named and depth[h] >= MIN_DEPTH and named[h] != word]
        if not near:
            continue
        used.add(word)
        if rng.random() < 0.5:
            rows.append({"input": f"Is {word} a kind of {named[rng.choice(sorted(near))]}?", "target": "yes",
                         "word": word})  # fmt: skip
            continue
        above_words = {named.get(h) for h in above}
        for _ in range(NO_TRIES):  # a category that is no ancestor of the word, by name either
            other = rng.choice(categories)
            if other not in above and named[other] not in above_words and named[other] != word:
                rows.append({"input": f"Is {word} a kind of {named[other]}?", "target": "no", "word": word})
                break
    return rows


def category_rows(synsets: dict[str, Synset]) -> list[dict]:
    rows, used = [], set()
    for s in synsets.values():
        word = plain_word(s.words[0])
        definition = s.gloss.split('; "')[0].strip()
        if s.lexfile in CATEGORIES and word and word not in used and definition:
            used.add(word)
            rows.append({"input": f"{word}: {definition}", "target": s.lexfile, "word": word})
    return rows


# --- splits and files ---------------------------------------------------------------------------


def split_rows(rows: list[dict], seed: int, train_max: int | None) -> dict[str, list[dict]]:
    """A seeded shuffle: test, then dev, then train (capped); a row's `word` (if any) is dropped. A
    row whose input came before is left out (the movie sentences hold two twice), so no split holds
    an input of another."""
    seen: set[str] = set()
    rows = [r for r in rows if not (r["input"] in seen or seen.add(r["input"]))]
    random.Random(seed).shuffle(rows)
    need = SIZES["test"] + SIZES["dev"] + 1
    if len(rows) < need:
        raise DataError(f"only {len(rows)} rows; the splits need at least {need}")
    out, start = {}, 0
    for split in ("test", "dev"):
        out[split] = rows[start : start + SIZES[split]]
        start += SIZES[split]
    out["train"] = rows[start : start + train_max if train_max else None]
    return {k: [{"input": r["input"], "target": r["target"]} for r in v] for k, v in out.items()}


def make_task(task: str, files: dict[str, Path], seed: int) -> dict[str, list[dict]]:
    """The splits of one task from the downloaded files ({source name: path})."""
    path = files[SOURCES[task].name]
    if task == "movie_sentiment":
        check_sha256(path, VADER)
        rows = movie_rows(sdist_member(path, "hutto_ICWSM_2014.tar.gz", MOVIE_MEMBER).decode("utf-8", "replace"))
    else:
        synsets = wordnet_nouns(path)
        rows = hypernym_rows(synsets, seed) if task == "wordnet_hypernym" else category_rows(synsets)
    return split_rows(rows, seed, TRAIN_MAX[task])


@functools.lru_cache(maxsize=2)
def wordnet_nouns(deb: Path) -> dict[str, Synset]:
    """The package's noun synsets, checked and read once for both WordNet tasks."""
    check_sha256(deb, WORDNET)
    return read_nouns(deb_member(deb, "/data.noun").decode("utf-8", "replace"))


def write_task(out: Path, task: str, splits: dict[str, list[dict]], seed: int) -> dict:
    folder = out / task
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        write_jsonl(folder / f"{split}.jsonl", rows)
    source = SOURCES[task]
    counts = {split: {"rows": len(rows), "targets": count_targets(rows)} for split, rows in splits.items()}
    return {"task": task, "source": source.name, "version": source.version, "file": source.file,
            "sha256": source.sha256, "licence": source.licence, "fetched_from": source.where, "seed": seed,
            "splits": counts}  # fmt: skip


def count_targets(rows: list[dict]) -> dict[str, int]:
    return dict(sorted(Counter(r["target"] for r in rows).items()))
