"""Exact rank tests of a ratio B/A, each with the interval that matches it.

What a verdict must promise: run the same thing on both sides (A/A) and it names a winner at most
5% of the time at 95%, at every number of trials and under the noise a shared machine has: skewed,
heavy-tailed, with outliers and with a slow drift across the run. A percentile bootstrap does not:
the bootstrapped median of 3 values lands on the sample's minimum or maximum in its tails, so its
"95% interval" at 3 a side is [min B / max A, max B / min A], and it excludes 1 whenever every B
beat every A, 2 / C(6, 3) = 10% of the time with no difference at all.

The method, and why:

* **Log values.** A ratio B/A is a difference of logs, and timings are skewed (a slow run is
  slower by a factor, not by an amount), so logs make the two sides' spreads alike.
* **Rank tests with exact null distributions** (no normality assumed, no resampling, no seed):
  the false-positive rate is known in advance, for every n, whatever the shape of the noise.
* **Paired where the pairs can answer.** :func:`~labkit.core.compare.compare` runs trials in
  pairs, back to back, and flips a coin for which side goes first in each pair. A machine that
  slows down during the run slows both members of a pair alike; and because of the coin, when A
  and B are the same, each pair's log ratio is as likely to be positive as negative, whatever the
  noise or the drift. So the **Wilcoxon signed-rank test of the pairs' log ratios** is exact by
  design, drift included, and it is the test used whenever there are enough pairs for it to reach
  the level: 6 at 95% (5 pairs have only 32 equally likely sign patterns: the most extreme has
  p = 2/32 = 6%). Its interval is the matching one: order statistics of the Walsh averages
  (the pairwise means of the log ratios), around their median (the Hodges-Lehmann estimate).
* **Unpaired below that.** With 4 or 5 a side the **Wilcoxon rank-sum (Mann-Whitney) test** of log
  values can already reach 95% (4 against 4: p = 2/70 = 2.9% when every B beats every A). It is
  exact when the noise is the same throughout the run and conservative under drift (the coin
  spreads the drift over both sides). Its interval: order statistics of all the log differences
  B_j - A_i, around their median.
* **Too few is said.** 3 against 3 cannot reach 95% by any rank test (the best p is 2/20 = 10%),
  so the answer is "too few trials to tell", with the number of trials a side that could tell.
* **The ratio reported** is the estimate that belongs to the interval: exp of the Hodges-Lehmann
  estimate of the log ratio (the typical ratio, close to median B / median A, but not equal to it).

What pairing costs and buys (``benchmarks/ab_calibration.py``, a 1.2x difference at 10% noise):
without drift, 6 pairs find it in 54% of runs, where 5 a side unpaired found it in 59% (a paired
test needs more trials to reach the same level); with the machine slowing down 2x across the run,
5 a side unpaired find it in 1% of runs and 6 pairs in 45%, 10 pairs in 92%.

Others' choices, read before choosing: pyperf's ``compare_to`` calls a change significant by a
two-sample t-test at 95% (normal noise assumed, each run on its own, and one value a side counted as
significant); criterion (Rust) bootstraps the relative change of the mean and adds a noise threshold
below which a change is called noise. Both suit many runs of a quick benchmark; labkit's trials are
few, slow, skewed and drift, which is what exact rank tests on logs, paired by design, are for.

Intervals are order statistics, so a verdict ("the interval leaves 1 out") and its test always
agree. Ties (a metric that is a whole number, say) make them cautious: in the simulation's
whole-number rows a winner was named in at most 3.5% of A/A runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping, Sequence

import numpy as np

PAIRED, UNPAIRED, TOO_FEW, NO_RATIO = "paired", "unpaired", "too few", "no ratio"
_SLACK = 1e-12  # a tail probability equal to the allowed one, up to rounding, is allowed


@lru_cache(maxsize=None)
def signed_rank_cdf(n: int) -> np.ndarray:
    """``P(W+ <= w)`` for w = 0 .. n(n+1)/2: the signed-rank statistic of n values when every sign is a coin."""
    counts = np.array([1], dtype=object)  # exact integers: 2**n patterns
    for rank in range(1, n + 1):
        grown = np.zeros(len(counts) + rank, dtype=object)
        grown[: len(counts)] += counts
        grown[rank:] += counts
        counts = grown
    return (np.cumsum(counts) / 2**n).astype(float)


@lru_cache(maxsize=None)
def rank_sum_cdf(m: int, n: int) -> np.ndarray:
    """``P(U <= u)`` for u = 0 .. mn: the Mann-Whitney statistic of m against n exchangeable values.

    The counts are the coefficients of the Gaussian binomial [m+n choose m]: a product of
    ``(1 - q**(n+i)) / (1 - q**i)`` for i = 1..m, each factor exact in integers.
    """
    m, n = sorted((m, n))
    counts = np.zeros(m * n + 1, dtype=object)
    counts[0] = 1
    for i in range(1, m + 1):
        shift = n + i
        counts[shift:] = counts[shift:] - counts[:-shift].copy()  # times (1 - q**(n+i))
        for start in range(i):  # divided by (1 - q**i): a running sum with stride i
            counts[start::i] = np.cumsum(counts[start::i])
    return (np.cumsum(counts) / math.comb(m + n, m)).astype(float)


def depth(cdf: np.ndarray, confidence: float) -> int:
    """How many order statistics the interval leaves out at each end (0: this n cannot reach the level).

    The largest c with ``P(stat <= c) <= (1 - confidence) / 2`` gives depth c + 1: the interval runs
    from the (c+1)-th smallest to the (c+1)-th largest, and excludes 0 exactly when the test rejects.
    """
    allowed = (1 - confidence) / 2 + _SLACK
    return int(np.searchsorted(cdf, allowed, side="right"))


def paired_depth(pairs: int, confidence: float) -> int:
    return depth(signed_rank_cdf(pairs), confidence) if pairs > 0 else 0


def unpaired_depth(m: int, n: int, confidence: float) -> int:
    return depth(rank_sum_cdf(m, n), confidence) if m > 0 and n > 0 else 0


def choose(pairs: int, n_a: int, n_b: int, confidence: float) -> tuple[str, int]:
    """``(method, depth)``: paired when the complete pairs can reach the level, else unpaired when the
    sides can, else too few. Decided by counts alone, never by the values, so the choice cannot
    favour a difference."""
    if k := paired_depth(pairs, confidence):
        return PAIRED, k
    if k := unpaired_depth(n_a, n_b, confidence):
        return UNPAIRED, k
    return TOO_FEW, 0


def fewest(confidence: float) -> tuple[int, int]:
    """``(unpaired, paired)``: the fewest trials a side with which each test can reach the level."""
    unpaired = next(n for n in range(1, 1000) if unpaired_depth(n, n, confidence))
    paired = next(n for n in range(1, 1000) if paired_depth(n, confidence))
    return unpaired, paired


def size(method: str, n: int, confidence: float) -> float:
    """The exact false-positive rate of ``method`` with n a side at this level (for exchangeable noise;
    for the paired test under any noise that gives no ties, thanks to the coin)."""
    if method == PAIRED and (k := paired_depth(n, confidence)):
        return 2 * float(signed_rank_cdf(n)[k - 1])
    if method == UNPAIRED and (k := unpaired_depth(n, n, confidence)):
        return 2 * float(rank_sum_cdf(n, n)[k - 1])
    return 0.0  # too few: it never names a winner


def walsh_bounds(d: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(estimate, low, high)`` of the centre of each row of paired log ratios ``d`` (shape ``(..., n)``).

    The Walsh averages (d_i + d_j) / 2, i <= j, sorted: their median is the Hodges-Lehmann estimate, and
    the k-th smallest and k-th largest bound the signed-rank test's interval. Rows at once, so that
    ``benchmarks/ab_calibration.py`` simulates this very code.
    """
    i, j = np.triu_indices(d.shape[-1])
    walsh = np.sort((d[..., i] + d[..., j]) / 2, axis=-1)
    return np.median(walsh, axis=-1), walsh[..., k - 1], walsh[..., walsh.shape[-1] - k]


