"""Metrics of the ADePT tasks; every expected number is worked out by hand in the comment beside it."""

from __future__ import annotations

import math
import time

import pytest
from sklearn.metrics import f1_score

from adept_dist.data import metrics
from adept_dist.data.metrics import MetricError, compute, normalize_answer, parse_float


def refs_of(*targets: str, **extra) -> list[dict]:
    return [{"target": t, **extra} for t in targets]


# ------------------------------------------------------------------------------------------ accuracy


def test_accuracy_percent_and_strip():
    # examples 0, 1, 3 right (" 1 " is stripped to "1"), example 2 wrong: 3 of 4 right -> 75.0
    out = compute(["accuracy"], [" 1 ", "0", "1", "0"], refs_of("1", "0", "0", "0"), labels=("0", "1"))
    assert out == {"accuracy": 75.0}
    assert type(out["accuracy"]) is float


def test_compute_keeps_name_order_and_returns_floats():
    out = compute(["mcc", "accuracy"], ["1", "0"], refs_of("1", "0"), labels=("0", "1"))
    assert list(out) == ["mcc", "accuracy"]
    # both right: accuracy 2 of 2 -> 100.0; MCC with tp=1, tn=1, fp=fn=0 -> (1*1 - 0)/sqrt(1*1*1*1) = 1 -> 100.0
    assert out == {"mcc": 100.0, "accuracy": 100.0}
    assert all(type(v) is float for v in out.values())


# ---------------------------------------------------------------------------------------------- f1


def test_f1_binary_of_positive_label():
    # targets 1 1 1 0 0, preds 1 1 0 1 0: tp=2, fn=1, fp=1 -> precision 2/3, recall 2/3, F1 = 2/3 -> 66.67
    out = compute(["f1"], ["1", "1", "0", "1", "0"], refs_of("1", "1", "1", "0", "0"), labels=("0", "1"))
    assert out["f1"] == pytest.approx(200 / 3)


def test_f1_counts_invalid_prediction_as_wrong():
    targets = ["1", "1", "0", "0", "1"]
    preds = ["1", "0", "yes", "0", ""]
    # "yes" (target 0) becomes "1" -> a false positive; "" (target 1) becomes "0" -> a false negative.
    # tp=1 (ex 0), fp=1 (ex 2), fn=2 (ex 1, 4) -> precision 1/2, recall 1/3, F1 = 2*(1/6)/(5/6) = 2/5 -> 40.0
    out = compute(["f1"], preds, refs_of(*targets), labels=("0", "1"))
    assert out["f1"] == pytest.approx(40.0)
    # Naive sklearn on the raw strings: binary F1 refuses the 4 classes, and scoring only label "1" lets "yes" on a
    # 0 target go unpunished: tp=1, fp=0, fn=2 -> precision 1, recall 1/3, F1 = 2*(1/3)/(4/3) = 1/2 -> 50.0.
    with pytest.raises(ValueError):
        f1_score(targets, preds, pos_label="1")
    naive = 100 * f1_score(targets, preds, labels=["1"], average="micro")
    assert naive == pytest.approx(50.0)
    assert out["f1"] != pytest.approx(naive)


def test_f1_defaults_to_binary_labels_and_no_positives_is_zero():
    # labels=None -> ("0", "1"); no "1" predicted or true: tp=fp=fn=0, F1 undefined -> zero_division 0.0
    assert compute(["f1"], ["0", "0"], refs_of("0", "0")) == {"f1": 0.0}


def test_f1_rejects_a_target_outside_the_labels():
    with pytest.raises(MetricError, match="not among the labels"):
        compute(["f1"], ["1"], refs_of("2"), labels=("0", "1"))


# ----------------------------------------------------------------------------------------- macro_f1

CB = ("entailment", "contradiction", "neutral")


