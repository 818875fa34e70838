"""Trials: a scenario variant run once in isolation, with the monitor watching.

:func:`run` is what ``labkit run`` and every notebook call. Each trial is a fresh child process
(:func:`labkit.isolate.run_isolated`); its outcome is one of ``ok``, ``raised``, ``wrong``,
``hung`` or ``crashed``; its metrics are what the variant measured inside the child.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import pandas as pd

from . import scenario as registry
from ._json import jsonable
from .errors import BadInput
from .isolate import OUTCOMES, run_isolated
from .monitor import Monitor
from .versions import running_on

OnTick = Callable[[Monitor], None]


@dataclass
class Trial:
    scenario: str
    variant: str
    index: int
    outcome: str
    error: str | None
    seconds: float
    metrics: dict[str, float]
    knobs: dict[str, Any]
    stacks: dict[int, str] = field(default_factory=dict)
    output: str = ""
    exitcode: int | None = None
    traceback: str | None = None
    samples: pd.DataFrame | None = field(default=None, repr=False)  # the monitor's tidy frame
    notes: dict[str, str] = field(default_factory=dict)  # what the trial says of itself (devices used, and why)
    start: str = "warm"  # forked from a warm template, or a fresh interpreter (labkit.isolate)
    startup_seconds: float | None = None  # from asking for the process to the trial's first line

    def to_dict(self) -> dict[str, Any]:
        """The JSON contract of ``labkit run --json`` (DESIGN.md)."""
        out = {
            "index": self.index,
            "outcome": self.outcome,
            "error": self.error,
            "seconds": round(self.seconds, 4),
            "metrics": self.metrics,
            "knobs": self.knobs,
            "start": self.start,
            "startup_seconds": None if self.startup_seconds is None else round(self.startup_seconds, 4),
        }
        if self.outcome == "hung":
            out["stacks"] = {str(pid): text for pid, text in self.stacks.items()}
        if self.exitcode is not None:
            out["exitcode"] = self.exitcode
        if self.notes:
            out["notes"] = self.notes
        return out


@dataclass
class TrialSet:
    """Every trial of one variant with one set of knobs."""

    scenario: str
    variant: str
    knobs: dict[str, Any]
    trials: list[Trial] = field(default_factory=list)
    units: dict[str, str] = field(default_factory=dict)  # metric name -> unit
    # The releases the trials ran on, so that a result that changed can be traced to one.
    versions: dict[str, str | None] = field(default_factory=running_on)

    def values(self, metric: str) -> list[float]:
        return [t.metrics[metric] for t in self.trials if t.metrics.get(metric) is not None]

    @property
    def summary(self) -> dict[str, Any]:
        counts = Counter(t.outcome for t in self.trials)
        metrics = {}
        for name in sorted({m for t in self.trials for m in t.metrics}):
            values = self.values(name)
            if values:
                metrics[name] = {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}
        return {"outcomes": {o: counts.get(o, 0) for o in OUTCOMES}, "metrics": metrics}

    def outcome_text(self) -> str:
        """``"3 ok, 1 hung"``: the outcome counts that are not zero."""
        return ", ".join(f"{n} {o}" for o, n in self.summary["outcomes"].items() if n)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "variant": self.variant,
            "knobs": self.knobs,
            "trials": [t.to_dict() for t in self.trials],
            "summary": self.summary,
            "versions": self.versions,
        }

    def to_json(self) -> str:
        return json.dumps(jsonable(self.to_dict()), indent=2)

    def to_frame(self) -> pd.DataFrame:
        """Tidy: one row per (trial, metric), the wall-clock seconds of each trial included."""
        rows = []
        for t in self.trials:
            base = (self.scenario, self.variant, t.index, t.outcome)
            rows.append((*base, "seconds", t.seconds, "s"))
            rows.extend((*base, name, value, self.units.get(name, "")) for name, value in t.metrics.items())
        return pd.DataFrame(rows, columns=["scenario", "variant", "trial", "outcome", "metric", "value", "unit"])

    def samples(self) -> pd.DataFrame:
        """The monitor's samples of every trial, with a ``trial`` column."""
        frames = [t.samples.assign(trial=t.index) for t in self.trials if t.samples is not None]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def run_trial(
    scenario: registry.Scenario,
    variant: str,
    knobs: Mapping[str, Any],
    *,
    index: int = 0,
    timeout: float | None = None,
    env: Mapping[str, str | None] | None = None,
    monitor: bool = True,
    on_tick: OnTick | None = None,
    start: str | None = None,
) -> Trial:
    var = scenario.get_variant(variant)
    mon = Monitor(gpu=True) if monitor else None

    def watch(pid: int) -> None:
        """The trial's own tree, not this process's: a notebook kernel drawing the live plot, or
        running another cell meanwhile, is not the trial's work."""
        mon.root = pid
        mon.start()

    try:
        result = run_isolated(
            var.fn,
            knobs,
            timeout=timeout or scenario.timeout,
            idle=scenario.idle_after,
            start=start,
            env={**var.env, **(env or {})},
            on_start=watch if mon else None,
            on_tick=(lambda: on_tick(mon)) if (on_tick and mon) else None,
        )
    finally:
        if mon is not None:
            mon.stop()
    return Trial(
        scenario.name,
        variant,
        index,
        result.outcome,
        result.error,
        result.seconds,
        _numbers(result.value),
        dict(knobs),
        result.stacks,
        result.output,
        result.exitcode,
        result.traceback,
        mon.to_frame() if mon is not None else None,
        {**{k: v for k, v in _entries(result.value) if isinstance(v, str)},
         **({"hung": result.hung_by} if result.hung_by else {})},
        result.start,
        result.startup_seconds,
    )


def _entries(value: Any) -> list[tuple[str, Any]]:
    return list(value.items()) if isinstance(value, dict) else []


def _numbers(value: Any) -> dict[str, float]:
    """The metrics in what a variant returned: its numeric entries (its text entries are notes)."""
    return {k: v for k, v in _entries(value) if isinstance(v, (int, float)) and not isinstance(v, bool)}


def run(
    scenario: str | registry.Scenario,
    variant: str,
    *,
    repeats: int = 1,
    timeout: float | None = None,
    knobs: Mapping[str, Any] | None = None,
    env: Mapping[str, str | None] | None = None,
    monitor: bool = True,
    on_tick: OnTick | None = None,
    progress: bool = False,
    start: str | None = None,
) -> TrialSet:
    """Run ``repeats`` isolated trials of one variant and collect them.

    ``start``: ``"warm"`` (forked from a template that has imported everything) or ``"fresh"`` (a
    new interpreter each); the default is ``LABKIT_START``, else warm.
    """
    scen = registry.get(scenario)
    scen.get_variant(variant)
    values = scen.knob_values(knobs)
    check_repeats_timeout(repeats, timeout)
    trials = TrialSet(scen.name, variant, values, units=scen.units)
    for i in _progress(range(repeats), progress, f"{scen.name} {variant}"):
        trials.trials.append(
            run_trial(scen, variant, values, index=i, timeout=timeout, env=env, monitor=monitor, on_tick=on_tick,
                      start=start)
        )
    return trials


def check_repeats_timeout(repeats: int, timeout: float | None) -> None:
    if repeats < 1:
        raise BadInput(f"repeats must be at least 1, got {repeats}")
    if timeout is not None and timeout <= 0:
        raise BadInput(f"timeout must be a positive number of seconds, got {timeout:g}")


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, leave=False, disable=None)  # None: off when not a terminal
