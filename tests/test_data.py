"""Data format, truncation, batching and the bad inputs of issue 2 part 4."""

from __future__ import annotations

import pytest
import torch

from adept_dist.data.examples import (
    DataError,
    Example,
    SampleStream,
    collate,
    encode,
    pack,
    pack_rows,
    read_rows,
    step_batches,
)
from tests.conftest import write_jsonl


def ids(tok, text):
    return tok(text, add_special_tokens=False).input_ids


def test_decoder_only_format_and_target_only_labels(tokenizer, tmp_path):
    rows = read_rows(str(write_jsonl(tmp_path / "d.jsonl", [{"input": "the food was great", "target": "positive"}])))
    (ex,), n_trunc = encode(rows, tokenizer, 64, " Label : ")
    expected = (
        [tokenizer.bos_token_id]
        + ids(tokenizer, "the food was great")
        + ids(tokenizer, " Label : ")
        + ids(tokenizer, "positive")
        + [tokenizer.eos_token_id]
    )
    assert ex.input_ids == expected and n_trunc == 0
    assert ex.n_target == 2 and ex.source_len == len(expected) - 2
    batch = collate([ex], tokenizer.pad_token_id)
    labels = batch["labels"][0]
    assert labels[-2:].tolist() == [ids(tokenizer, "positive")[0], tokenizer.eos_token_id]
    assert (labels[:-2] == -100).all()  # loss on the target and EOS only


def test_truncation_from_source_side_and_count(tokenizer):
    rows = [
        {"input": "the food was great and the room was dirty", "target": "negative"},
        {"input": "the food", "target": "positive"},
    ]
    exs, n_trunc = encode(rows, tokenizer, 10, " Label : ")
    assert n_trunc == 1
    long = exs[0]
    assert len(long.input_ids) == 10
    # bos + first 5 input words + "label :" + target + eos: the input lost its end, the rest is whole
    assert long.input_ids[1:6] == ids(tokenizer, "the food was great and")
    assert long.input_ids[-4:] == ids(tokenizer, " Label : negative") + [tokenizer.eos_token_id]
    assert len(exs[1].input_ids) == 7


def test_target_that_cannot_fit_names_the_row(tokenizer, tmp_path):
    path = write_jsonl(
        tmp_path / "t.jsonl",
        [{"input": "a", "target": "positive"}, {"input": "a", "target": "the food was great and lovely"}],
    )
    with pytest.raises(DataError, match=r"t\.jsonl:2: target needs 7 tokens .* max_length=8"):
        encode(read_rows(str(path)), tokenizer, 8, " Label : ", str(path))


@pytest.mark.parametrize(
    "content,match",
    [
        ('{"input": "a", "target": "b"}\n{"input": "a", "target": \n', r"bad\.jsonl:2: not valid JSON"),
        ('{"input": "a"}\n', r"bad\.jsonl:1: row has no 'target' field"),
        ('{"input": 3, "target": "b"}\n', r"'input' must be a string"),
        ('{"input": "a", "target": "  "}\n', "empty 'target'"),
        ('["a", "b"]\n', "expected a JSON object"),
        ("\n\n", "holds no rows"),
    ],
)
def test_bad_jsonl(tmp_path, content, match):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=match):
        read_rows(str(path))


def test_csv(tmp_path):
    good = tmp_path / "good.csv"
    good.write_text('input,target\n"the food, was great",positive\n')
    assert read_rows(str(good))[0]["input"] == "the food, was great"
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nx,y\n")
    with pytest.raises(DataError, match="lacks column.*input, target"):
        read_rows(str(bad))


def test_read_errors_name_the_file_and_line(tmp_path):
    """Bytes that are not UTF-8, a key given twice, a folder given as a file: one error naming the
    file (and the line); an Excel CSV's byte-order mark is dropped; a CSV row's line counts the
    file's lines (a quoted field may span two), not its rows."""
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"input": "a", "target": "b"}\n{"input": "caf\xe9", "target": "b"}\n')
    with pytest.raises(DataError, match=r"rows\.jsonl:2: not UTF-8 text \(byte 0xe9 at column 15\)"):
        read_rows(str(path))
    path.write_text('{"input": "a", "input": "c", "target": "b"}\n')
    with pytest.raises(DataError, match=r"rows\.jsonl:1: key 'input' appears twice"):
        read_rows(str(path))
    with pytest.raises(DataError, match="is a folder"):
        read_rows(str(tmp_path))
    excel = tmp_path / "excel.csv"
    excel.write_bytes('input,target\r\n"two\r\nlines",positive\r\n\r\nx,\r\n'.encode("utf-8-sig"))
    with pytest.raises(DataError, match=r"excel\.csv:5: empty 'target'"):  # line 5: after a 2-line row and a blank
        read_rows(str(excel))


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_rows(str(tmp_path / "nope.jsonl"))
    (tmp_path / "x.parquet").write_text("")
    with pytest.raises(DataError, match="unknown format"):
        read_rows(str(tmp_path / "x.parquet"))