def test_macro_f1_three_classes_with_invalid_prediction():
    e, c, n = CB
    targets = [e, e, e, c, c, n]
    preds = [e, e, c, c, "bogus", e]
    # entailment:    tp=2 (ex 0,1), fp=1 (ex 5), fn=1 (ex 2) -> P 2/3, R 2/3, F1 2/3
    # contradiction: tp=1 (ex 3),   fp=1 (ex 2), fn=1 (ex 4, "bogus" never matches) -> P 1/2, R 1/2, F1 1/2
    # neutral:       tp=0, fp=0, fn=1 (ex 5) -> F1 0 (zero_division=0)
    # macro = (2/3 + 1/2 + 0) / 3 = 7/18 -> 38.89   (dropping ex 4 would give 4/9 -> 44.44; a 4th "bogus"
    # class in the average would give 7/24 -> 29.17)
    out = compute(["macro_f1"], preds, refs_of(*targets), labels=CB)
    assert out["macro_f1"] == pytest.approx(100 * 7 / 18)


def test_macro_f1_needs_labels():
    with pytest.raises(MetricError, match="labels"):
        compute(["macro_f1"], ["a"], refs_of("a"), labels=None)


# ---------------------------------------------------------------------------------------------- mcc


def test_mcc_binary():
    # targets 1 1 1 0 0 0, preds 1 1 0 0 0 1
    # confusion: tp=2, fn=1, tn=2, fp=1
    # MCC = (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (2*2 - 1*1) / sqrt(3*3*3*3) = 3/9 = 1/3 -> 33.33
    out = compute(["mcc"], ["1", "1", "0", "0", "0", "1"], refs_of("1", "1", "1", "0", "0", "0"), labels=("0", "1"))
    assert out["mcc"] == pytest.approx(100 / 3)


def test_mcc_invalid_prediction_is_an_extra_class():
    # targets 1 1 0 0, preds 1 x 0 0; multi-class MCC = (c*s - sum_k p_k t_k) / sqrt((s^2 - sum p_k^2)(s^2 - sum t_k^2))
    # s=4 samples, c=3 correct; true counts t: 1->2, 0->2, x->0; predicted counts p: 1->1, x->1, 0->2
    # sum p_k t_k = 1*2 + 2*2 + 1*0 = 6; s^2 - sum p^2 = 16 - (1+1+4) = 10; s^2 - sum t^2 = 16 - 8 = 8
    # MCC = (12 - 6) / sqrt(10*8) = 6/sqrt(80) = 0.67082 -> 67.08   (reading "x" as "0" would give 2/sqrt(12) -> 57.74)
    out = compute(["mcc"], ["1", "x", "0", "0"], refs_of("1", "1", "0", "0"), labels=("0", "1"))
    assert out["mcc"] == pytest.approx(100 * 6 / math.sqrt(80))


def test_mcc_constant_prediction_is_zero():
    # all preds "1": tn=fn=0, so the denominator is 0 -> undefined -> 0.0
    assert compute(["mcc"], ["1", "1", "1"], refs_of("1", "0", "1"))["mcc"] == 0.0


# -------------------------------------------------------------------------------------- regression


def test_parse_float_minus_one_rule():
    assert parse_float("3.5") == 3.5
    assert parse_float(" 2 ") == 2.0
    for bad in ["abc", "", "nan", "inf", "-inf", "1.2.3"]:
        assert parse_float(bad) == -1.0, bad


def test_pearson_by_hand():
    # x = 1 2 3 (mean 2, deviations -1 0 1), y = 1 2 4 (mean 7/3, deviations -4/3 -1/3 5/3)
    # sum dx*dy = 4/3 + 0 + 5/3 = 3; sum dx^2 = 2; sum dy^2 = (16+1+25)/9 = 14/3
    # r = 3 / sqrt(2 * 14/3) = 3 / sqrt(28/3) = sqrt(27/28) = 0.98198 -> 98.20
    out = compute(["pearson"], ["1", "2", "3"], refs_of("1", "2", "4"))
    assert out["pearson"] == pytest.approx(100 * math.sqrt(27 / 28))


