"""The paper's 23 tasks, one declarative entry each.

An entry says where the data lives (hub id and config, or the subset filter of a shared dataset),
how a row becomes ``(source text, targets)``, the label words, the metrics (the first one picks the
best checkpoint), which splits play validation and test, and the reference's step budget.
Adding a task is adding one entry to ``TASKS``.

Conventions follow the reference code (ATTEMPT / DePT ``tasks.py``), text-to-text:
``"key1: value1 key2: value2"`` -> ``"0"``/``"1"``/... for classification, the answer span for QA.
Deliberate differences, each a fix of a reference quirk:
- STS-B targets are rounded to steps of 0.2 (T5's rule and docs/METHOD.md); the reference's
  ``np.round((label * 5) / 5, decimals=1)`` rounds to steps of 0.1.
- ReCoRD keeps one example per answer for training (as the reference) but evaluates each query
  once against all its answers (the reference scores every duplicate, over-weighting queries with
  several answers); no "record" word before the query.
- MRQA text is not re-spaced around punctuation (a T5-tokenizer workaround of the reference).

Splits (ATTEMPT convention, ``split_seed`` 42): ``small`` tasks split the official validation set
in half (first half validation, second half test, after a seeded shuffle); ``large`` tasks take
``validation_size`` (1000) shuffled training rows as validation, train on the rest and test on the
official validation set; ``official`` tasks use the hub's splits as they are.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

Row = dict
Formatted = tuple[str, list[str]]  # source text, targets (training makes one example per target)


def keyed(*pairs: tuple[str, str]) -> Callable[[Row], str]:
    """Source text "k1: {row[c1]} k2: {row[c2]}" from (key, column) pairs."""

    def source(row: Row) -> str:
        return " ".join(f"{key}: {row[col]}" for key, col in pairs)

    return source


def label_target(row: Row) -> list[str]:
    return [str(row["label"])]


def stsb_target(row: Row) -> list[str]:
    return [f"{round(float(row['label']) * 5) / 5:.1f}"]  # nearest multiple of 0.2 (half to even)


def remove_markup(text: str) -> str:
    return re.sub(r"</?b>", "", text.replace("<br>", " "))


def multirc_source(row: Row) -> str:
    q, a, p = (remove_markup(row[k]) for k in ("question", "answer", "paragraph"))
    return f"question: {q} answer: {a} paragraph: {p}"


def mark_span(text: str, span: str, word_index: int, mark: str) -> str:
    """Wrap `span`, which starts at whitespace-separated word `word_index`, as "mark span mark"."""
    pattern = rf"^((?:\S+\s){{{word_index}}})({re.escape(span)})"
    marked, n = re.subn(pattern, lambda m: f"{m.group(1)}{mark} {m.group(2)} {mark}", text)
    if n != 1:
        raise ValueError(f"span {span!r} is not at word {word_index} of {text!r}")
    return marked


def wsc_source(row: Row) -> str:
    text = mark_span(row["text"], row["span1_text"], row["span1_index"], "*")
    span2_index = row["span2_index"] + (2 if row["span1_index"] < row["span2_index"] else 0)  # the 2 marks added
    return "text: " + mark_span(text, row["span2_text"], span2_index, "#")


def record_source(row: Row) -> str:
    passage = re.sub(r"([.?!\"'])\n@highlight\n", r"\1 ", row["passage"])
    passage = passage.replace("\n@highlight\n", ". ")
    return f"query: {row['query']} entities: {', '.join(row['entities'])} passage: {passage}"


def answers_target(row: Row) -> list[str]:
    return list(row["answers"])


def winogrande_target(row: Row) -> list[str]:
    return [str(int(row["answer"]) - 1)]


def scitail_target(row: Row) -> list[str]:
    return [{"entailment": "0", "neutral": "1"}.get(row["gold_label"], str(row["gold_label"]))]


def mbpp_source(row: Row) -> str:
    return row["text"] + " Your code should pass these tests:\n" + "\n".join(row["test_list"])


def mbpp_target(row: Row) -> list[str]:
    return [row["code"].replace("\r\n", "\n")]


@dataclass(frozen=True)
class Task:
    name: str
    hub: str  # dataset id on the Hugging Face hub
    hub_config: str | None
    columns: tuple[str, ...]  # columns a row must have
    source: Callable[[Row], str]
    target: Callable[[Row], list[str]]  # training targets; the first is also the eval target
    metrics: tuple[str, ...]  # the first one selects the best checkpoint
    labels: tuple[str, ...] | None = None  # label words of a classification task
    splits: str = "small"  # small | large | official | pool (BIG-bench: one pool, see bigbench.py)
    train_split: str = "train"
    validation_split: str = "validation"  # the hub split that holds the official validation set
    test_split: str | None = None  # official/large: the hub split used as test (default: validation_split)
    validation_size: int = 1000  # large tasks: training rows held out as validation
    subset: tuple[str, str] | None = None  # (column, value): rows of a shared dataset that belong to this task
    group: Callable[[Row], str] | None = None  # evaluation group id (MultiRC question)
    multi_answer: bool = False  # eval: one example per row, scored against all targets
    max_steps: int = 30000  # the reference's step budget at batch 32
    max_new_tokens: int | None = None  # generation budget; None = longest eval target
    family: str = "other"  # table grouping: glue, superglue, mrqa, other
    program: Callable[[Row], dict] | None = None  # MBPP: the tests a prediction must pass
    notes: str = field(default="", compare=False)

    @property
    def test_hub_split(self) -> str:
        return self.test_split or self.validation_split

    def hub_splits(self) -> list[str]:
        """The hub splits this task reads."""
        out = [self.train_split]
        if self.splits == "small":
            out.append(self.validation_split)
        elif self.splits == "large":
            out.append(self.test_hub_split)
        else:
            out += [self.validation_split, self.test_hub_split]
        return list(dict.fromkeys(out))


def _glue(name, pairs, labels, metrics=("accuracy",), splits="small", steps=30000, **kw) -> Task:
    cols = tuple(c for _, c in pairs) + ("label",)
    return Task(name, "nyu-mll/glue", name, cols, keyed(*pairs), kw.pop("target", label_target), metrics,
                labels, splits, max_steps=steps, family="glue", **kw)  # fmt: skip


def _superglue(name, config, source, cols, labels, metrics=("accuracy",), steps=30000, **kw) -> Task:
    return Task(name, "aps/super_glue", config, cols + ("label",), source, label_target, metrics, labels,
                max_steps=steps, family="superglue", **kw)  # fmt: skip


def _mrqa(name: str, subset: str) -> Task:
    return Task(name, "mrqa-workshop/mrqa", None, ("subset", "question", "context", "answers"),
                keyed(("question", "question"), ("context", "context")), answers_target, ("token_f1", "exact_match"),
                splits="large", subset=("subset", subset), multi_answer=True, max_steps=200000, max_new_tokens=32,
                family="mrqa")  # fmt: skip


BINARY, THREE = ("0", "1"), ("0", "1", "2")
S12 = (("sentence1", "sentence1"), ("sentence2", "sentence2"))
PH = (("premise", "premise"), ("hypothesis", "hypothesis"))

TASK_LIST: list[Task] = [
    # GLUE
    _glue("mnli", PH, THREE, splits="official", steps=200000,
          validation_split="validation_mismatched", test_split="validation_matched"),
    _glue("qqp", (("question1", "question1"), ("question2", "question2")), BINARY, ("accuracy", "f1"),
          splits="large", steps=100000),
    _glue("qnli", (("question", "question"), ("sentence", "sentence")), BINARY, splits="large", steps=100000),
    _glue("sst2", (("sentence", "sentence"),), BINARY, splits="large"),
    _glue("stsb", S12, None, ("pearson", "spearman"), target=stsb_target, max_new_tokens=4),
    _glue("mrpc", S12, BINARY, ("accuracy", "f1"), steps=10000),
    _glue("rte", S12, BINARY),
    _glue("cola", (("sentence", "sentence"),), BINARY, ("mcc",), steps=40000),
    # SuperGLUE
    _superglue("multirc", "multirc", multirc_source, ("paragraph", "question", "answer", "idx"), BINARY,
               ("f1a", "em"), group=lambda r: f"{r['idx']['paragraph']}-{r['idx']['question']}"),
    _superglue("boolq", "boolq", keyed(("question", "question"), ("passage", "passage")), ("question", "passage"),
               BINARY),
    _superglue("wic", "wic", keyed(*S12, ("word", "word")), ("sentence1", "sentence2", "word"), BINARY,
               steps=20000),
    _superglue("wsc", "wsc.fixed", wsc_source, ("text", "span1_index", "span2_index", "span1_text", "span2_text"),
               BINARY, steps=20000),
    _superglue("cb", "cb", keyed(*PH), ("premise", "hypothesis"), THREE, ("macro_f1", "accuracy")),
    Task("record", "aps/super_glue", "record", ("passage", "query", "entities", "answers"), record_source,
         answers_target, ("token_f1", "exact_match"), splits="large", multi_answer=True, max_steps=200000,
         max_new_tokens=16, family="superglue"),
    # MRQA
    _mrqa("nq", "NaturalQuestionsShort"),
    _mrqa("hotpotqa", "HotpotQA"),
    _mrqa("searchqa", "SearchQA"),
    _mrqa("newsqa", "NewsQA"),
    # others
    Task("winogrande", "allenai/winogrande", "winogrande_xl", ("sentence", "option1", "option2", "answer"),
         keyed(("sentence", "sentence"), ("option0", "option1"), ("option1", "option2")), winogrande_target,
         ("accuracy",), BINARY, splits="large", max_steps=30000),
    Task("yelp", "fancyzhx/yelp_polarity", None, ("text", "label"), keyed(("sentence", "text")), label_target,
         ("accuracy",), BINARY, splits="large", test_split="test", max_steps=100000),
    Task("scitail", "allenai/scitail", "snli_format", ("sentence1", "sentence2", "gold_label"),
         keyed(("premise", "sentence1"), ("hypothesis", "sentence2")),
         scitail_target, ("accuracy",), BINARY, max_steps=30000),
    Task("paws", "google-research-datasets/paws", "labeled_final", ("sentence1", "sentence2", "label"),
         keyed(*S12), label_target, ("accuracy",), BINARY, splits="official", test_split="test", max_steps=100000),
    Task("mbpp", "google-research-datasets/mbpp", "full", ("text", "code", "test_list", "test_setup_code"),
         mbpp_source, mbpp_target, ("pass@1",), splits="official", test_split="test", max_steps=5000,
         max_new_tokens=384, program=lambda r: {"setup": r["test_setup_code"], "tests": list(r["test_list"])}),
]  # fmt: skip
# Step budgets: the reference's (docs/METHOD.md) where it gives one; ReCoRD and MRQA use its 200k for large QA
# sets, WinoGrande/SciTail its small-task 30k, Yelp/PAWS its large-classification 100k, and MBPP (374
# training problems, ~430 epochs at batch 32) 5k.

TASKS: dict[str, Task] = {t.name: t for t in TASK_LIST}


# ----------------------------------------------------------------------------- BIG-bench (see bigbench.py)
BIGBENCH = "bigbench:"
BIGBENCH_HUB = "tasksource/bigbench"
BIGBENCH_STEPS = 1000  # no reference budget exists; ~10-40 epochs of these tasks' training splits at batch 32


def is_bigbench(name: str | None) -> bool:
    return bool(name) and name.startswith(BIGBENCH)


def parse_name(name: str) -> tuple[str, str | None]:
    """'bigbench:NAME' or 'bigbench:NAME/SUB' -> (NAME, SUB or None); a malformed name is refused."""
    rest = name[len(BIGBENCH) :]
    parts = rest.split("/")
    ok = all(p and p.replace("_", "").replace("-", "").isalnum() for p in parts) and len(parts) <= 2
    if not ok:
        raise ValueError(
            f"task {name!r}: a BIG-bench task is named bigbench:NAME or bigbench:NAME/SUBTASK "
            f"(NAME as its folder in bigbench/benchmark_tasks, e.g. bigbench:navigate)"
        )
    return parts[0], parts[1] if len(parts) > 1 else None


def bigbench_task(name: str) -> Task:
    """The task's entry before its data is read (labels and metric follow from the data)."""
    task, sub = parse_name(name)
    return Task(
        name, BIGBENCH_HUB, task, ("input", "targets"), lambda r: r["input"], lambda r: list(r["targets"]), ("accuracy",),
        splits="pool", train_split="all", validation_split="all", max_steps=BIGBENCH_STEPS, family="bigbench",
        notes=f"BIG-bench task {task}{'/' + sub if sub else ''}",
    )  # fmt: skip


def get_task(name: str) -> Task:
    """A task of the paper, or a BIG-bench task named bigbench:NAME (see bigbench.py); a ValueError
    names the known tasks."""
    if is_bigbench(name):
        return bigbench_task(name)
    if name not in TASKS:
        raise ValueError(
            f"unknown task {name!r}: choose one of {', '.join(TASKS)}, or bigbench:NAME (a BIG-bench task)"
        )
    return TASKS[name]


def find_task(name: str | None) -> Task | None:
    """get_task for a name recorded by a run (None or an unknown name: None)."""
    try:
        return get_task(name) if name else None
    except ValueError:
        return None
