"""Sweeps: the same variants over a grid of knob values (threads 1, 2, 4, 8 x workers 1, 2, 4...).

Every point is its own isolated trial, so knobs that only act at start-up can be swept through
``env``: pass a function of the point's knobs that returns environment variables (for example
``lambda k: {"OMP_NUM_THREADS": str(k["threads"])}``), applied before the child starts.
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from . import scenario as registry
from .trial import TrialSet, _progress, check_repeats_timeout, run_trial

EnvFor = Callable[[Mapping[str, Any]], Mapping[str, str | None]]


@dataclass
class Sweep:
    scenario: str
    grid: dict[str, list[Any]]
    runs: list[TrialSet] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        """Tidy trials with one column per swept knob."""
        frames = [run.to_frame().assign(**{k: run.knobs[k] for k in self.grid}) for run in self.runs]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def table(self, metric: str) -> pd.DataFrame:
        """Median, min, max and outcome counts of ``metric`` per (variant, knob values)."""
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

    def plot(self, metric: str):
        from .plots import sweep_figure

        return sweep_figure(self, metric)


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
    scen = registry.get(scenario)
    variants = [variants] if isinstance(variants, str) else list(variants)
    for v in variants:
        scen.get_variant(v)
    check_repeats_timeout(repeats, timeout)
    grid = {name: list(values) for name, values in grid.items()}
    points = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    result = Sweep(scen.name, grid)
    todo = [(v, p) for p in points for v in variants]  # variants interleaved at each point
    runs: dict[tuple, TrialSet] = {}
    for variant, point in _progress(todo, progress, f"sweep {scen.name}"):
        values = scen.knob_values({**(knobs or {}), **point})
        run = runs.setdefault((variant, *point.values()), TrialSet(scen.name, variant, values, units=scen.units))
        for i in range(repeats):
            run.trials.append(
                run_trial(scen, variant, values, index=i, timeout=timeout, env=env(values) if env else None,
                          monitor=monitor, start=start)
            )
    result.runs = list(runs.values())
    return result