def test_pearson_unparsable_prediction_is_minus_one():
    # preds 3, 2, "n/a" -> x = 3 2 -1 (mean 4/3, deviations 5/3 2/3 -7/3); y = 1 2 3 (deviations -1 0 1)
    # sum dx*dy = -5/3 + 0 - 7/3 = -4; sum dx^2 = (25+4+49)/9 = 26/3; sum dy^2 = 2
    # r = -4 / sqrt(52/3) = -sqrt(12/13) = -0.96077 -> -96.08   (x=0 instead of -1 would give -0.98198)
    out = compute(["pearson"], ["3", "2", "n/a"], refs_of("1", "2", "3"))
    assert out["pearson"] == pytest.approx(-100 * math.sqrt(12 / 13))


def test_spearman_uses_ranks():
    # x = 1 2 3 100 -> ranks 1 2 3 4; y = 1 3 2 4 -> ranks 1 3 2 4; d = 0 -1 1 0, sum d^2 = 2
    # rho = 1 - 6*sum d^2 / (n(n^2-1)) = 1 - 12/60 = 0.8 -> 80.0 (Pearson of the raw values is not 0.8: the 100 is far off)
    out = compute(["spearman", "pearson"], ["1", "2", "3", "100"], refs_of("1", "3", "2", "4"))
    assert out["spearman"] == pytest.approx(80.0)
    assert out["pearson"] != pytest.approx(80.0)


def test_spearman_unparsable_prediction_is_minus_one():
    # preds -0.5, "n/a", 3 -> x = -0.5 -1 3 -> ranks 2 1 3; y = 1 2 3 -> ranks 1 2 3; d = 1 -1 0, sum d^2 = 2
    # rho = 1 - 6*2 / (3*8) = 0.5 -> 50.0   (reading "n/a" as 0 would rank it 2nd -> rho 1.0)
    out = compute(["spearman"], ["-0.5", "n/a", "3"], refs_of("1", "2", "3"))
    assert out["spearman"] == pytest.approx(50.0)


@pytest.mark.parametrize(
    ("preds", "targets"),
    [
        (["2", "2", "2"], ["1", "2", "3"]),  # constant predictions
        (["x", "y", "z"], ["1", "2", "3"]),  # all unparsable -> all -1.0 -> constant
        (["1", "2", "3"], ["4", "4", "4"]),  # constant targets
        (["1"], ["2"]),  # a single example
    ],
)
def test_undefined_correlation_is_zero(preds, targets):
    out = compute(["pearson", "spearman"], preds, refs_of(*targets))
    assert out == {"pearson": 0.0, "spearman": 0.0}


def test_regression_target_must_be_a_number():
    with pytest.raises(MetricError, match="not a finite number"):
        compute(["pearson"], ["1", "2"], refs_of("1", "high"))


# --------------------------------------------------------------------------------------- MultiRC


def multirc() -> tuple[list[str], list[dict]]:
    # two questions, interleaved: q1 = examples 0, 2, 4; q2 = examples 1, 3
    targets = ["1", "0", "0", "1", "1"]
    groups = ["q1", "q2", "q1", "q2", "q1"]
    preds = ["1", "0", "0", "0", "1"]  # q1 all right; q2 misses example 3
    return preds, [{"target": t, "group": g} for t, g in zip(targets, groups)]


def test_em_per_question():
    preds, refs = multirc()
    # q1 fully right, q2 not: 1 of 2 questions -> 50.0 (per example it would be 4/5 -> 80.0; grouping contiguous
    # runs instead of ids would make 5 groups, 4 right -> 80.0)
    assert compute(["em"], preds, refs, labels=("0", "1")) == {"em": 50.0}


def test_f1a_over_all_answer_options():
    preds, refs = multirc()
    # tp=2 (ex 0, 4), fp=0, fn=1 (ex 3) -> precision 1, recall 2/3, F1 = 2*(2/3)/(5/3) = 4/5 -> 80.0
    assert compute(["f1a"], preds, refs, labels=("0", "1"))["f1a"] == pytest.approx(80.0)


