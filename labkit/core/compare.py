"""A/B answers a researcher can act on: what happened to each side, then a calibrated verdict.

Trials run in pairs, back to back, and a coin decides which side goes first in each pair (A B,
B A, ...): a slow moment of the machine hits both members of a pair, and a machine that slows down
during the run favours neither side. ``a`` may equal ``b``: an A/A run, split by the coin, is how
to see the noise floor of the instrument.

Every verdict first says how each side's trials ended ("never_returns hung in 2 of 2 (no
progress: ...)", "a raised ValueError in 3 of 5"); only trials that returned ("ok") count in the
medians and the ratio. Then the ratio B/A with an interval from an exact rank test on log values
(:mod:`labkit.core.stats` says which test and why): paired when there are enough pairs, unpaired
below that, and "too few trials to tell" where no test of that many trials can reach the level (3
against 3 at 95%), with the number of trials a side that could. Run identical variants and the
verdict names a winner at most 5% of the time at 95%, at every number of trials and under
skewed, heavy-tailed or drifting noise (``benchmarks/ab_calibration.py`` measures it).

How many trials: a fixed number where ``repeats`` is given; otherwise :func:`compare` runs until
its answer is decisive or its time budget is spent, and says which (``Comparison.stopped``).
Looking after every pair and stopping at the first that excludes 1 would find differences between
identical variants far more often than 5% of the time. So it looks at :data:`LOOKS` trials a side,
or earlier when the budget would run out before another pair: never more than three looks, each
at 1 - 5%/3 (98.3%). Whichever look it stops at, the chance that any of the three was falsely
decisive is at most 3 x 5%/3 = 5% (Bonferroni: no assumption about how the looks correlate), so the
interval it reports is a 95% interval over its looks, and its verdict never names a winner that its
looks called not decisive.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from labkit.core._json import jsonable
from labkit.core.errors import BadInput
from labkit.core.functions import CALL, Call
from labkit.core.runner import OnTick, Options, Planned, check_repeats, checked, trials
from labkit.core.scenario import Metric, Scenario, Variant, metric_named
from labkit.core.stats import NO_RATIO, TOO_FEW, RatioTest, paired_ratio_ci, pct, ratio_ci, ratio_test
from labkit.core.trial import TrialSet

__all__ = ["BUDGET", "CALL", "CONFIDENCE", "LOOKS", "Comparison", "compare", "compare_functions",
           "paired_ratio_ci", "ratio_ci"]

CONFIDENCE = 0.95  # the level every verdict promises, fixed or open-ended
LOOKS = (5, 10, 20)  # trials a side at which an open-ended comparison looks at its interval
BUDGET = 120.0  # seconds an open-ended comparison may run: it stops before a pair that would pass it


@dataclass(frozen=True)
class Comparison:
    """Both sides' trials and the answer for one metric (others: :meth:`for_metric`)."""

    scenario: str
    a: TrialSet
    b: TrialSet
    metric: Metric
    metrics: tuple[Metric, ...] = ()
    stopped: str = ""  # why it ran the trials it ran: fixed, decisive, or the budget spent
    confidence: float = CONFIDENCE  # what the verdict promises, over all its looks
    # How many looks share that promise: 1 for a fixed number of trials, len(LOOKS) for an
    # open-ended comparison, whose every look is at 1 - (1 - confidence) / looks.
    looks: int = 1
    order: str = ""  # the sides in the order their trials ran, "abba...": the coin of each pair

    @property
    def look_confidence(self) -> float:
        """The level of each look's interval, so that all looks together keep :attr:`confidence`."""
        return 1 - (1 - self.confidence) / self.looks

    @property
    def labels(self) -> tuple[str, str]:
        """The sides' names: the variants, or ``v (A)`` and ``v (B)`` in an A/A run of one variant."""
        a, b = self.a.variant, self.b.variant
        return (a, b) if a != b else (f"{a} (A)", f"{b} (B)")

    @property
    def a_median(self) -> float:
        values = self.a.values(self.metric.name)
        return statistics.median(values) if values else math.nan

    @property
    def b_median(self) -> float:
        values = self.b.values(self.metric.name)
        return statistics.median(values) if values else math.nan

    @cached_property
    def test(self) -> RatioTest:
        """The ratio, its interval and the test behind them (ok trials only, keyed by pair)."""
        name = self.metric.name
        return ratio_test(self.a.measured(name), self.b.measured(name), confidence=self.look_confidence)

    @property
    def interval(self) -> tuple[float, float, float]:
        """``(ratio, low, high)``; NaN bounds where there is no interval to give."""
        return self.test.ratio, self.test.low, self.test.high

    @property
    def ratio(self) -> float:
        return self.test.ratio

    @property
    def ci(self) -> tuple[float, float]:
        return self.test.low, self.test.high

    @property
    def method(self) -> str:
        """Which test gave the interval, in words."""
        return self.test.describe()

    def decisive(self) -> bool:
        """Whether the interval (at :attr:`look_confidence`) leaves 1 out."""
        return self.test.decisive

    @property
    def happened(self) -> str:
        """How each side's trials ended: ``"both ok in 5 of 5"``, ``"a raised ValueError in 3 of 5; b ok in 5 of 5"``."""
        sides = [(label, side) for label, side in zip(self.labels, (self.a, self.b))]
        same = len(self.a.trials) == len(self.b.trials) > 0
        if same and all(t.outcome == "ok" for _, side in sides for t in side.trials):
            n = len(self.a.trials)
            return f"both ok in {n} of {n}"
        return "; ".join(f"{label} {_endings(side)}" for label, side in sides)

    @property
    def answer(self) -> str:
        """The verdict's words without its numbers or outcomes: ``"within noise"``, ``"B is better than A on M"``."""
        test, (a, b), name = self.test, self.labels, self.metric.name
        if test.method == NO_RATIO:
            missing = [label for label, n in zip(self.labels, (test.n_a, test.n_b)) if not n]
            if missing:
                return f"no ratio: {' and '.join(missing)} measured no {name}"
            return f"no ratio: {name} was 0 or less in some trials, and a ratio needs positive values"
        if test.method == TOO_FEW:
            counts = f"{test.n_a} a side" if test.n_a == test.n_b else f"{test.n_a} and {test.n_b} measured"
            return f"too few trials to tell at {self._level}: {counts}; it takes {test.need} a side"
        if not test.decisive:
            return "within noise"
        better = (test.low > 1) == self.metric.higher_is_better
        return f"{b} is {'better' if better else 'worse'} than {a} on {name}"

    @property
    def verdict(self) -> str:
        """What happened to each side, then the answer with the ratio and the interval behind it."""
        test, (a, b) = self.test, self.labels
        numbers = ""
        if test.method == TOO_FEW:
            numbers = f" ({b}/{a} = {test.ratio:.2f}, no interval)"
        elif test.method != NO_RATIO:
            looks = f", {pct(self.look_confidence)} at each of {self.looks} looks" if self.looks > 1 else ""
            numbers = f" ({b}/{a} = {test.ratio:.2f}, {pct(self.confidence)} CI [{test.low:.2f}, {test.high:.2f}]{looks})"
        return f"{self.happened}; {self.answer}{numbers}"

    @property
    def _level(self) -> str:
        return pct(self.confidence) + (f" over {self.looks} looks" if self.looks > 1 else "")

    def for_metric(self, name: str) -> "Comparison":
        return replace(self, metric=metric_named(self.metrics, name, self.scenario))

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
            "method": self.test.method,
            "happened": self.happened,
            "verdict": self.verdict,
            "stopped": self.stopped,
            "confidence": self.confidence,
            "looks": self.looks,
            "order": self.order,
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
                   data.get("confidence", CONFIDENCE), data.get("looks", 1), data.get("order", ""))

    @classmethod
    def load(cls, path: str | Path) -> tuple["Comparison", ...]:
        """Every comparison in a file ``compare --json`` (one) or a tour (one per scenario) wrote."""
        data = json.loads(Path(path).read_text())
        return tuple(cls.from_dict(d) for d in (data if isinstance(data, list) else [data]))

    def to_json(self) -> str:
        return json.dumps(jsonable(self.to_dict()), indent=2)

    def to_frame(self) -> pd.DataFrame:
        """Tidy: every trial of both sides, one row per (variant, trial, metric), with a ``side`` column."""
        return pd.concat([self.a.to_frame().assign(side="A"), self.b.to_frame().assign(side="B")], ignore_index=True)

    def table(self) -> pd.DataFrame:
        """One row per metric: medians (ok trials), ratio B/A, its interval and the verdict."""
        rows = []
        for metric in self.metrics:
            c = self.for_metric(metric.name)
            ratio, low, high = c.interval
            rows.append(
                {"metric": metric.name, "unit": metric.unit, self.labels[0]: c.a_median, self.labels[1]: c.b_median,
                 "ratio B/A": ratio, "ci low": low, "ci high": high, "verdict": c.verdict}
            )
        return pd.DataFrame(rows).set_index("metric")


