"""The uncertainty of a score and the comparison of two methods on the same rows (plain Python and
numpy; every score a percentage, as in data/metrics.py).

- `wilson`: the 95% Wilson score interval of a proportion (k right of n). Used for every metric
  that is a share of examples scored 0 or 1 (accuracy, exact match, pass@1): unlike the normal
  approximation it stays inside [0, 100] and is not empty at 0 or n.
- `bootstrap_interval`: the 95% percentile bootstrap over examples (examples drawn with
  replacement, the metric recomputed on each draw; `ROUNDS` draws from a fixed seed, so the same
  predictions always give the same interval). Used for F1, MCC, correlations, token F1.
- `mcnemar_exact`: the exact (binomial) two-sided McNemar test of two methods' 0/1 scores on the
  same rows: only the rows where they disagree count.
- `paired_bootstrap`: a two-sided paired bootstrap p-value for any metric: the same resampled rows
  scored for both methods, p = twice the smaller share of draws on either side of 0 (at most 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
ROUNDS = 1000  # bootstrap draws: the interval's ends move by well under a point between seeds of the draws
SEED = 0


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of k successes in n trials, in percent."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"wilson needs 0 <= k <= n and n > 0, got k={k}, n={n}")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return 100.0 * max(0.0, centre - half), 100.0 * min(1.0, centre + half)


def draws(n: int, rounds: int = ROUNDS, seed: int = SEED) -> np.ndarray:
    """(rounds, n) row indices drawn with replacement, the same for the same n, rounds and seed."""
    return np.random.default_rng(seed).integers(0, n, size=(rounds, n))


def bootstrap_interval(score: Callable[[np.ndarray], float], n: int, rounds: int = ROUNDS,
                       seed: int = SEED) -> tuple[float, float]:  # fmt: skip
    """The 95% percentile interval of score(rows) over `rounds` draws of n rows with replacement."""
    if n <= 0:
        raise ValueError("a bootstrap needs at least one example")
    values = np.array([score(rows) for rows in draws(n, rounds, seed)], dtype=float)
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def mcnemar_exact(a: Sequence[float], b: Sequence[float]) -> tuple[float, int, int]:
    """(two-sided p, rows only a got right, rows only b got right) for 0/1 scores on the same rows."""
    if len(a) != len(b):
        raise ValueError(f"paired scores need the same rows: {len(a)} and {len(b)}")
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    return binomial_two_sided(min(only_a, only_b), only_a + only_b), only_a, only_b


def binomial_two_sided(k: int, n: int) -> float:
    """P(X <= k) + P(X >= n - k) for X ~ Binomial(n, 1/2), k <= n / 2: the exact McNemar p-value."""
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def paired_bootstrap(score_a: Callable[[np.ndarray], float], score_b: Callable[[np.ndarray], float], n: int,
                     rounds: int = ROUNDS, seed: int = SEED) -> float:  # fmt: skip
    """Two-sided p-value of "a and b score the same" from the same resampled rows scored by both."""
    deltas = np.array([score_a(rows) - score_b(rows) for rows in draws(n, rounds, seed)], dtype=float)
    below, above = float(np.mean(deltas <= 0)), float(np.mean(deltas >= 0))
    return min(1.0, 2.0 * min(below, above))
