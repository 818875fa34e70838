"""The one runner under :func:`run`, :func:`~labkit.core.compare.compare` and :func:`~labkit.core.sweep.sweep`.

Each of them checks what it was asked, makes a plan (which variant, with which knobs and
environment, in which order) and hands it here; this module runs the plan one isolated trial at a
time, with the monitor watching each trial's own process tree, and a progress bar when asked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from labkit.core import scenario as registry
from labkit.core.errors import BadInput
from labkit.core.trial import Trial, TrialSet
from labkit.isolation.isolated import checked_start, expect, run_isolated
from labkit.machine.monitor import Monitor

OnTick = Callable[[Monitor], None]


@dataclass(frozen=True)
class Options:
    """How every trial of one call runs."""

    timeout: float | None = None  # seconds from a trial's first line (None: the scenario's own)
    start: str | None = None  # "warm" or "fresh" (None: LABKIT_START, else warm)
    monitor: bool = True
    on_tick: OnTick | None = None  # called with the monitor while a trial runs (live plots)
    progress: bool = False

    def __post_init__(self) -> None:
        if self.timeout is not None and self.timeout <= 0:
            raise BadInput(f"timeout must be a positive number of seconds, got {self.timeout:g}")
        checked_start(self.start)


@dataclass(frozen=True)
class Planned:
    """One trial to run."""

    variant: str
    knobs: Mapping[str, Any]
    index: int = 0
    env: Mapping[str, str | None] | None = None


def checked(scenario: str | registry.Scenario, variants: Sequence[str], repeats: int = 1) -> registry.Scenario:
    """The scenario, once every name and count asked for is known to be allowed (else BadInput)."""
    scen = registry.get(scenario)
    for name in variants:
        scen.get_variant(name).check_platform(scen.name)
    check_repeats(repeats)
    return scen


def check_repeats(repeats: int) -> None:
    if repeats < 1:
        raise BadInput(f"repeats must be at least 1, got {repeats}")


def trials(scen: registry.Scenario, plan: Iterable[Planned], options: Options, desc: str) -> Iterator[tuple[Planned, Trial]]:
    """Run the plan in order, one isolated trial at a time (stop iterating to stop running)."""
    if isinstance(plan, Sequence):  # warm processes for all of it may start together, before the first trial
        expect([{**scen.get_variant(p.variant).env, **(p.env or {})} for p in plan], options.start)
    for planned in _progress(plan, options.progress, desc):
        yield planned, run_trial(scen, planned, options)


def run_trial(scen: registry.Scenario, planned: Planned, options: Options) -> Trial:
    variant = scen.get_variant(planned.variant)
    monitor = Monitor(gpu=True) if options.monitor else None

    def watch(pid: int) -> None:
        """The trial's own tree, not this process's: a notebook kernel drawing the live plot, or
        running another cell meanwhile, is not the trial's work."""
        monitor.root = pid
        monitor.start()

    asked = time.monotonic()
    try:
        result = run_isolated(
            variant.fn,
            planned.knobs,
            timeout=options.timeout or scen.timeout,
            idle=scen.idle_after,
            start=options.start,
            env={**variant.env, **(planned.env or {})},
            on_start=watch if monitor else None,
            on_tick=(lambda: options.on_tick(monitor)) if (options.on_tick and monitor) else None,
        )
    finally:
        if monitor is not None:
            monitor.stop()
    if monitor is not None and monitor.samples:
        _mark(monitor, result, asked, scen.idle_after)
    return Trial.of(result, scenario=scen.name, variant=planned.variant, index=planned.index, knobs=planned.knobs,
                    samples=monitor.to_frame() if monitor is not None else None)


def _mark(monitor: Monitor, result, asked: float, idle: float | None) -> None:
    """Where the trial's own code began (before it: start-up, not the trial), and for a hang, when
    it was called hung and since when its processes had used no CPU."""
    if result.startup_seconds is None:
        return
    began = asked + result.startup_seconds
    monitor.mark("first_line", began)
    if result.outcome == "hung":
        monitor.mark("hung", began + result.seconds)
        if idle is not None and (result.hung_by or "").startswith("no progress"):
            monitor.mark("still_since", began + result.seconds - idle)


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
    scen = checked(scenario, [variant], repeats)
    values = scen.knob_values(knobs)
    options = Options(timeout, start, monitor, on_tick, progress)
    plan = [Planned(variant, values, i, env) for i in range(repeats)]
    done = tuple(trial for _, trial in trials(scen, plan, options, f"{scen.name} {variant}"))
    return TrialSet(scen.name, variant, values, done, units=scen.units)


def _progress(items: Iterable, enabled: bool, desc: str) -> Iterable:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    items = list(items)
    return tqdm(items, desc=desc, leave=False, disable=None)  # None: off when not a terminal