def test_f1a_invalid_prediction_counts_wrong():
    preds, refs = multirc()
    preds[1] = "maybe"  # target 0 -> becomes "1", a false positive; it also breaks q2, which was wrong anyway
    # tp=2, fp=1, fn=1 -> precision 2/3, recall 2/3, F1 = 2/3 -> 66.67; em unchanged at 1 of 2 -> 50.0
    out = compute(["f1a", "em"], preds, refs, labels=("0", "1"))
    assert out["f1a"] == pytest.approx(200 / 3)
    assert out["em"] == 50.0


def test_em_without_group_is_an_error():
    with pytest.raises(MetricError, match="group"):
        compute(["em"], ["1", "0"], [{"target": "1", "group": "q1"}, {"target": "0"}])


# ------------------------------------------------------------------------------------------ SQuAD


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("The Cat!", "cat"),  # lowercase, punctuation and the article go
        ("an apple a day", "apple day"),  # articles are dropped ...
        ("Theatre and another", "theatre and another"),  # ... only as whole words
        ("  Hello,\n  World. ", "hello world"),  # whitespace collapses
        ("U.S.A.", "usa"),  # punctuation is removed, not replaced by a space
        ("rock-n-roll (live)", "rocknroll live"),
        ("the", ""),
    ],
)
def test_normalize_answer(text, normalized):
    assert normalize_answer(text) == normalized


def test_squad_max_over_gold_answers():
    preds = ["The Eiffel Tower!", "President Obama"]
    refs = [
        {"target": "Eiffel Tower", "answers": ["Eiffel Tower", "the tower"]},
        {"target": "Obama", "answers": ["Obama", "President Barack Obama"]},
    ]
    # ex 0: normalises to "eiffel tower" == gold 1 -> EM 1, F1 1
    # ex 1: EM 0 against both; F1 vs "obama": common 1, P 1/2, R 1/1 -> 2/3;
    #       vs "president barack obama": common 2, P 2/2, R 2/3 -> 2*(2/3)/(5/3) = 4/5; max = 4/5
    # exact_match = 1 of 2 -> 50.0; token_f1 = (1 + 4/5) / 2 = 0.9 -> 90.0 (first answer only would give 83.33)
    out = compute(["exact_match", "token_f1"], preds, refs)
    assert out["exact_match"] == 50.0
    assert out["token_f1"] == pytest.approx(90.0)


def test_token_f1_partial_overlap_counts_tokens():
    # pred "the cat the cat sat" -> [cat, cat, sat]; gold "cat sat on the mat" -> [cat, sat, on, mat]
    # Counter overlap: cat min(2,1)=1, sat 1 -> 2 common; P = 2/3, R = 2/4 -> F1 = 2*(1/3)/(7/6) = 4/7 -> 57.14
    # (counting every predicted token found in gold would give P = 3/3 and F1 = 2/3)
    out = compute(["token_f1", "exact_match"], ["the cat the cat sat"], refs_of("cat sat on the mat"))
    assert out["token_f1"] == pytest.approx(100 * 4 / 7)
    assert out["exact_match"] == 0.0


def test_squad_answers_default_to_target_and_empty_edges():
    # no "answers": the target is the gold answer; "PARIS." normalises to "paris" -> EM 1, F1 1 -> 100.0
    assert compute(["exact_match", "token_f1"], ["PARIS."], refs_of("Paris")) == {
        "exact_match": 100.0,
        "token_f1": 100.0,
    }
    # "the" and "a!" both normalise to no tokens -> F1 1 (and EM 1) -> 100.0
    assert compute(["token_f1", "exact_match"], ["the"], refs_of("a!")) == {"token_f1": 100.0, "exact_match": 100.0}
    # only one side empty -> 0.0
    assert compute(["token_f1"], ["an"], refs_of("cat")) == {"token_f1": 0.0}
    assert compute(["token_f1"], ["cat"], refs_of("the")) == {"token_f1": 0.0}