def test_collate_padding_sides_and_fixed_length():
    exs = [Example([1, 5, 6, 7, 2], 2, 3), Example([1, 8, 2], 1, 2)]
    right = collate(exs, pad_id=0)
    assert right["input_ids"].tolist() == [[1, 5, 6, 7, 2], [1, 8, 2, 0, 0]]
    assert right["attention_mask"].tolist() == [[1] * 5, [1, 1, 1, 0, 0]]
    assert right["labels"].tolist() == [[-100, -100, -100, 7, 2], [-100, -100, 2, -100, -100]]
    left = collate(exs, pad_id=0, left=True)
    assert left["input_ids"][1].tolist() == [0, 0, 1, 8, 2]
    assert left["labels"][1].tolist() == [-100, -100, -100, -100, 2]
    fixed = collate(exs, pad_id=0, pad_to=8)  # DePT: every batch exactly max_length
    assert fixed["input_ids"].shape == (2, 8)


def test_pack_lays_out_each_example_once_behind_its_rows_prompt():
    exs = [Example([1, 5, 6, 7, 2], 2, 3), Example([1, 8, 2], 1, 2), Example([9, 2], 2, 0)]
    m = 2
    b = pack(exs, m, pack_tokens=m + 6)  # 5 + 3 + 2 tokens: rows {5} and {3, 2}, 7 slots wide
    assert b["input_ids"].tolist() == [[1, 5, 6, 7, 2, 1, 8, 2, 9, 2]]
    assert b["positions"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 0, 1]]
    pad = m + 10  # the zero row after the prompt and the 10 tokens
    assert b["slots"].tolist() == [[0, 1, 2, 3, 4, 5, 6], [0, 1, 7, 8, 9, 10, 11]]
    assert b["segments"].tolist() == [[0, 0, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 2, 2]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4, 2, 3]]
    # targets: 7, 2 of the first row's example (slots 5, 6, predicted from slots 4, 5); 2 of the
    # second row's first example (slot 4, from 3); 9, 2 of the last, whose first token is a
    # target: predicted from the row's last prompt slot (flat 7 + 1), then from slot 5
    assert b["targets"].tolist() == [7, 2, 2, 9, 2]
    assert b["predict_at"].tolist() == [4, 5, 7 + 3, 7 + 1, 7 + 5]
    assert pad not in b["slots"]  # both rows are full
    two = pack(exs[:2], m, pack_tokens=m + 5)  # 5 and 3 do not fit together: the shorter row is padded
    pad = m + 8
    assert two["slots"].tolist() == [[0, 1, 2, 3, 4, 5, 6], [0, 1, 7, 8, 9, pad, pad]]
    assert two["segments"].tolist()[1] == [0, 0, 1, 1, 1, -1, -1]  # padding: segment -1
    with pytest.raises(ValueError, match="does not fit a packed row"):
        pack(exs, m, pack_tokens=m + 4)


def test_pack_rows_use_the_fewest_rows_of_similar_length():
    import random

    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 50) for _ in range(rng.randint(1, 12))]
        room = rng.randint(50, 200)
        rows = pack_rows(lengths, 10, room + 10)
        assert sorted(i for r in rows for i in r) == list(range(len(lengths)))  # each example once
        assert all(r == sorted(r) for r in rows)  # in their micro-batch order
        loads = [sum(lengths[i] for i in r) for r in rows]
        assert max(loads) <= room
        if sum(lengths) <= room:
            assert len(rows) == 1  # everything fits one row: one row
    assert pack_rows([30, 30, 20, 20], 0, 50) == [[0, 2], [1, 3]]  # 50/50, not 30+20 / 30+20 by chance only
    assert pack_rows([40, 30, 30], 0, 60) == [[0], [1, 2]]
    assert pack_rows([10] * 4, 0, 1000) == [[0, 1, 2, 3]]


def test_stream_is_deterministic_and_covers_each_epoch():
    s1, s2 = SampleStream(10, 42), SampleStream(10, 42)
    first = s1.take(0, 10)
    assert sorted(first) == list(range(10))
    assert s2.take(0, 25) == s1.take(0, 25)
    assert s1.take(10, 10) != first  # a new permutation each epoch
    assert SampleStream(10, 43).take(0, 10) != first


