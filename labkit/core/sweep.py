"""Sweeps: the same variants over a grid of knob values (threads 1, 2, 4, 8 x workers 1, 2, 4...).

Every point is its own isolated trial, so knobs that only act at start-up can be swept through
``env``: pass a function of the point's knobs that returns environment variables (for example
``lambda k: {"OMP_NUM_THREADS": str(k["threads"])}``), applied before the child starts.
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from labkit.core import scenario as registry
from labkit.core.runner import Options, Planned, checked, trials
from labkit.core.trial import TrialSet

EnvFor = Callable[[Mapping[str, Any]], Mapping[str, str | None]]


@dataclass(frozen=True)
class Sweep:
    scenario: str
    grid: Mapping[str, tuple[Any, ...]]
    runs: tuple[TrialSet, ...] = ()

    def to_frame(self) -> pd.DataFrame:
        """Tidy trials with one column per swept knob."""
        frames = [run.to_frame().assign(**{k: run.knobs[k] for k in self.grid}) for run in self.runs]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def table(self, metric: str) -> pd.DataFrame:
        """Median, min, max and outcome counts of ``metric`` per (variant, knob values), from ok trials."""
        rows = []
        for run in self.runs:
            values = run.values(metric)
            rows.append(
                {"variant": run.variant, **{k: run.knobs[k] for k in self.grid},
                 "median": statistics.median(values) if values else float("nan"),
                 "min": min(values, default=float("nan")), "max": max(values, default=float("nan")),
                 "ok": sum(t.outcome == "ok" for t in run.trials), "trials": len(run.trials)}
            )
        return pd.DataFrame(rows).set_index(["variant", *self.grid])


def sweep(
    scenario: str | registry.Scenario,
    variants: str | Sequence[str],
    grid: Mapping[str, Sequence[Any]],
    *,
    repeats: int = 1,
    knobs: Mapping[str, Any] | None = None,
    env: EnvFor | None = None,
    timeout: float | None = None,
    monitor: bool = False,
    progress: bool = False,
    start: str | None = None,
) -> Sweep:
    variants = [variants] if isinstance(variants, str) else list(variants)
    scen = checked(scenario, variants, repeats)
    options = Options(timeout, start, monitor, None, progress)
    grid = {name: tuple(values) for name, values in grid.items()}
    plan = []
    for combo in itertools.product(*grid.values()):  # at each point, variants interleaved: A B A B, not A A B B
        values = scen.knob_values({**(knobs or {}), **dict(zip(grid, combo))})
        plan += [Planned(v, values, i, env(values) if env else None) for i in range(repeats) for v in variants]
    runs: dict[tuple, TrialSet] = {}
    for planned, trial in trials(scen, plan, options, f"sweep {scen.name}"):
        key = (planned.variant, *(planned.knobs[k] for k in grid))
        if key not in runs:
            runs[key] = TrialSet(scen.name, planned.variant, planned.knobs, units=scen.units)
        runs[key] = runs[key].adding(trial)
    return Sweep(scen.name, grid, tuple(runs.values()))
