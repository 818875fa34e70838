"""Your own function as a variant of a scenario, and whether it holds: the check behind the notebooks' exercises.

An exercise has the learner write a fix (or the failing line) as a function of a variant's shape,
``fn(**knobs) -> {metric: value}``, that raises what fails and :class:`~labkit.core.errors.WrongResult` for
a wrong answer. :func:`try_variant` runs it the way the scenario's own variants run (isolated, one process
a trial, the scenario's knobs, timeout and stillness rule) and answers in one line:

* ``holds: 3 of 3 ok``: every trial ended as a fix of this scenario ends (``expect``: ``"ok"``, or
  ``"raised"`` for a fix whose point is to fail fast with the real error), and, given ``than``, each was
  better on ``metric`` than those trials, by the factor ``by``;
* ``does not hold: trial 1 of 3 raised TypeError: ...``: the first trial that did not. It stops there: a
  fix must hold every time, so one failure is the answer (and a hang costs seconds).

A check, not a measurement: three trials that hold say it held three times, and a race can hide for
longer (``repeats`` asks for more; :func:`~labkit.core.compare.compare` measures).
"""

from __future__ import annotations

import pickle
import statistics
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

from labkit.core import scenario as registry
from labkit.core.errors import BadInput
from labkit.core.runner import Options, Planned, check_repeats, run_trial
from labkit.core.scenario import Metric, Variant
from labkit.core.trial import Trial, TrialSet


@dataclass(frozen=True, repr=False)
class Attempt:
    """What :func:`try_variant` found: the trials it ran, and whether the function held in every one."""

    trials: TrialSet
    holds: bool
    said: str  # what follows "holds: " or "does not hold: "

    def __str__(self) -> str:
        return f"{'holds' if self.holds else 'does not hold'}: {self.said}"

    __repr__ = __str__  # the last line of a cell shows the answer, not the dataclass

    @property
    def traceback(self) -> str | None:
        """Where the failing trial raised, in your function or below it (None when nothing raised)."""
        return next((t.traceback for t in reversed(self.trials.trials) if t.traceback), None)


def try_variant(scenario: str | registry.Scenario, fn: Callable[..., Mapping[str, Any]], *,
                knobs: Mapping[str, Any] | None = None, repeats: int = 3, expect: str = "ok",
                than: Trial | TrialSet | None = None, metric: str | None = None, by: float = 1.0,
                timeout: float | None = None, env: Mapping[str, str | None] | None = None) -> Attempt:
    """Run ``fn(**knobs)`` as a variant of ``scenario``, up to ``repeats`` isolated trials, and say whether it holds.

    ``expect``: how a trial of a fix ends, ``"ok"``, ``"raised"``, or ``"raised ValueError"`` (that error);
    ``than`` and ``metric``: trials already run (the broken variant's, say) that each trial must beat on
    ``metric`` (its median), by the factor ``by`` (2: at most half of it where lower is better); ``env``:
    variables set before the trial's process starts, as a variant's own.
    """
    scen = registry.get(scenario)
    check_repeats(repeats)
    if not callable(fn):
        raise BadInput(f"fn must be a function taking the scenario's knobs, got {type(fn).__name__}")
    if expect.split(" ")[0] not in ("ok", "raised") or (expect.startswith("ok") and expect != "ok"):
        raise BadInput(f"expect={expect!r} is not allowed; allowed: ok, raised, raised ErrorName")
    if (than is None) != (metric is None):
        raise BadInput("than and metric go together: the trials to beat, and on which metric")
    if by <= 0:
        raise BadInput(f"by must be a positive factor, got {by:g}")
    bar = _bar(scen, than, metric, by) if than is not None else None
    name = getattr(fn, "__name__", "yours")
    mine = replace(scen, variants={**scen.variants, name: Variant(name, fn, "yours", env=dict(env or {}), expect=expect)})
    values = scen.knob_values(knobs)
    options = Options(timeout=timeout, monitor=False)
    done: list[Trial] = []
    for i in range(repeats):
        try:
            done.append(run_trial(mine, Planned(name, values, i), options))
        except (TypeError, pickle.PicklingError) as exc:  # cloudpickle, before any process starts
            if "pickle" not in str(exc):
                raise
            raise BadInput(f"{name} cannot travel to the trial's process ({exc}): make locks, threads and models "
                           "inside the function, not beside it") from None
        problem = _problem(done[-1], expect, bar)
        if problem:
            return Attempt(_set(scen, name, values, done), False, f"trial {i + 1} of {repeats} {problem}")
    said = f"{repeats} of {repeats} {expect}"
    if bar is not None:
        measured = [t.metrics[bar.metric.name] for t in done]
        said += f"; {bar.words} (measured: {_span(measured)} against {bar.reference:.3g})"
    return Attempt(_set(scen, name, values, done), True, said)


@dataclass(frozen=True)
class _Bar:
    metric: Metric
    limit: float  # the value each trial must reach (at most, or at least)
    reference: float  # the median of the trials to beat
    words: str  # "cpu_s_per_token each at most half of broken's"

    def passes(self, value: float) -> bool:
        return value >= self.limit if self.metric.higher_is_better else value <= self.limit


def _bar(scen: registry.Scenario, than: Trial | TrialSet, metric: str, by: float) -> _Bar:
    measure = scen.get_metric(metric)
    trials = than.trials if isinstance(than, TrialSet) else (than,)
    found = [t.metrics[metric] for t in trials if t.metrics.get(metric) is not None]
    if not found:
        raise BadInput(f"the trials in than= measured no {metric}")
    reference, label = statistics.median(found), trials[0].variant
    if measure.higher_is_better:
        limit, relation = reference * by, "above" if by == 1 else f"at least {by:g}x"
    else:
        limit, relation = reference / by, {1: "under", 2: "at most half of"}.get(by, f"{by:g}x under")
    return _Bar(measure, limit, reference, f"{metric} each {relation} {label}'s")


def _problem(trial: Trial, expect: str, bar: _Bar | None) -> str | None:
    """Why this trial does not hold, in words, or None where it does."""
    error = (trial.error or "").strip().split("\n")[0]
    kind, _, wanted = expect.partition(" ")
    if trial.outcome != kind:
        if trial.outcome == "raised":
            return f"raised {_short(error)}"
        if trial.outcome == "wrong":
            return f"answered wrong: {_short(error)}"
        if trial.outcome == "hung":
            return f"hung ({_short(trial.notes.get('hung') or error)})"
        if trial.outcome == "crashed":
            return f"crashed ({_short(error)})"
        return f"ended {trial.outcome}, where a fix here ends {kind}"
    if wanted and error.split(":")[0].strip() != wanted:
        return f"raised {_short(error)}, where a fix here raises {wanted}"
    if bar is not None:
        value = trial.metrics.get(bar.metric.name)
        if value is None:
            return f"measured no {bar.metric.name}"
        if not bar.passes(value):
            return f"measured {bar.metric.name} {value:.3g}, where a fix here has it {bar.words.split(' each ')[1]} {bar.reference:.3g}"
    return None


def _short(text: str, width: int = 160) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _span(values: list[float]) -> str:
    low, high = min(values), max(values)
    return f"{low:.3g}" if f"{low:.3g}" == f"{high:.3g}" else f"{low:.3g} to {high:.3g}"


def _set(scen: registry.Scenario, name: str, values: Mapping[str, Any], done: list[Trial]) -> TrialSet:
    return TrialSet(scen.name, name, dict(values), tuple(done), units=scen.units)
