"""Results: a trial (one isolated run of one variant) and a trial set (every trial of one variant).

Both are immutable and round-trip through JSON: ``to_dict`` is the contract of ``labkit run --json``
(DESIGN.md), ``from_dict`` reads it back, and :meth:`TrialSet.load` reads every trial set in a file
that ``run --json``, ``compare --json`` or a tour's ``results.json`` wrote. The monitor's samples
do not travel in JSON (a tour keeps them as figures).
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from labkit.core._json import jsonable
from labkit.isolation.isolated import OUTCOMES, Isolated, Outcome
from labkit.isolation.stacks import frames
from labkit.machine.versions import running_on


# Seconds from a trial's first line to the start and end of what its scenario measures (thread-storm's
# generation, after its workers start): reported with the metrics, drawn by the plots, no metric of its own.
WINDOW = ("measured_start_s", "measured_end_s")

@dataclass(frozen=True)
class Trial:
    scenario: str
    variant: str
    index: int
    outcome: Outcome
    error: str | None
    seconds: float  # from the trial's first line to its end, or to the moment it was called hung
    metrics: Mapping[str, float]
    knobs: Mapping[str, Any]
    stacks: Mapping[int, str] = field(default_factory=dict)  # pid -> every thread's stack, when hung
    output: str = ""
    exitcode: int | None = None
    traceback: str | None = None
    samples: pd.DataFrame | None = field(default=None, repr=False, compare=False)  # the monitor's tidy frame
    notes: Mapping[str, str] = field(default_factory=dict)  # what the trial says of itself (devices used, and why)
    start: str = "warm"  # forked from a warm template, or a fresh interpreter (labkit.isolation)
    startup_seconds: float | None = None  # from asking for the process to the trial's first line

    @classmethod
    def of(cls, result: Isolated, *, scenario: str, variant: str, index: int, knobs: Mapping[str, Any],
           samples: pd.DataFrame | None = None) -> "Trial":
        """The trial an isolated call makes: its fields, its numbers as metrics, its text as notes."""
        value = result.value if isinstance(result.value, dict) else {}
        notes = {k: v for k, v in value.items() if isinstance(v, str)}
        if result.hung_by:
            notes["hung"] = result.hung_by
        carried = {f.name: getattr(result, f.name) for f in fields(Isolated) if f.name in _TRIAL_FIELDS}
        return cls(scenario=scenario, variant=variant, index=index, knobs=dict(knobs), samples=samples,
                   metrics=_numbers(value), notes=notes, **carried)

    def stack_frames(self) -> pd.DataFrame:
        """The stacks of a hung trial as rows: pid, thread, main (thread), depth (0 innermost), function, file, line.

        A thread is named as a reader tells them apart, ``main`` or ``thread 2``, ``thread 3``... in the
        order its process printed them (not by its address); a file by its path as imported
        (``torch/distributed/distributed_c10d.py``, ``threading.py``), not by where this machine keeps it.
        """
        rows, names = [], {}
        for f in frames(self.stacks):
            others = sum(pid == f.pid and name != "main" for (pid, _), name in names.items())
            name = names.setdefault((f.pid, f.thread), "main" if f.main else f"thread {others + 2}")
            rows.append({**vars(f), "thread": name, "file": _as_imported(f.file)})
        return pd.DataFrame(rows, columns=["pid", "thread", "main", "depth", "function", "file", "line"])

    def to_dict(self) -> dict[str, Any]:
        out = {
            "index": self.index,
            "outcome": self.outcome.value,
            "error": self.error,
            "seconds": round(self.seconds, 4),
            "metrics": dict(self.metrics),
            "knobs": dict(self.knobs),
            "start": self.start,
            "startup_seconds": None if self.startup_seconds is None else round(self.startup_seconds, 4),
        }
        if self.stacks:
            out["stacks"] = {str(pid): text for pid, text in self.stacks.items()}
        for key in ("exitcode", "traceback"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.notes:
            out["notes"] = dict(self.notes)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, scenario: str, variant: str) -> "Trial":
        return cls(
            scenario=scenario, variant=variant, index=data["index"], outcome=Outcome(data["outcome"]),
            error=data["error"], seconds=data["seconds"], metrics=data["metrics"], knobs=data["knobs"],
            stacks={int(pid): text for pid, text in data.get("stacks", {}).items()},
            exitcode=data.get("exitcode"), traceback=data.get("traceback"), notes=data.get("notes", {}),
            start=data.get("start", "fresh"), startup_seconds=data.get("startup_seconds"),
        )


_TRIAL_FIELDS = {f.name for f in fields(Trial)}


def _as_imported(path: str) -> str:
    """``path`` relative to the longest import root that holds it (site-packages, the standard library,
    labkit's own folder), as ``import`` finds it; unchanged where none does."""
    import sys

    import labkit

    roots = [*(p for p in sys.path if p and Path(p).is_absolute()), str(Path(labkit.__file__).parent.parent)]
    found = [root.rstrip("/") + "/" for root in roots if path.startswith(root.rstrip("/") + "/")]
    return path[len(max(found, key=len)):] if found else path


def _numbers(value: Mapping[str, Any]) -> dict[str, float]:
    """The metrics in what a variant returned: its numeric entries (its text entries are notes)."""
    return {k: v for k, v in value.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


@dataclass(frozen=True)
class TrialSet:
    """Every trial of one variant with one set of knobs."""

    scenario: str
    variant: str
    knobs: Mapping[str, Any]
    trials: tuple[Trial, ...] = ()
    units: Mapping[str, str] = field(default_factory=dict)  # metric name -> unit
    # The releases the trials ran on, so that a result that changed can be traced to one.
    versions: Mapping[str, str | None] = field(default_factory=running_on)

    def adding(self, trial: Trial) -> "TrialSet":
        """This set with one more trial (a new object: results are never changed in place)."""
        return replace(self, trials=(*self.trials, trial))

    def measured(self, metric: str, *, failed: bool = False) -> dict[int, float]:
        """``{trial index: value}`` of ``metric``: from trials that returned ("ok") unless ``failed``.

        A trial that raised, hung or came back wrong keeps what it measured on itself (``metrics``),
        but a partial run's numbers (tokens/s up to the step that failed) are not the variant's
        speed: medians and ratios leave them out unless asked for.
        """
        return {t.index: t.metrics[metric] for t in self.trials
                if t.metrics.get(metric) is not None and (failed or t.outcome == "ok")}

    def values(self, metric: str, *, failed: bool = False) -> list[float]:
        """The values of ``metric`` in trial order: ok trials only unless ``failed`` (see :meth:`measured`)."""
        return [t.metrics[metric] for t in self.trials
                if t.metrics.get(metric) is not None and (failed or t.outcome == "ok")]

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
            "knobs": dict(self.knobs),
            "trials": [t.to_dict() for t in self.trials],
            "units": dict(self.units),
            "summary": self.summary,
            "versions": dict(self.versions),
        }

    def to_json(self) -> str:
        return json.dumps(jsonable(self.to_dict()), indent=2)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrialSet":
        trials = tuple(Trial.from_dict(t, scenario=data["scenario"], variant=data["variant"]) for t in data["trials"])
        return cls(data["scenario"], data["variant"], data["knobs"], trials, data.get("units", {}), data.get("versions", {}))

    @classmethod
    def load(cls, path: str | Path) -> tuple["TrialSet", ...]:
        """Every trial set in a file: one from ``run --json``, two from ``compare --json``, two per
        scenario from a tour's ``results.json``."""
        return tuple(cls.from_dict(d) for d in _trial_sets(json.loads(Path(path).read_text())))

    def to_frame(self) -> pd.DataFrame:
        """Tidy: one row per (trial, metric), the wall-clock seconds of each trial included."""
        rows = []
        for t in self.trials:
            base = (self.scenario, self.variant, t.index, t.outcome.value)
            rows.append((*base, "seconds", t.seconds, "s"))
            rows.extend((*base, name, value, self.units.get(name, "")) for name, value in t.metrics.items())
        return pd.DataFrame(rows, columns=["scenario", "variant", "trial", "outcome", "metric", "value", "unit"])

    def samples(self) -> pd.DataFrame:
        """The monitor's samples of every trial, with a ``trial`` column."""
        parts = [t.samples.assign(trial=t.index) for t in self.trials if t.samples is not None]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def variants_table(trials: Mapping[str, Trial], *, metrics: Sequence[str] | None = None, digits: int | None = None,
                   notes: bool = False, errors: bool = False) -> pd.DataFrame:
    """One row per variant (the keys of ``trials``, one trial each): outcome, seconds, metrics.

    The wide view, for reading a few single trials side by side; ``TrialSet.to_frame`` stays the
    tidy one for analysis. ``metrics`` picks and orders the metric columns (a trial without one shows
    NaN), ``digits`` rounds the numbers, ``notes`` adds what each trial said of itself and ``errors``
    the first line of its error."""
    def numbers(t: Trial) -> dict[str, float | None]:
        chosen = [m for m in t.metrics if m not in WINDOW] if metrics is None else metrics
        found = {"seconds": t.seconds, **{m: t.metrics.get(m) for m in chosen}}
        return found if digits is None else {k: v if v is None else round(v, digits) for k, v in found.items()}

    parts = [pd.DataFrame.from_dict({v: {"outcome": t.outcome.value, **numbers(t)} for v, t in trials.items()}, orient="index")]
    if notes:
        parts.append(pd.DataFrame.from_dict({v: dict(t.notes) for v, t in trials.items()}, orient="index"))
    if errors:
        parts.append(pd.Series({v: (t.error or "").strip().split("\n")[0][:200] for v, t in trials.items()}, name="error"))
    return pd.concat(parts, axis=1)


def _trial_sets(data: Any) -> list[Mapping[str, Any]]:
    """The trial-set dicts inside what labkit wrote: a set, a comparison (its sides), or a list of them."""
    if isinstance(data, list):
        return [found for item in data for found in _trial_sets(item)]
    if isinstance(data, dict) and "trials" in data:
        return [data]
    if isinstance(data, dict) and "sides" in data:
        return [data["sides"]["a"], data["sides"]["b"]]
    raise ValueError("no labkit trials in this file: expected what `labkit run/compare --json` or a tour wrote")