# ------------------------------------------------------------------------------------------- MBPP

PROGRAM = {"setup": "import math", "tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]}


def test_pass_at_1_runs_programs(monkeypatch):
    monkeypatch.setattr(metrics, "EXEC_TIMEOUT_S", 2)
    preds = [
        "def add(a, b):\n    return a + b",  # passes both assertions
        "def add(a, b):\n    return a - b",  # add(1, 2) == -1 -> AssertionError
        "def add(a, b) return a + b",  # SyntaxError
        "def add(a, b):\n    while True:\n        pass",  # never returns -> stopped by the 2 s CPU limit or timeout
        "import time\ntime.sleep(60)",  # uses no CPU -> only the 2 s wall timeout stops it
    ]
    refs = [{"target": "", "program": PROGRAM} for _ in preds]
    start = time.monotonic()
    out = compute(["pass@1"], preds, refs, allow_code_execution=True)
    # 1 of 5 programs exits 0 -> 20.0
    assert out == {"pass@1": 20.0}
    assert time.monotonic() - start < 8  # the loop and the sleep were stopped, not left to run


def test_pass_at_1_isolation(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ADEPT_SECRET", "x")
    check = "\n".join(
        [
            "import os, resource, sys",
            f"assert os.getcwd() != {str(tmp_path)!r}",
            "assert sorted(os.listdir('.')) == ['program.py']",
            "assert 'ADEPT_SECRET' not in os.environ and 'HOME' not in os.environ",
            "assert os.environ['PYTHONHASHSEED'] == '0' and os.environ['PATH'] == '/usr/bin:/bin'",
            "assert sys.flags.isolated == 1",
            # RLIM_INFINITY reads as -1, hence the lower bounds
            "assert 0 < resource.getrlimit(resource.RLIMIT_AS)[0] <= 2 * 1024**3",
            "assert 0 < resource.getrlimit(resource.RLIMIT_FSIZE)[0] <= 10 * 1024**2",
            "assert resource.getrlimit(resource.RLIMIT_CORE)[0] == 0",
            "assert 0 < resource.getrlimit(resource.RLIMIT_CPU)[0] <= 10",
        ]
    )
    refs = [{"target": "", "program": {"setup": "", "tests": [check]}}]
    assert compute(["pass@1"], ["pass"], refs, allow_code_execution=True) == {"pass@1": 100.0}


def test_pass_at_1_refused_without_permission(monkeypatch):
    ran = []
    monkeypatch.setattr(metrics, "_run_program", lambda *a: ran.append(a) or True)
    refs = [{"target": "", "program": PROGRAM}]
    for names in (["pass@1"], ["accuracy", "pass@1"]):
        with pytest.raises(MetricError, match="allow_code_execution"):
            compute(names, ["def add(a, b):\n    return a + b"], refs)
    assert ran == []


def test_pass_at_1_needs_a_program():
    with pytest.raises(MetricError, match="program"):
        compute(["pass@1"], ["pass"], refs_of(""), allow_code_execution=True)


# ----------------------------------------------------------------------------------------- errors


def test_unknown_metric_lists_known_names():
    with pytest.raises(MetricError, match="unknown metric") as err:
        compute(["accuracy", "bleu"], ["1"], refs_of("1"))
    assert "'bleu'" in str(err.value)
    for name in metrics.METRICS:
        assert repr(name) in str(err.value)


def test_length_mismatch_and_empty_inputs():
    with pytest.raises(MetricError, match="2 predictions but 1 references"):
        compute(["accuracy"], ["1", "0"], refs_of("1"))
    with pytest.raises(MetricError, match="no predictions"):
        compute(["accuracy"], [], [])


def test_ref_without_target_is_an_error():
    with pytest.raises(MetricError, match="target"):
        compute(["accuracy"], ["1"], [{"answers": ["1"]}])
