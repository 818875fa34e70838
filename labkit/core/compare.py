"""A/B answers that tell signal from noise.

Variants A and B run interleaved (A B A B ...), so a slow moment of the machine hits both sides.
Per metric we report the median of each side, the ratio B/A of the medians, and a 95% percentile
bootstrap interval of that ratio (both sides resampled independently). When the interval holds 1
the verdict is "within noise" and no winner is named. With few repeats the interval is wide and
coarse: that is the honest answer, and more repeats narrow it. Measured on identical normal
samples, the interval missed 1 in 11% of comparisons at 3 repeats a side, and 3 to 5% at 5 or
7 (tests/test_compare.py keeps that rate in check).

How many trials: a fixed number where ``repeats`` is given; otherwise :func:`compare` runs until
the answer is decisive or its time budget is spent, and says which (``Comparison.stopped``).
Looking at the interval after every pair and stopping at the first that excludes 1 would find a
difference between identical variants far more often than 5% of the time, so it looks only at
:data:`LOOKS` trials a side, and calls a look decisive only when a stricter interval
(:data:`LOOK_CONFIDENCE`) excludes 1: over all looks, a false "decisive" stays under 5%. Its
verdict is given at that level too (``Comparison.confidence``), so it never names a winner that
its looks called not decisive.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from labkit.core._json import jsonable
from labkit.core.errors import BadInput
from labkit.core.runner import OnTick, Options, Planned, check_repeats, checked, trials
from labkit.core.scenario import Metric, Scenario, metric_named
from labkit.core.trial import TrialSet

RESAMPLES = 4000
LOOKS = (5, 10, 20)  # trials a side at which an open-ended comparison looks at its interval
# Each look's interval. 95% split over three looks would be 98.3%, but a bootstrap interval of a
# median of 5 values is narrower than its nominal level: over 300 identical pairs, 98.3% per look
# gave 6% false "decisive" answers, 99.5% gave 3% (tests/test_compare.py keeps it under 5%).
LOOK_CONFIDENCE = 0.995
BUDGET = 120.0  # seconds an open-ended comparison may run, at most (it ends at the look after)


def ratio_ci(
    a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95, resamples: int = RESAMPLES, seed: int = 0
) -> tuple[float, float, float]:
    """``(median(b)/median(a), low, high)`` with a percentile bootstrap interval of the ratio."""
    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a_arr) == 0 or len(b_arr) == 0 or np.median(a_arr) == 0:
        return math.nan, math.nan, math.nan  # no ratio to speak of (0 requests failed on both sides, say)
    ratio = float(np.median(b_arr) / np.median(a_arr))
    if not _resamplable(a_arr, b_arr):
        return ratio, math.nan, math.nan
    rng = np.random.default_rng(seed)
    a_med, b_med = _resampled_medians(a_arr, rng, resamples), _resampled_medians(b_arr, rng, resamples)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (ratio, *_interval(b_med / a_med, confidence))


def paired_ratio_ci(
    a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95, resamples: int = RESAMPLES, seed: int = 0
) -> tuple[float, float, float]:
    """``(median(b_i/a_i), low, high)`` for measurements taken in pairs, back to back.

    When the machine's speed drifts more than the effect (a shared VM), pairing cancels the drift
    that independent medians cannot.
    """
    ratios = np.asarray(b, dtype=float) / np.asarray(a, dtype=float)
    if len(ratios) == 0:
        return math.nan, math.nan, math.nan
    if not _resamplable(ratios):
        return float(np.median(ratios)), math.nan, math.nan
    medians = _resampled_medians(ratios, np.random.default_rng(seed), resamples)
    return (float(np.median(ratios)), *_interval(medians, confidence))


def _resamplable(*samples: np.ndarray) -> bool:
    """One value has no spread to resample: its "interval" would have zero width, a false certainty."""
    return min(len(sample) for sample in samples) >= 2


def _resampled_medians(values: np.ndarray, rng: np.random.Generator, resamples: int) -> np.ndarray:
    """The median of each of ``resamples`` bootstrap samples of ``values`` (drawn with replacement)."""
    return np.median(rng.choice(values, (resamples, len(values))), axis=1)


def _interval(resampled: np.ndarray, confidence: float) -> tuple[float, float]:
    finite = resampled[np.isfinite(resampled)]  # a resample of A whose median is 0 has no ratio
    if len(finite) == 0:
        return math.nan, math.nan
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def answer(a: str, b: str, metric: Metric, ratio: float, low: float, high: float) -> str:
    """The verdict in words, without its numbers: ``"within noise"``, ``"B is better than A on M"``."""
    if math.isnan(ratio):
        return f"no ratio: {a} has no measurement of {metric.name}, or its median is 0"
    if math.isnan(low):
        return "no verdict from one trial a side: repeat 3 or more times"
    if low <= 1.0 <= high:
        return "within noise"
    better = (ratio > 1) == metric.higher_is_better
    return f"{b} is {'better' if better else 'worse'} than {a} on {metric.name}"


def verdict(a: str, b: str, metric: Metric, ratio: float, low: float, high: float, confidence: float = 0.95) -> str:
    """The answer with the ratio and its interval that support it."""
    words = answer(a, b, metric, ratio, low, high)
    if math.isnan(ratio):
        return words
    if math.isnan(low):
        return f"{words} ({b}/{a} = {ratio:.2f}, no interval)"
    return f"{words} ({b}/{a} = {ratio:.2f}, {confidence * 100:g}% CI [{low:.2f}, {high:.2f}])"


@dataclass(frozen=True)
class Comparison:
    """Both sides' trials and the answer for one metric (others: :meth:`for_metric`)."""

    scenario: str
    a: TrialSet
    b: TrialSet
    metric: Metric
    metrics: tuple[Metric, ...] = ()
    stopped: str = ""  # why it ran the trials it ran: fixed, decisive, or the budget spent
    # The interval's level: 95% for a fixed number of trials; an open-ended comparison, which looked
    # at its interval several times, answers at its looks' stricter level, so that its verdict and
    # its "decisive" agree (a 95% verdict after three looks would claim differences too often).
    confidence: float = 0.95

    @property
    def a_median(self) -> float:
        values = self.a.values(self.metric.name)
        return statistics.median(values) if values else math.nan

    @property
    def b_median(self) -> float:
        values = self.b.values(self.metric.name)
        return statistics.median(values) if values else math.nan

    @cached_property
    def interval(self) -> tuple[float, float, float]:
        return ratio_ci(self.a.values(self.metric.name), self.b.values(self.metric.name), confidence=self.confidence)

    @property
    def ratio(self) -> float:
        return self.interval[0]

    @property
    def ci(self) -> tuple[float, float]:
        return self.interval[1:]

    @property
    def verdict(self) -> str:
        return verdict(self.a.variant, self.b.variant, self.metric, *self.interval, confidence=self.confidence)

    @property
    def answer(self) -> str:
        """:attr:`verdict` without its numbers, for prose and for tests."""
        return answer(self.a.variant, self.b.variant, self.metric, *self.interval)

    def for_metric(self, name: str) -> "Comparison":
        return replace(self, metric=metric_named(self.metrics, name, self.scenario))

    def decisive(self) -> bool:
        """Whether the interval (at an open-ended comparison's :data:`LOOK_CONFIDENCE`) leaves 1 out."""
        _, low, high = self.interval
        return not math.isnan(low) and not low <= 1.0 <= high

    def to_dict(self) -> dict[str, Any]:
        ratio, low, high = self.interval
        return {
            "scenario": self.scenario,
            "a": self.a.variant,
            "b": self.b.variant,
            "metric": self.metric.name,
            "unit": self.metric.unit,
            "higher_is_better": self.metric.higher_is_better,
            "repeats": len(self.a.trials),
            "a_median": self.a_median,
            "b_median": self.b_median,
            "ratio": ratio,
            "ci": [low, high],
            "verdict": self.verdict,
            "stopped": self.stopped,
            "confidence": self.confidence,
            "outcomes": {"a": self.a.summary["outcomes"], "b": self.b.summary["outcomes"]},
            "versions": self.a.versions,
            "metrics": [vars(m) for m in self.metrics],
            "sides": {"a": self.a.to_dict(), "b": self.b.to_dict()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Comparison":
        metrics = tuple(Metric(**m) for m in data["metrics"])
        a, b = (TrialSet.from_dict(data["sides"][side]) for side in "ab")
        return cls(data["scenario"], a, b, metric_named(metrics, data["metric"], data["scenario"]), metrics, data["stopped"],
                   data.get("confidence", 0.95))

    @classmethod
    def load(cls, path: str | Path) -> tuple["Comparison", ...]:
        """Every comparison in a file ``compare --json`` (one) or a tour (one per scenario) wrote."""
        data = json.loads(Path(path).read_text())
        return tuple(cls.from_dict(d) for d in (data if isinstance(data, list) else [data]))

    def to_json(self) -> str:
        return json.dumps(jsonable(self.to_dict()), indent=2)

    def to_frame(self) -> pd.DataFrame:
        """Tidy: every trial of both sides, one row per (variant, trial, metric)."""
        return pd.concat([self.a.to_frame(), self.b.to_frame()], ignore_index=True)

    def table(self) -> pd.DataFrame:
        """One row per metric: medians, ratio B/A, its interval and the verdict."""
        rows = []
        for metric in self.metrics:
            c = self.for_metric(metric.name)
            ratio, low, high = c.interval
            rows.append(
                {"metric": metric.name, "unit": metric.unit, self.a.variant: c.a_median, self.b.variant: c.b_median,
                 "ratio B/A": ratio, "ci low": low, "ci high": high, "verdict": c.verdict}
            )
        return pd.DataFrame(rows).set_index("metric")


def compare(
    scenario: str | Scenario,
    a: str,
    b: str,
    *,
    repeats: int | None = None,
    budget: float = BUDGET,
    metric: str | None = None,
    knobs: Mapping[str, Any] | None = None,
    timeout: float | None = None,
    monitor: bool = True,
    on_tick: OnTick | None = None,
    progress: bool = False,
    start: str | None = None,
) -> Comparison:
    """Run A and B interleaved, isolated trials each, and compare them on ``metric``.

    ``repeats`` fixes the trials a side. Without it, the comparison looks at its interval after
    :data:`LOOKS` trials a side and stops at the first decisive look, or at the first look after
    ``budget`` seconds, or when a side has nothing to measure; ``stopped`` says which.
    """
    scen = checked(scenario, [a, b])
    chosen = scen.get_metric(metric)
    values = scen.knob_values(knobs)
    options = Options(timeout, start, monitor, on_tick, progress)
    if repeats is not None:
        check_repeats(repeats)
    if budget <= 0:
        raise BadInput(f"budget must be a positive number of seconds, got {budget:g}")
    result = Comparison(scen.name, *(TrialSet(scen.name, name, values, units=scen.units) for name in (a, b)),
                        chosen, scen.metrics, f"fixed: {repeats} trials a side",
                        0.95 if repeats is not None else LOOK_CONFIDENCE)
    plan = [Planned(name, values, i) for i in range(repeats or LOOKS[-1]) for name in (a, b)]
    began = time.monotonic()
    for planned, trial in trials(scen, plan, options, f"{scen.name} {a} vs {b}"):
        side = "a" if planned.variant == a else "b"
        result = replace(result, **{side: getattr(result, side).adding(trial)})
        if side == "b" and repeats is None and (planned.index + 1) in LOOKS:
            stopped = _stop(result, planned.index + 1, time.monotonic() - began, budget)
            if stopped:
                return replace(result, stopped=stopped)
    return result


def _stop(result: Comparison, n: int, spent: float, budget: float) -> str:
    """Why an open-ended comparison stops at this look (``""``: it goes on)."""
    missing = [side.variant for side in (result.a, result.b) if len(side.values(result.metric.name)) < 2]
    if missing:
        return f"stopped after {n} trials a side: {', '.join(missing)} measured no {result.metric.name} twice"
    if result.decisive():
        return f"decisive after {n} trials a side"
    if n == LOOKS[-1]:
        return f"not decisive after {n} trials a side, the most it runs"
    if spent >= budget:
        return f"not decisive after {n} trials a side, when the {budget:g} s budget was spent"
    return ""


def compare_functions(
    a: Callable[[], Mapping[str, float]],
    b: Callable[[], Mapping[str, float]],
    *,
    metric: str,
    higher_is_better: bool = True,
    unit: str = "",
    repeats: int | None = None,
    timeout: float = 60.0,
    **kwargs: Any,
) -> Comparison:
    """The same engine for your own code: two callables returning ``{metric: value}``.

    Each call runs isolated in a process of its own; functions defined in a notebook travel there
    by value (cloudpickle).
    """
    names = (a.__name__, b.__name__) if a.__name__ != b.__name__ else ("a", "b")
    scen = Scenario("functions", summary="two user functions", metrics=(Metric(metric, unit, higher_is_better),), timeout=timeout)
    scen.variant(names[0])(a)
    scen.variant(names[1])(b)
    return compare(scen, *names, repeats=repeats, metric=metric, **kwargs)

