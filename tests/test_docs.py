"""The documentation holds together: README.md stays short and keeps the command .ci/run takes from
it, every relative link of README.md and docs/*.md reaches a file (and a heading, as GitHub names
its anchors), and the text the PEFT recipe of docs/OUTPUTS.md tokenizes gives the training ids."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def prose_lines(text: str) -> list[str]:
    """The lines of a Markdown text outside fenced and indented code blocks."""
    out, fenced, in_code, prev_blank = [], False, False, True
    for line in text.splitlines():
        if FENCE.match(line):
            fenced, prev_blank = not fenced, False
            continue
        if fenced:
            continue
        if line.startswith("    ") and (prev_blank or in_code):  # an indented block: after a blank line
            in_code = True
            continue
        if line.strip():
            in_code = False
            out.append(line)
        prev_blank = not line.strip()
    return out


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (not hyphens or underscores),
    each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of a page's headings; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for line in prose_lines(text):
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            out.add(base if n == 0 else f"{base}-{n}")
            seen[base] = n + 1
    return out


def broken_links(page: Path) -> list[str]:
    """Each relative link of `page` that reaches no file, or no heading of its file."""
    bad = []
    for line in prose_lines(page.read_text()):
        for target in LINK.findall(line):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                bad.append(f"{page.name}: {target}: no file {dest}")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
                bad.append(f"{page.name}: {target}: no heading #{anchor} in {dest.name}")
    return bad


def test_slugs_and_the_link_checker_on_known_cases(tmp_path):
    assert slug("Planning a job: `adept-plan`") == "planning-a-job-adept-plan"
    assert slug("ADePT, DePT and PT on real tasks") == "adept-dept-and-pt-on-real-tasks"
    assert slug("How much faster is merged inference?") == "how-much-faster-is-merged-inference"
    page = tmp_path / "a.md"
    (tmp_path / "b.md").write_text("# B\n\n## Two words\n\n## Two words\n")
    page.write_text(
        "# A\n\n[ok](b.md#two-words) [ok](b.md#two-words-1) [ok](#a) [web](https://example.org/x)\n"
        "[no file](c.md) [no heading](b.md#three) [no heading here](#b)\n\n"
        "```\n[in code](nothing.md)\n```\n\n    [indented code](nothing.md)\n"
    )
    assert [b.split(":")[1].strip() for b in broken_links(page)] == ["c.md", "b.md#three", "#b"]


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_relative_link_resolves(page):
    assert broken_links(page) == []


def test_readme_is_short_and_links_every_docs_page():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    linked = {Path(t.partition("#")[0]).name for line in prose_lines(text) for t in LINK.findall(line)}
    assert {p.name for p in (REPO / "docs").glob("*.md")} <= linked


def test_ci_finds_the_readme_test_command():
    """.ci/run evals the first README line this grep finds."""
    ci = (REPO / ".ci" / "run").read_text()
    grep = "grep -m1 -E '^    pip install .*&& pytest' README.md"
    assert grep in ci
    found = subprocess.run(["bash", "-c", grep], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert found == '    pip install torch==2.13.0 && pip install -e ".[test]" && pytest\n'


def byte_level_bpe():
    """A GPT-2-style tokenizer, trained here on the built-in task's reviews: byte-level BPE that puts
    nothing in front of a text, its bos_token a chat marker (as SmolLM2's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from adept_dist.model.builtin import task_rows

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    rows = task_rows(300, seed=1)
    tok.train_from_iterator([f"{r['input']} Label : {r['target']}" for r in rows], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")  # fmt: skip


def test_the_recipes_text_gives_the_training_ids(tokenizer):
    """docs/OUTPUTS.md, "The text to tokenize": tok(input + separator.rstrip()), the tokenizer's own
    special tokens and nothing more, is the source a training row was built from (data.encode): on
    a GPT-2-style BPE tokenizer (no bos) and on the built-in word-level one (<s> first). A text with
    the separator's trailing space, or a bos added by hand, is not."""
    from adept_dist.data.examples import encode, leading_ids
    from adept_dist.model.builtin import task_rows

    rows = task_rows(200, seed=7)
    separator = " Label : "
    for tok, gpt2_style in ((byte_level_bpe(), True), (tokenizer, False)):
        assert leading_ids(tok) == ([] if gpt2_style else [tok.bos_token_id])
        examples, truncated = encode(rows, tok, 128, separator)
        assert truncated == 0
        for row, e in zip(rows, examples):
            source = e.input_ids[: e.source_len]
            assert tok(row["input"] + separator.rstrip()).input_ids == source
            if gpt2_style:  # no bos in training; the trailing space would be a token of its own
                assert source[0] != tok.bos_token_id
                assert tok(row["input"] + separator).input_ids != source