@pytest.mark.parametrize("world", [1, 2, 4])
def test_step_batches_split_the_global_batch(world):
    stream = SampleStream(37, 0)
    parts, global_idx = zip(*[step_batches(stream, 5, 3, 2, world, r) for r in range(world)])
    assert all(g == global_idx[0] for g in global_idx)
    mine = sorted(i for p in parts for mb in p for i in mb)
    assert mine == sorted(global_idx[0]) and len(mine) == 3 * 2 * world
    # the global batch of a step does not depend on how it is split, only on its size
    assert step_batches(stream, 5, 6, 1, 1, 0)[1] == step_batches(stream, 5, 3, 1, 2, 1)[1]
    assert torch.tensor(global_idx[0]).tolist() == stream.take(5, 3 * 2 * world)


def test_length_grouped_stream_pads_less_and_keeps_the_epoch():
    """Windows of 8 global batches of 8: each window holds exactly the stream's samples of that
    window, each batch is a length range, the batches' order within a window is shuffled, and the
    padding of 600 samples of length 10..200 falls from 42.6% (random batches) to 9.2% (measured
    with these seeds, 2026-11-24; a window of 64 samples leaves each batch a length range of ~24)."""
    import random

    from adept_dist.data.examples import LengthGroupedStream, make_stream, padding_fraction

    rng = random.Random(0)
    lengths = [rng.randint(10, 200) for _ in range(600)]
    plain = SampleStream(600, 7)
    grouped = LengthGroupedStream(SampleStream(600, 7), lengths, batch=8, window=8)
    for w in range(3):
        assert sorted(grouped.take(w * 64, 64)) == sorted(plain.take(w * 64, 64))  # same samples per window
    assert sorted(grouped.take(0, 600 - 600 % 64)) == sorted(plain.take(0, 600 - 600 % 64))
    batches = [grouped.take(i * 8, 8) for i in range(70)]
    random_batches = [plain.take(i * 8, 8) for i in range(70)]
    for b in batches:
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)
    first_window = [max(lengths[i] for i in b) for b in batches[:8]]
    assert first_window != sorted(first_window, reverse=True)  # batch order shuffled in the window
    grouped_pad, random_pad = padding_fraction(batches, lengths), padding_fraction(random_batches, lengths)
    assert round(random_pad, 3) == 0.426 and round(grouped_pad, 3) == 0.092, (random_pad, grouped_pad)
    again = LengthGroupedStream(SampleStream(600, 7), lengths, batch=8, window=8)
    assert again.take(100, 300) == grouped.take(100, 300)  # a function of (seed, position): resume-exact
    assert make_stream(lengths, 7, 8, 0).take(0, 50) == plain.take(0, 50)  # window 0: plain random batches
    # the trainer's split of a global batch over ranks works on it as on the plain stream
    parts, global_idx = zip(*[step_batches(grouped, 16, 4, 1, 2, r) for r in range(2)])
    assert global_idx[0] == grouped.take(16, 8) and sorted(parts[0][0] + parts[1][0]) == sorted(global_idx[0])


def test_encoding_1_is_kept_for_adapters_and_runs_that_used_it(tmp_path):
    """Encoding 2 (data.ENCODING) puts first only what the tokenizer itself does and gives the
    separator's trailing space to the target; adapters recorded without an encoding (1) predict
    with the old rule, and a run started with it is not resumed with the new one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from adept_dist.commands.predict import encode_sources
    from adept_dist.common.errors import ConfigError
    from adept_dist.data.examples import ENCODING, Joiner, leading_ids
    from adept_dist.run.build import check_encoding

    specials = ["<unk>", "<s>", "</s>"]  # byte-level BPE without merges, no BOS added: SmolLM2's kind
    vocab = {t: i for i, t in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    assert leading_ids(tok) == [] and leading_ids(tok, 1) == [tok.bos_token_id]
    new, old = Joiner(tok, " Label : "), Joiner(tok, " Label : ", 1)
    assert tok.decode(new.sep_ids) == " Label :" and tok.decode(old.sep_ids) == " Label : "
    assert tok.decode(new.targets(["yes"])[0]) == " yes" and tok.decode(old.targets(["yes"])[0]) == "yes"
    [ex2], _ = encode_sources(["hi"], tok, 32, " Label : ")
    [ex1], _ = encode_sources(["hi"], tok, 32, " Label : ", 1)
    assert tok.decode(ex2.input_ids) == "hi Label :" and tok.decode(ex1.input_ids) == "<s>hi Label : "
    check_encoding(tmp_path, {"identity": {"encoding": ENCODING}})  # the same encoding resumes
    with pytest.raises(ConfigError, match="data encoding 1, this adept-dist uses 2 .* start a new --output_dir"):
        check_encoding(tmp_path, {"identity": {"id": "x"}})  # written before encodings were recorded