def _endings(side: TrialSet) -> str:
    """``"hung in 2 of 2 (no progress: ...)"``, ``"raised ValueError in 3 of 5, ok in 2 of 5"``."""
    n = len(side.trials)
    if not n:
        return "ran no trials"
    kinds: Counter[str] = Counter()
    detail: dict[str, str] = {}
    for t in side.trials:
        kind = t.outcome.value
        if t.outcome == "raised":
            kind = f"raised {(t.error or 'an error').split(':')[0].strip()}"
        elif t.outcome in ("hung", "crashed"):
            detail.setdefault(kind, (t.notes.get("hung") or t.error or "").split(" (")[0])
        kinds[kind] += 1
    failures_first = sorted(kinds.items(), key=lambda item: item[0] == "ok")  # stable: else in order seen
    return ", ".join(f"{kind} in {count} of {n}" + (f" ({detail[kind]})" if detail.get(kind) else "")
                     for kind, count in failures_first)


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
    confidence: float = CONFIDENCE,
    seed: int | None = None,
) -> Comparison:
    """Run A and B in pairs, isolated trials each, the order in each pair a coin flip, and compare them.

    ``repeats`` fixes the trials a side. Without it, the comparison looks at its interval after
    :data:`LOOKS` trials a side and stops at the first decisive look, at the last look, when a side has
    nothing to measure, or when another pair would pass ``budget`` seconds (checked after every pair;
    it passes the budget by less than one pair); ``stopped`` says which. ``a`` may equal ``b`` (A/A).
    ``seed`` fixes the coins (default: fresh ones each call).
    """
    scen = checked(scenario, [a, b])
    chosen = scen.get_metric(metric)
    values = scen.knob_values(knobs)
    options = Options(timeout, start, monitor, on_tick, progress)
    if repeats is not None:
        check_repeats(repeats)
    if budget <= 0:
        raise BadInput(f"budget must be a positive number of seconds, got {budget:g}")
    if not 0.5 <= confidence < 1:
        raise BadInput(f"confidence must be at least 0.5 and below 1, got {confidence:g}")
    pairs = repeats or LOOKS[-1]
    coin = random.Random(seed)
    order = "".join("ab" if coin.random() < 0.5 else "ba" for _ in range(pairs))
    plan = [Planned(a if side == "a" else b, values, i // 2) for i, side in enumerate(order)]
    sides = {side: TrialSet(scen.name, name, values, units=scen.units) for side, name in (("a", a), ("b", b))}
    result = Comparison(scen.name, sides["a"], sides["b"], chosen, scen.metrics, f"fixed: {repeats} trials a side",
                        confidence, 1 if repeats is not None else len(LOOKS))
    began = pair_began = time.monotonic()
    beyond_startup: list[float] = []  # each pair's seconds, less its trials' start-ups
    startups: list[float] = []
    for side, (_, trial) in zip(order, trials(scen, plan, options, f"{scen.name} {a} vs {b}")):
        result = replace(result, order=result.order + side, **{side: getattr(result, side).adding(trial)})
        if len(result.a.trials) != len(result.b.trials):
            continue  # the pair's second trial is still to come
        now = time.monotonic()
        pair = [result.a.trials[-1].startup_seconds or 0.0, result.b.trials[-1].startup_seconds or 0.0]
        startups += pair
        beyond_startup.append(now - pair_began - sum(pair))
        pair_began = now
        # The next pair as long as a typical one, started the quickest way seen: a warm template starts
        # once (seconds), then forks its trials (hundredths); the first pair must not speak for every one.
        typical = statistics.median(beyond_startup) + 2 * min(startups)
        if repeats is None and (stopped := _stop(result, now - began, budget, typical)):
            return replace(result, stopped=stopped)
    return result


def _stop(result: Comparison, spent: float, budget: float, pair: float) -> str:
    """Why an open-ended comparison stops after this pair (``""``: it goes on).

    It looks at :data:`LOOKS`, and once more where another pair (``pair`` seconds: a typical one so
    far) would pass the budget: that look replaces the planned ones still to come, so there are never
    more than ``len(LOOKS)`` looks, which is what each look's level was split for.
    """
    n = len(result.a.trials)
    late = spent + pair > budget
    if n not in LOOKS and not late:
        return ""
    name, after = result.metric.name, f"after {n} trial{'s' if n > 1 else ''} a side"
    missing = [label for label, side in zip(result.labels, (result.a, result.b)) if not side.values(name)]
    if missing:
        return f"stopped {after}: {' and '.join(missing)} measured no {name}"
    if result.decisive():
        return f"decisive {after}"
    if n >= LOOKS[-1]:
        return f"not decisive {after}, the most it runs"
    if late:
        return f"not decisive {after}: another pair would pass the {budget:g} s budget"
    return ""


def compare_functions(
    a: Callable[..., Any],
    b: Callable[..., Any],
    *,
    metric: str = CALL,
    higher_is_better: bool | None = None,
    unit: str | None = None,
    repeats: int | None = None,
    timeout: float = 60.0,
    idle: float | None = None,
    setup: Callable[[], Any] | tuple[Callable[[], Any] | None, Callable[[], Any] | None] | None = None,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    **options: Any,
) -> Comparison:
    """The same engine for your own code, measured as it is: each call isolated in a process of its own.

    Every trial times the call itself (``call_s``, the default metric, lower is better); a function
    that returns ``{metric: value}`` adds its own numbers (``higher_is_better`` then defaults to True).
    ``setup`` runs before the timed call in each trial and its value is passed first (load a model,
    open a client); a pair ``(setup_a, setup_b)`` gives each side its own. ``args`` and ``kwargs`` go
    to both functions. ``async def`` functions (and setups) are awaited. There is no stillness rule
    unless ``idle`` (seconds with every thread blocked) is given: a function may wait on a server;
    ``timeout`` (from the trial's first line, setup included) still ends one that never returns, as
    ``hung``. Functions defined in a notebook travel by value (cloudpickle). ``options`` go to
    :func:`compare` (``budget``, ``monitor``, ``seed``...).
    """
    names = [getattr(fn, "__name__", side) for fn, side in ((a, "a"), (b, "b"))]
    if names[0] == names[1]:
        names = ["a", "b"]
    setups = setup if isinstance(setup, tuple) else (setup, setup)
    own = metric != CALL
    chosen = Metric(metric, unit if unit is not None else ("" if own else "s"),
                    higher_is_better if higher_is_better is not None else own)
    timed = Metric(CALL, "s", False, "seconds the call took, setup excluded")
    scen = Scenario("functions", summary="two user functions", metrics=(chosen, timed) if own else (chosen,),
                    timeout=timeout, idle_after=idle)
    for name, fn, set_up in zip(names, (a, b), setups):
        summary = (fn.__doc__ or "").strip().split("\n")[0] if getattr(fn, "__doc__", None) else ""
        scen.variants[name] = Variant(name, Call(fn, set_up, tuple(args), dict(kwargs or {})), summary)
    return compare(scen, *names, repeats=repeats, metric=metric, **options)