def shift_bounds(x: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(estimate, low, high)`` of the shift from each row of ``x`` to the same row of ``y`` (log values).

    Every difference y_j - x_i, sorted: their median is the Hodges-Lehmann estimate, and the k-th
    smallest and k-th largest bound the rank-sum test's interval.
    """
    diffs = np.sort((y[..., None, :] - x[..., :, None]).reshape(*x.shape[:-1], -1), axis=-1)
    return np.median(diffs, axis=-1), diffs[..., k - 1], diffs[..., diffs.shape[-1] - k]


@dataclass(frozen=True)
class RatioTest:
    """The ratio B/A, its interval at ``confidence`` (NaN when none can be had) and how it was found."""

    ratio: float
    low: float
    high: float
    method: str  # PAIRED, UNPAIRED, TOO_FEW or NO_RATIO
    confidence: float
    n_a: int  # values measured on each side
    n_b: int
    pairs: int  # pairs with a value on both sides
    need: int = 0  # TOO_FEW: the trials a side from which this level can be reached

    @property
    def decisive(self) -> bool:
        """Whether the interval leaves 1 out: the test found a difference at its level."""
        return self.method in (PAIRED, UNPAIRED) and not self.low <= 1.0 <= self.high

    def describe(self) -> str:
        """The method in words, for a reader who wants to know what the interval is."""
        if self.method == PAIRED:
            return (f"paired: Wilcoxon signed-rank test of the {self.pairs} pairs' log ratios, interval from "
                    f"their Walsh averages")
        if self.method == UNPAIRED:
            return (f"unpaired: Wilcoxon rank-sum test of log values ({self.n_a} and {self.n_b}: too few pairs "
                    f"for the paired test at this level)")
        if self.method == TOO_FEW:
            return f"no test: {self.n_a} and {self.n_b} values cannot reach {pct(self.confidence)}"
        return "no test: no ratio"


def pct(confidence: float) -> str:
    """``0.95`` -> ``"95%"``, ``0.98333`` -> ``"98.3%"``."""
    return f"{confidence * 100:.3g}%"


def ratio_test(a: Mapping[int, float], b: Mapping[int, float], *, confidence: float = 0.95) -> RatioTest:
    """Compare the values of two sides, keyed by pair (the index of the trial in its side).

    Paired when the pairs with both values can reach the level, else unpaired when the sides can,
    else too few (with a point estimate, no interval). No ratio when a side has no value, or a value
    that is not positive (a ratio of logs needs positive numbers).
    """
    common = sorted(set(a) & set(b))
    n_a, n_b, pairs = len(a), len(b), len(common)
    values = [*a.values(), *b.values()]
    if not n_a or not n_b or not all(math.isfinite(v) and v > 0 for v in values):
        return RatioTest(math.nan, math.nan, math.nan, NO_RATIO, confidence, n_a, n_b, pairs)
    x, y = np.log(np.array(list(a.values()), float)), np.log(np.array(list(b.values()), float))
    method, k = choose(pairs, n_a, n_b, confidence)
    if method == PAIRED:
        d = np.log(np.array([b[i] for i in common], float)) - np.log(np.array([a[i] for i in common], float))
        return RatioTest(*_exp(*walsh_bounds(d, k)), PAIRED, confidence, n_a, n_b, pairs)
    if method == UNPAIRED:
        return RatioTest(*_exp(*shift_bounds(x, y, k)), UNPAIRED, confidence, n_a, n_b, pairs)
    centre = float(np.median(y[None, :] - x[:, None]))
    return RatioTest(math.exp(centre), math.nan, math.nan, TOO_FEW, confidence, n_a, n_b, pairs,
                     need=fewest(confidence)[0])


def _exp(*logs: float) -> tuple[float, ...]:
    return tuple(float(np.exp(v)) for v in logs)


def ratio_ci(a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95) -> tuple[float, float, float]:
    """``(ratio, low, high)`` of B/A for two independent samples: the rank-sum test's interval on log
    values, and the median of all ratios b_j / a_i. NaN bounds where the sizes cannot reach the level."""
    return _triple(ratio_test(dict(enumerate(a)), {len(a) + i: v for i, v in enumerate(b)}, confidence=confidence))


def paired_ratio_ci(a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95) -> tuple[float, float, float]:
    """``(ratio, low, high)`` of B/A for measurements taken in pairs, back to back (a[i] with b[i]).

    When the machine's speed drifts more than the effect (a shared VM), pairing cancels the drift
    that independent samples cannot. The signed-rank test's interval: NaN bounds with fewer pairs than
    the level needs (6 at 95%). Pairs are only exact when the order within each pair was a coin flip
    (or alternated); otherwise a steady drift shows as a small difference.
    """
    if len(a) != len(b):
        raise ValueError(f"pairs need as many values on each side, got {len(a)} and {len(b)}")
    values = np.asarray([*a, *b], float)
    if not len(a) or not (np.isfinite(values) & (values > 0)).all():
        return math.nan, math.nan, math.nan
    d = np.log(np.asarray(b, float)) - np.log(np.asarray(a, float))
    k = paired_depth(len(d), confidence)
    centre, low, high = walsh_bounds(d, max(k, 1))
    return (*_exp(centre, low, high),) if k else (math.exp(float(centre)), math.nan, math.nan)


def _triple(test: RatioTest) -> tuple[float, float, float]:
    return test.ratio, test.low, test.high
