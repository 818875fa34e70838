"""A/B answers that tell signal from noise.

Variants A and B run interleaved (A B A B ...), so a slow moment of the machine hits both sides.
Per metric we report the median of each side, the ratio B/A of the medians, and a 95% percentile
bootstrap interval of that ratio (both sides resampled independently). When the interval holds 1
the verdict is "within noise" and no winner is named. With few repeats the interval is wide and
coarse: that is the honest answer, and more repeats narrow it. Measured on identical normal
samples, the interval missed 1 in 11% of comparisons at 3 repeats a side, and 3 to 5% at 5 or
7: hence 5 repeats by default (tests/test_compare.py keeps that rate in check).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from . import scenario as registry
from ._json import jsonable
from .scenario import Metric, Scenario, metric_named
from .trial import OnTick, TrialSet, _progress, check_repeats_timeout, run_trial

RESAMPLES = 4000


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


def verdict(a: str, b: str, metric: Metric, ratio: float, low: float, high: float) -> str:
    if math.isnan(ratio):
        return f"no ratio: {a} has no measurement of {metric.name}, or its median is 0"
    if math.isnan(low):
        return f"no verdict from one trial a side ({b}/{a} = {ratio:.2f}, no interval): repeat 3 or more times"
    interval = f"{b}/{a} = {ratio:.2f}, 95% CI [{low:.2f}, {high:.2f}]"
    if low <= 1.0 <= high:
        return f"within noise ({interval})"
    better = (ratio > 1) == metric.higher_is_better
    return f"{b} is {'better' if better else 'worse'} than {a} on {metric.name} ({interval})"


@dataclass
class Comparison:
    """Both sides' trials and the answer for one metric (others: :meth:`for_metric`)."""

    scenario: str
    a: TrialSet
    b: TrialSet
    metric: Metric
    metrics: tuple[Metric, ...] = ()

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
        return ratio_ci(self.a.values(self.metric.name), self.b.values(self.metric.name))

    @property
    def ratio(self) -> float:
        return self.interval[0]

    @property
    def ci(self) -> tuple[float, float]:
        return self.interval[1:]

    @property
    def verdict(self) -> str:
        return verdict(self.a.variant, self.b.variant, self.metric, *self.interval)

    def for_metric(self, name: str) -> "Comparison":
        return Comparison(self.scenario, self.a, self.b, metric_named(self.metrics, name, self.scenario), self.metrics)

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
            "outcomes": {"a": self.a.summary["outcomes"], "b": self.b.summary["outcomes"]},
            "versions": self.a.versions,
        }

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

    def plot(self, ax=None):
        from .plots import comparison_figure

        return comparison_figure(self, ax=ax)


def compare(
    scenario: str | Scenario,
    a: str,
    b: str,
    *,
    repeats: int = 5,
    metric: str | None = None,
    knobs: Mapping[str, Any] | None = None,
    timeout: float | None = None,
    monitor: bool = True,
    on_tick: OnTick | None = None,
    progress: bool = False,
) -> Comparison:
    """Run A and B interleaved, ``repeats`` isolated trials each, and compare them."""
    scen = registry.get(scenario)
    scen.get_variant(a)
    scen.get_variant(b)
    chosen = scen.get_metric(metric)
    values = scen.knob_values(knobs)
    check_repeats_timeout(repeats, timeout)
    sides = {name: TrialSet(scen.name, name, values, units=scen.units) for name in (a, b)}
    order = [(i, name) for i in range(repeats) for name in (a, b)]
    for i, name in _progress(order, progress, f"{scen.name} {a} vs {b}"):
        sides[name].trials.append(
            run_trial(scen, name, values, index=i, timeout=timeout, monitor=monitor, on_tick=on_tick)
        )
    return Comparison(scen.name, sides[a], sides[b], chosen, scen.metrics)


def compare_functions(
    a: Callable[[], Mapping[str, float]],
    b: Callable[[], Mapping[str, float]],
    *,
    metric: str,
    higher_is_better: bool = True,
    unit: str = "",
    repeats: int = 5,
    timeout: float = 60.0,
    **kwargs: Any,
) -> Comparison:
    """The same engine for your own code: two callables returning ``{metric: value}``.

    Each call runs isolated in a fresh process; functions defined in a notebook travel there by
    value (cloudpickle).
    """
    names = (a.__name__, b.__name__) if a.__name__ != b.__name__ else ("a", "b")
    scen = Scenario("functions", summary="two user functions", metrics=(Metric(metric, unit, higher_is_better),), timeout=timeout)
    scen.variant(names[0])(a)
    scen.variant(names[1])(b)
    return compare(scen, *names, repeats=repeats, metric=metric, **kwargs)

