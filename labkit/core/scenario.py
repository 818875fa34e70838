"""Scenarios, their variants, knobs and metrics, and the registry the CLI reads.

A scenario is one failure mode: a ``broken`` variant that reproduces the report it comes from and
named fix variants beside it. A variant is a plain function ``fn(**knobs) -> {metric: value}``
that runs inside an isolated child (:mod:`labkit.isolation.isolated`), raises what the failure raises, and
raises :class:`~labkit.core.errors.WrongResult` when it finishes with a wrong answer. Text values in
what it returns (or in ``exc.metrics`` of what it raises) are kept as the trial's notes.

Define one in a notebook the same way the built-in ones are defined::

    mine = Scenario("my-race", summary="...", metrics=[Metric("items_per_s", "1/s")])

    @mine.variant("broken", broken=True)
    def shared_list(threads=4): ...
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from labkit.core.errors import BadInput
from labkit.core.hazard import Rule


@dataclass(frozen=True)
class Knob:
    """A setting a user may turn, with its allowed values."""

    name: str
    default: Any
    help: str = ""
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None
    validate: Callable[[Any], Any] | None = None  # raises BadInput, or returns the value normalised

    def check(self, value: Any) -> Any:
        """Coerce ``value`` to the default's type and check it is allowed (else :class:`BadInput`)."""
        kind = type(self.default)
        if kind is bool:
            return self._flag(value)
        try:
            value = kind(value) if kind in (int, float, str) and not isinstance(value, kind) else value
        except (TypeError, ValueError):
            raise BadInput(f"{self.name} must be {kind.__name__}, got {value!r}; {self.allowed()}") from None
        if self.choices is not None and value not in self.choices:
            raise BadInput(f"{self.name}={value!r} is not allowed; {self.allowed()}")
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise BadInput(f"{self.name}={value!r} is out of range; {self.allowed()}")
        return self.validate(value) if self.validate is not None else value

    def _flag(self, value: Any) -> bool:
        """A switch from Python or the command line (``--set trust_remote_code=true``)."""
        words = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}
        flag = value if isinstance(value, bool) else words.get(str(value).strip().lower())
        if flag is None:
            raise BadInput(f"{self.name} must be true or false, got {value!r}")
        return flag

    def allowed(self) -> str:
        if isinstance(self.default, bool):
            return "allowed: true, false"
        if self.choices is not None:
            return f"allowed: {', '.join(map(str, self.choices))}"
        low = "" if self.low is None else f"{self.low:g} <= "
        high = "" if self.high is None else f" <= {self.high:g}"
        return f"allowed: {low}{self.name}{high}"


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    higher_is_better: bool = True
    help: str = ""


@dataclass(frozen=True)
class Variant:
    name: str
    fn: Callable[..., Mapping[str, float]]
    summary: str
    broken: bool = False
    env: Mapping[str, str | None] = field(default_factory=dict)  # applied before the child starts
    # What the fix's trials end with when it works: "ok", or "raised" for a fix whose point is to fail
    # fast with the real error instead of hanging (a collective timeout, an error handed on).
    expect: str = "ok"
    needs_fork: bool = False  # its workers must be forked (the failure, or the fix, is about fork itself)

    def check_platform(self, scenario: str) -> None:
        """A one-line :class:`BadInput` where this platform cannot run the variant (no ``os.fork`` on Windows)."""
        import os

        if self.needs_fork and not hasattr(os, "fork"):
            raise BadInput(f"{scenario} {self.name} forks its workers (its point is fork itself), and this platform "
                           "has no os.fork: run it on Linux, macOS or WSL 2")


@dataclass(frozen=True)
class Lesson:
    """A row of the notebooks' cheat-sheet: a failure mode as a workshop takes it home (markdown)."""

    failure_mode: str  # its name there ("thread race on model state"); the notebook's number is added
    shows: str  # what the user sees
    mechanism: str  # why it happens
    fix: str  # the fixes, in a line


