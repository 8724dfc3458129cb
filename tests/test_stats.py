"""Uncertainty and paired comparisons (data/stats.py) on cases whose answers are known, and the
intervals metrics.score attaches to every score."""

from __future__ import annotations

import math

import numpy as np
import pytest

from adept_dist.data.metrics import compute, score
from adept_dist.data.stats import binomial_two_sided, bootstrap_interval, mcnemar_exact, paired_bootstrap, wilson


def test_wilson_on_known_cases():
    # 0 of 10: the upper end is z^2 / (n + z^2) = 3.8415 / 13.8415 (the closed form at k = 0)
    low, high = wilson(0, 10)
    assert low == 0.0 and high == pytest.approx(100 * 3.841459 / 13.841459, abs=1e-3)
    # 5 of 10: centre 0.5, half-width z * sqrt(.025 + z^2 / 400) / (1 + z^2 / 10) = 0.2634 (worked by hand)
    assert wilson(5, 10) == pytest.approx((23.659, 76.341), abs=1e-2)
    # 10 of 10 mirrors 0 of 10
    assert wilson(10, 10) == pytest.approx((100 - high, 100.0), abs=1e-9)
    # 100 examples at 50%: about +-10 points, the "100 examples give up to +-10 points at 95%"
    low, high = wilson(50, 100)
    assert 9.5 < 50 - low < 10.0 and high - 50 == pytest.approx(50 - low)
    with pytest.raises(ValueError, match="k <= n"):
        wilson(11, 10)


def test_exact_mcnemar_on_known_tables():
    # 1 row only a got right, 9 only b: p = 2 * (C(10,0) + C(10,1)) / 2^10 = 22 / 1024
    assert binomial_two_sided(1, 10) == pytest.approx(22 / 1024)
    a = [1] * 1 + [0] * 9 + [1] * 30 + [0] * 60  # 30 both right and 60 both wrong do not count
    b = [0] * 1 + [1] * 9 + [1] * 30 + [0] * 60
    p, only_a, only_b = mcnemar_exact(a, b)
    assert (only_a, only_b) == (1, 9) and p == pytest.approx(0.021484375)
    # 0 vs 6 discordant rows: 2 / 64; no discordant rows: no evidence at all (p = 1)
    assert mcnemar_exact([0] * 6, [1] * 6)[0] == pytest.approx(2 / 64)
    assert mcnemar_exact([1, 0, 1], [1, 0, 1]) == (1.0, 0, 0)
    # symmetric tables never exceed 1
    assert mcnemar_exact([1, 0], [0, 1])[0] == 1.0
    with pytest.raises(ValueError, match="same rows"):
        mcnemar_exact([1], [1, 0])


def test_bootstrap_interval_is_reproducible_and_about_right():
    rows = np.array([1.0] * 50 + [0.0] * 50)
    interval = bootstrap_interval(lambda idx: 100 * rows[idx].mean(), len(rows))
    assert interval == bootstrap_interval(lambda idx: 100 * rows[idx].mean(), len(rows))  # a fixed seed
    low, high = interval
    # the normal approximation's half-width is 1.96 * sqrt(.25 / 100) = 9.8 points
    assert 39 < low < 42 and 58 < high < 61
    assert bootstrap_interval(lambda idx: 7.0, 5) == (7.0, 7.0)


def test_paired_bootstrap_p_values():
    a, b = np.ones(40), np.zeros(40)
    assert paired_bootstrap(lambda i: a[i].mean(), lambda i: b[i].mean(), 40) == 0.0  # a always ahead
    assert paired_bootstrap(lambda i: a[i].mean(), lambda i: a[i].mean(), 40) == 1.0  # the same scores
    rng = np.random.default_rng(1)
    x = rng.random(200)
    y = x + rng.normal(0, 0.01, 200)  # no real difference
    assert paired_bootstrap(lambda i: x[i].mean(), lambda i: y[i].mean(), 200) > 0.05


def refs_of(*targets):
    return [{"target": t} for t in targets]


def test_every_score_carries_its_interval_and_per_example_scores():
    preds = ["1", "0", "1", "1", "0", "x", "1", "0"]
    refs = refs_of("1", "0", "0", "1", "0", "1", "1", "1")
    out = score(["accuracy", "f1"], preds, refs, labels=("0", "1"))
    assert out.values == compute(["accuracy", "f1"], preds, refs, labels=("0", "1"))
    assert out.rows == {"accuracy": [1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0]}  # f1 is not a mean over rows
    assert out.values["accuracy"] == 62.5
    assert out.intervals["accuracy"] == pytest.approx(list(wilson(5, 8)), abs=1e-4)
    assert out.interval_method == {"accuracy": "wilson", "f1": "bootstrap"}
    low, high = out.intervals["f1"]
    assert low <= out.values["f1"] <= high and 0 <= low < high <= 100
    squad = score(["exact_match", "token_f1"], ["the cat", "a dog sat"],
                  [{"target": "cat", "answers": ["the cat"]}, {"target": "dog", "answers": ["dog"]}])  # fmt: skip
    assert squad.rows["exact_match"] == [1.0, 0.0] and squad.rows["token_f1"][0] == 1.0
    assert squad.interval_method == {"exact_match": "wilson", "token_f1": "bootstrap"}
    assert not math.isnan(squad.intervals["token_f1"][0])