@dataclass
class Scenario:
    """A failure mode with its broken variant and its fixes, side by side."""

    name: str
    summary: str
    source: str = ""  # the report it comes from (seed file, upstream issue)
    notebook: str = ""  # the notebook that teaches it (scenarios are listed in that order)
    section: int = 0  # its numbered section there ("## 2. ..."), 0 where the notebook is all its own; orders them
    confirmed_on: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # library -> release series seen on
    confirmed_setup: str = ""  # what it was seen on besides releases (machines, devices)
    knobs: tuple[Knob, ...] = ()
    metrics: tuple[Metric, ...] = ()
    main_fix: str | None = None  # what `labkit tour` compares the broken variant against
    # Once the failure is fixed, the A/B that matters between two fixes (the tour's second row), on
    # the first metric: for a race, a lock against batching.
    speed_pair: tuple[str, str] | None = None
    timeout: float = 60.0  # seconds from a trial's first line
    # Seconds of stillness (the trial's whole process tree using no CPU) after which it is hung
    # before its timeout; None where a trial may legitimately wait that long with every thread blocked.
    idle_after: float | None = 3.0
    quick: Mapping[str, Any] = field(default_factory=dict)  # knobs for a fast run that still fails
    variants: dict[str, Variant] = field(default_factory=dict)
    # Checks that need several knobs at once (a device map against its model); raises BadInput.
    check: Callable[[dict[str, Any]], None] | None = None
    # Whether a machine is exposed, judged from `labkit doctor`'s facts; None where no fact can show it.
    hazard: Rule | None = None
    # What the tables print (`labkit list --markdown`, in the README and the notebooks' README), in markdown:
    details: str = ""  # the README's "the failure": the summary told in full (the summary where empty)
    your_model: str = ""  # what `--set model=...` changes, where the scenario takes the user's model
    lessons: tuple[Lesson, ...] = ()  # its rows of the cheat-sheet

    def __post_init__(self) -> None:
        self.knobs = tuple(self.knobs)
        self.metrics = tuple(self.metrics)
        self.lessons = tuple(self.lessons)

    def variant(self, name: str, *, broken: bool = False, env: Mapping[str, str | None] | None = None,
                expect: str = "ok", needs_fork: bool = False):
        """Decorator that adds ``fn`` as variant ``name``; its docstring's first line is the summary."""

        def add(fn: Callable[..., Mapping[str, float]]):
            summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
            self.variants[name] = Variant(name, fn, summary, broken, dict(env or {}), expect, needs_fork)
            return fn

        return add

    def get_variant(self, name: str) -> Variant:
        try:
            return self.variants[name]
        except KeyError:
            raise BadInput(
                f"unknown variant {name!r} of {self.name}; allowed: {', '.join(self.variants)}"
            ) from None

    def get_metric(self, name: str | None) -> Metric:
        return self.metrics[0] if name is None else metric_named(self.metrics, name, self.name)

    def knob_values(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Every knob's value: defaults, replaced by ``overrides`` after checking them."""
        known = {k.name: k for k in self.knobs}
        unknown = set(overrides or {}) - set(known)
        if unknown:
            allowed = ", ".join(known) or "none"
            raise BadInput(f"unknown setting {sorted(unknown)[0]!r} for {self.name}; allowed: {allowed}")
        values = {k.name: k.default for k in self.knobs}
        values.update({name: known[name].check(v) for name, v in (overrides or {}).items()})
        if self.check is not None:
            self.check(values)
        return values

    @property
    def units(self) -> dict[str, str]:
        return {m.name: m.unit for m in self.metrics}

    @property
    def broken_variant(self) -> str | None:
        return next((v.name for v in self.variants.values() if v.broken), None)

    @property
    def fixes(self) -> list[str]:
        return [v.name for v in self.variants.values() if not v.broken]


_REGISTRY: dict[str, Scenario] = {}


def register(scenario: Scenario) -> Scenario:
    _REGISTRY[scenario.name] = scenario
    return scenario


def _load_builtins() -> None:
    """Import every module of :mod:`labkit.scenarios`; each registers what it defines."""
    import pkgutil

    import labkit.scenarios

    for module in pkgutil.iter_modules(labkit.scenarios.__path__):
        importlib.import_module(f"labkit.scenarios.{module.name}")


def all_scenarios() -> list[Scenario]:
    _load_builtins()
    # In the order they are taught, whatever order they were imported in; stable: a user's own come last.
    return sorted(_REGISTRY.values(), key=lambda s: (s.notebook or "~", s.section))


def get(name: str | Scenario) -> Scenario:
    if isinstance(name, Scenario):
        return name
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise BadInput(f"unknown scenario {name!r}; allowed: {', '.join(_REGISTRY)}") from None


def metric_named(metrics: Iterable[Metric], name: str, owner: str) -> Metric:
    """The metric called ``name``, or a :class:`BadInput` that lists the ones ``owner`` has."""
    metrics = list(metrics)
    for metric in metrics:
        if metric.name == name:
            return metric
    raise BadInput(f"unknown metric {name!r} for {owner}; allowed: {', '.join(m.name for m in metrics)}")


def positive(name: str, default: int, help: str, high: int = 256) -> Knob:
    """A count of threads, workers, requests...: at least 1."""
    return Knob(name, default, help, low=1, high=high)

