"""Figures: the machine while a trial runs, trials of several variants side by side, A/B comparisons, sweeps.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot, so no global state and no GUI
backend) and shown in notebooks as PNGs through an updatable display handle. That is why the live
plot redraws from the cell that runs the trial, where an ipympl figure created in the same cell as
its update loop would not. With no front end (a script, a terminal) the live plot becomes a line of
text per redraw, and the same figure can be saved as a static PNG.

Every figure makes one point and says what it measured: the trial's own time is told from its
start-up, the window a variant measured is marked where it reports one, a trial too short to draw
gets a sentence instead of empty axes, legends sit outside the data, and every axis has its unit.
"""

from __future__ import annotations

import io
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, ScalarFormatter

from labkit.core.trial import WINDOW
from labkit.machine.monitor import NO_GPU

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.axis import Axis

    from labkit.core.compare import Comparison
    from labkit.core.sweep import Sweep
    from labkit.core.trial import Trial
    from labkit.machine.monitor import Monitor

# Fewer readings of a trial than this (10 per second) draw as a sentence, not a plot: three samples of
# one busy core say nothing about the trial.
MIN_READINGS = 5
# A variant that measures part of its run (the workers' generation, not their start-up) may report
# that window in its metrics, in seconds from its own first line; figures then mark it.
COLORS = ("tab:red", "tab:green", "tab:blue", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive")
TREE_CPU, TREE_THREADS, MEASURED, STILL = "tab:red", "tab:blue", "tab:green", "tab:red"


def readable(value: Any) -> str:
    """A number as a reader wants it: a whole number as an integer (``12``, ``2,183``), others to three
    significant digits with no exponent where none is needed (``0.0961``, ``12.9``, ``1,234``), and a
    dash for none or NaN. Text is returned as it is."""
    if value is None or isinstance(value, bool) or isinstance(value, str):
        return "–" if value is None else str(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(number):
        return "–"
    if math.isinf(number):
        return "∞" if number > 0 else "-∞"
    if number.is_integer() and abs(number) < 1e15:
        return f"{int(number):,}"
    size = abs(number)
    if size >= 999.5:  # f"{999.6:.3g}" would say 1e+03
        return f"{number:,.0f}"
    if size >= 1e-3:
        return f"{number:.3g}"
    return f"{number:.2e}"


def unit_of(name: str, unit: str | None = None) -> str:
    """``unit``, or where none was declared the one a metric's name says (``items_per_s``: items/s)."""
    if unit:
        return unit
    if name.endswith("_per_s"):
        return f"{name[:-len('_per_s')].replace('_', ' ') or '1'}/s"
    if name.endswith("_s"):
        return "s"
    if name.endswith("_bytes"):
        return "bytes"
    return ""


def axis_label(name: str, unit: str | None = None) -> str:
    """``name (unit)``; the name alone only where neither a declaration nor the name gives a unit."""
    found = unit_of(name, unit)
    return f"{name} ({found})" if found else name


def is_speed(name: str, unit: str | None = None) -> bool:
    """Whether a metric is a time or a rate: meaningless on virtual GPUs, whose time is the CPU's."""
    unit = unit_of(name, unit)
    return (name.endswith(("_s", "_ms")) or "_per_s" in name or "_s_per_" in name
            or unit in ("s", "ms") or "/s" in unit or "s/" in unit)


def plain_numbers(axis: "Axis", largest: float, name: str, unit: str | None = None) -> str:
    """Tick labels without an offset or an exponent: large values in thousands, millions or billions,
    said in the label this returns (``items_per_s (million items/s)``) instead of a ``1e7`` in a corner."""
    unit = unit_of(name, unit)
    for scale, word in ((1e9, "billion"), (1e6, "million"), (1e4, "thousand")):
        if abs(largest) >= scale:
            scale = 1e3 if word == "thousand" else scale
            axis.set_major_formatter(FuncFormatter(lambda v, _, s=scale: f"{v / s:g}"))
            return f"{name} ({word} {unit})" if unit else f"{name} ({word})"
    formatter = ScalarFormatter(useOffset=False)
    formatter.set_scientific(False)
    axis.set_major_formatter(formatter)
    return axis_label(name, unit)


# --- the machine during one trial -------------------------------------------------------------


@dataclass(frozen=True)
class Spans:
    """The moments of one trial on its samples' clock (seconds since the monitor started)."""

    first_line: float | None  # the trial's own code began (before it: start-up)
    end: float  # the trial ended, or was called hung
    measured: tuple[float, float] | None = None  # the window the variant measured, where it says
    still: tuple[float, float] | None = None  # no CPU in its whole process tree, before it was called hung
    hung: float | None = None
    stopped: float | None = None  # Stop was pressed here (a panel): the trial was killed

    @property
    def begin(self) -> float:
        return max(self.first_line or 0.0, 0.0)


def spans(samples: pd.DataFrame, trial: "Trial | None" = None) -> Spans:
    """Where a trial's start-up, own code, measured window and hang lie: from the marks the runner
    records on the monitor (``first_line``, ``hung``, ``still_since``), and from the trial itself where
    given (its seconds, and the window of :data:`WINDOW` in its metrics)."""
    marked = samples[samples["source"].eq("mark")]
    marks = dict(zip(marked["metric"], marked["value"].astype(float)))
    last = float(samples["time_s"].max()) if len(samples) else 0.0
    first = marks.get("first_line")
    hung, stopped = marks.get("hung"), marks.get("stopped")
    if hung is not None:
        end = hung
    elif stopped is not None:
        end = stopped
    elif trial is not None and first is not None:
        end = first + trial.seconds
    else:
        end = last
    measured = None
    if trial is not None and first is not None and all(k in trial.metrics for k in WINDOW):
        measured = (first + float(trial.metrics[WINDOW[0]]), first + float(trial.metrics[WINDOW[1]]))
    still = (marks["still_since"], hung) if "still_since" in marks and hung is not None else None
    return Spans(first, end, measured, still, hung, stopped)


def too_short(samples: pd.DataFrame | None, trial: "Trial | None" = None, title: str = "") -> str | None:
    """Why a trial gets no plot, as a sentence (``None``: it has enough to draw). Fewer than
    :data:`MIN_READINGS` readings of its own time make axes that look like data and say nothing."""
    name = title or (f"{trial.scenario} / {trial.variant}" if trial is not None else "the trial")
    said = f"{name} ({trial.outcome})" if trial is not None else name
    if samples is None or samples.empty:
        return f"{said}: no plot: the monitor took no reading of it"
    at = spans(samples, trial)
    tree = samples[samples["source"].eq("tree") & samples["metric"].eq("threads")]
    times = np.sort(tree["time_s"].unique())
    own = times[times >= at.begin - 1e-9]
    if len(own) >= MIN_READINGS:
        return None
    # samples alone do not say when it ended; a trial's clock and the monitor's may differ by a tick
    ran = "" if trial is None else ("it ran under 0.01 s, " if trial.seconds < 0.01 else f"it ran {trial.seconds:.2f} s, ")
    every = f", one every {np.median(np.diff(times)):.1f} s" if len(times) > 1 else ""
    count = f"{len(own)} reading{'s' if len(own) != 1 else ''}"
    return f"{said}: no plot: {ran}{count} of the monitor during its code{every}: too few to draw; its numbers tell what it did"


def note_figure(text: str) -> Figure:
    """A sentence where a figure would be: a trial too short to draw, a figure that does not apply."""
    lines = -(-len(text) // 115)  # about 115 characters of 10-point text fit across 9 inches
    fig = Figure(figsize=(9, 0.3 + 0.22 * lines))
    fig.text(0.01, 0.5, text, va="center", ha="left", fontsize=10, color="0.25", wrap=True)
    return fig


def monitor_figure(samples: "pd.DataFrame | Trial", title: str = "") -> Figure:
    """The machine while a trial ran: a time line of the trial (start-up, its own code, the window it
    measured where the variant reports one, the stillness that called it hung), per-core CPU as a heat
    strip, the trial's CPU use and OS threads, and GPU SM % and memory (on a machine without a GPU a
    line that says so instead of an empty panel).

    ``samples``: a :class:`~labkit.core.trial.Trial` (its measured window and end are known then) or
    the monitor's frame. A trial with fewer than :data:`MIN_READINGS` readings gets a sentence instead."""
    trial = None if isinstance(samples, pd.DataFrame) else samples
    frame = samples if trial is None else trial.samples
    title = title or (f"{trial.scenario} / {trial.variant}" if trial is not None else "")
    if (why := too_short(frame, trial, title)) is not None:
        return note_figure(why)
    if trial is not None:
        title = f"{title} ({trial.outcome})"
    at = spans(frame, trial)
    gpus = frame[frame["source"].str.startswith("gpu")]
    heights = [0.42, 1.1, 1.0] + [1.0] * bool(len(gpus))  # the time line stays while a live plot redraws
    fig = Figure(figsize=(9, 4.1 + 1.6 * bool(len(gpus))), layout="constrained")
    axes = list(fig.subplots(len(heights), 1, sharex=True, height_ratios=heights))
    fig.suptitle(title or "machine during the trial")
    end = max(float(frame["time_s"].max()), at.end, 0.1)
    virtual = trial is not None and (trial.knobs.get("gpus") or 0) > 0  # its time is the CPU's: no durations
    _timeline(axes.pop(0), at, end, timed=not virtual)
    _cores(fig, axes[0], frame)
    _tree(axes[1], frame)
    for ax in axes:
        if at.first_line is not None and at.first_line > 0.05:
            ax.axvspan(0, at.first_line, color="0.88", zorder=0)
        if at.measured is not None:
            ax.axvspan(*at.measured, color=MEASURED, alpha=0.1, zorder=0)
            for edge in at.measured:
                ax.axvline(edge, color=MEASURED, linewidth=1, linestyle=":")
        if at.hung is not None:
            ax.axvline(at.hung, color=STILL, linestyle="--", linewidth=1)
    if at.still is not None:
        axes[1].axvspan(*at.still, color=STILL, alpha=0.12, zorder=0)
    if len(gpus):
        _gpus(axes[2], gpus)
    else:
        fig.text(0.99, 0.005, NO_GPU, ha="right", va="bottom", fontsize=7, color="0.45")
    axes[-1].set_xlabel("time (s)")
    axes[-1].set_xlim(0, end)
    return fig


def _timeline(ax: "Axes", at: Spans, end: float, timed: bool = True) -> None:
    """One strip above the data: what each stretch of the time axis was, in words (and how long,
    where ``timed``: not on virtual GPUs, whose time is the CPU's)."""
    rows: list[tuple[str, float, float, str, str]] = []  # (row, start, stop, colour, text)

    def lasted(seconds: float, digits: int = 2) -> str:
        return f", {seconds:.{digits}f} s" if timed else ""

    if at.first_line is not None and at.first_line > 0.05:
        rows.append(("trial", 0.0, at.first_line, "0.8", "start-up"))
    known = at.first_line is not None  # not yet while a trial runs: the runner marks it at the end
    until = " until called hung" if at.hung is not None else " until Stop was pressed" if at.stopped is not None else ""
    rows.append(("trial", at.begin, at.end, "0.55", ("its code" if known or at.stopped is not None else "so far")
                 + lasted(at.end - at.begin) + until))
    if at.measured is not None:
        rows.append(("measured", at.measured[0], at.measured[1], MEASURED, "measured" + lasted(at.measured[1] - at.measured[0])))
    if at.still is not None:
        rows.append(("hang", at.still[0], at.still[1], STILL, "no CPU: every thread blocked" + lasted(at.still[1] - at.still[0], 1)))
    names = list(dict.fromkeys(row for row, *_ in rows))
    for row, start, stop, colour, text in rows:
        y = names.index(row)
        ax.barh(y, stop - start, left=start, height=0.7, color=colour, alpha=0.85 if colour != "0.8" else 1)
        inside = (stop - start) / end > 0.012 * len(text)  # the text fits in the bar at this width
        x = (start + stop) / 2 if inside else stop + end * 0.005
        ax.text(x, y, text, ha="center" if inside else "left", va="center", fontsize=7.5,
                color="white" if inside and colour != "0.8" else "0.15", clip_on=True)
    for moment in (at.hung, at.stopped):
        if moment is not None:
            ax.axvline(moment, color=STILL, linestyle="--", linewidth=1)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_ylim(len(names) - 0.4, -0.6)
    ax.tick_params(axis="y", length=0)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)


def _cores(fig: Figure, ax: "Axes", frame: pd.DataFrame) -> None:
    """Each core's busy % as a heat strip, each reading over the interval it covers."""
    cores = frame[frame["metric"].eq("cpu_percent") & frame["source"].str.startswith("cpu")]
    ax.set_title("per-core CPU (whole machine)", loc="left", fontsize=9)
    if not len(cores):
        ax.text(0.5, 0.5, "no per-core readings here", ha="center", va="center", transform=ax.transAxes, color="0.4")
        ax.set_yticks([])
        return
    grid = cores.pivot_table(index="source", columns="time_s", values="value")
    grid = grid.reindex(sorted(grid.index, key=lambda s: int(s[3:])))
    times = grid.columns.to_numpy(dtype=float)
    earlier = np.sort(frame.loc[frame["source"].eq("tree"), "time_s"].unique())
    before = earlier[earlier < times[0]]  # a core's reading covers the interval since the previous one
    start = before[-1] if len(before) else max(0.0, times[0] - (np.median(np.diff(times)) if len(times) > 1 else 0.1))
    edges = np.concatenate([[start], times])
    image = ax.pcolormesh(edges, np.arange(len(grid) + 1) - 0.5, grid.to_numpy(), vmin=0, vmax=100, cmap="magma")
    ax.set_ylim(len(grid) - 0.5, -0.5)
    every = -(-len(grid) // 8)  # at most 8 core labels: 16 of them overlap at this height
    ax.set_yticks(range(0, len(grid), every), grid.index[::every])
    ax.set_ylabel("core")
    fig.colorbar(image, ax=ax, label="busy (%)", pad=0.01)


def _tree(ax: "Axes", frame: pd.DataFrame) -> None:
    """The trial's process tree: cores it keeps busy, and its OS threads on a second axis."""
    tree = frame[frame["source"].eq("tree")]
    use = tree[tree["metric"].eq("cpu_percent")]
    threads = tree[tree["metric"].eq("threads")]
    cpu = ax.plot(use["time_s"], use["value"] / 100, color=TREE_CPU, label="CPU use (cores)")
    ax.set_ylabel("CPU use (cores)")
    ax.set_ylim(bottom=0, top=max(1.0, float(use["value"].max() / 100) * 1.1 if len(use) else 1.0))
    twin = ax.twinx()
    count = twin.plot(threads["time_s"], threads["value"], color=TREE_THREADS, drawstyle="steps-post", label="OS threads")
    twin.set_ylabel("OS threads (count)")
    twin.set_ylim(bottom=0, top=max(1.0, float(threads["value"].max()) * 1.1 if len(threads) else 1.0))
    twin.yaxis.get_major_locator().set_params(integer=True)
    ax.set_title("this process tree (the trial and its workers)", loc="left", fontsize=9)
    _legend_above(ax, cpu + count)


def _gpus(ax: "Axes", gpus: pd.DataFrame) -> None:
    lines = []
    for name, rows in gpus[gpus["metric"].eq("sm_percent")].groupby("source"):
        lines += ax.plot(rows["time_s"], rows["value"], label=f"{name} SM busy")
    ax.set_ylim(0, 100)
    ax.set_ylabel("SM busy (%)")
    mem = gpus[gpus["metric"].eq("memory_used")]
    total = gpus[gpus["metric"].eq("memory_total")]
    if len(mem):
        twin = ax.twinx()
        for name, rows in mem.groupby("source"):
            lines += twin.plot(rows["time_s"], rows["value"] / 2**30, linestyle="--", label=f"{name} memory")
        twin.set_ylim(0, float(total["value"].max()) / 2**30)
        twin.set_ylabel("memory (GiB)")
    ax.set_title("GPU (NVML)", loc="left", fontsize=9)
    _legend_above(ax, lines)


def _legend_above(ax: "Axes", handles: list) -> None:
    """The legend above the axes, right-aligned beside the panel's title: never over the data."""
    if handles:
        ax.legend(handles=handles, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=min(len(handles), 4),
                  fontsize=8, frameon=False, borderaxespad=0.2, handlelength=1.6)


# --- several variants, one trial each ----------------------------------------------------------


def variants_figure(trials: Mapping[str, "Trial"], metrics: Sequence[str] | None = None, title: str = "") -> Figure:
    """Trials of several variants side by side (one each, as :func:`~labkit.core.trial.variants_table`
    takes them): a bar per variant for each metric that matters, and each trial's CPU use on one time
    axis from its own first line, its measured window shaded. Where two live plots look alike (both
    keep the cores busy), the numbers they measured do not.

    ``metrics``: the bars (default: the scenario's declared metrics that some trial reports, at most
    three). Trials on virtual GPUs (knob ``gpus`` > 0) get no speed figure: their time is the CPU's."""
    if not trials:
        raise ValueError("variants_figure needs at least one trial")
    names = list(trials)
    colors = {name: COLORS[i % len(COLORS)] for i, name in enumerate(names)}
    first = next(iter(trials.values()))
    declared = _declared(first.scenario)
    virtual = any((t.knobs.get("gpus") or 0) > 0 for t in trials.values())
    reported = list(dict.fromkeys(m for t in trials.values() for m in t.metrics if m not in WINDOW))
    if metrics is None:
        chosen = [m for m in declared if m in reported] or reported
        chosen = [m for m in chosen if not (virtual and is_speed(m, declared.get(m, (None,))[0]))][:3]
    else:
        chosen = list(metrics)
    over_time = not virtual and any(too_short(t.samples, t) is None for t in trials.values())
    if not chosen and not over_time:
        return note_figure(f"{first.scenario}: nothing to compare: no metric"
                           + (" that is not a speed (virtual GPUs: their time is the CPU's)" if virtual else ""))
    fig = Figure(figsize=(9, 5.4 if over_time and chosen else 3.0), layout="constrained")
    grid = fig.add_gridspec(2 if over_time and chosen else 1, max(len(chosen), 1))
    for i, metric in enumerate(chosen):
        unit, higher = declared.get(metric, (None, None))
        _bars(fig.add_subplot(grid[0, i]), trials, metric, unit, higher, colors)
    if over_time:
        _over_time(fig.add_subplot(grid[-1, :]), trials, colors)
    fig.suptitle(title or f"{first.scenario}: {', '.join(names)}, one trial each", fontsize=11)
    if virtual:
        fig.text(0.99, 0.005, "virtual GPUs: no speed figures (their time is the CPU's)", ha="right", va="bottom",
                 fontsize=7, color="0.45")
    return fig


def _declared(scenario: str) -> dict[str, tuple[str, bool]]:
    """A scenario's declared metrics, ``{name: (unit, higher_is_better)}``, in its order (none for an
    unregistered one: a scenario defined in a script that has since gone)."""
    from labkit.core import scenario as registry
    from labkit.core.errors import BadInput

    try:
        scen = registry.get(scenario)
    except BadInput:
        return {}
    return {m.name: (m.unit, m.higher_is_better) for m in scen.metrics}


def _bars(ax: "Axes", trials: Mapping[str, "Trial"], metric: str, unit: str | None, higher: bool | None,
          colors: Mapping[str, str]) -> None:
    values = [trials[name].metrics.get(metric) for name in trials]
    shown = [v if v is not None else 0.0 for v in values]
    ax.bar(range(len(trials)), shown, color=[colors[name] for name in trials], width=0.6)
    largest = max((abs(v) for v in values if v is not None), default=1.0) or 1.0
    for x, (name, value) in enumerate(zip(trials, values)):
        if value is None:  # a trial that never got to measure it: what happened instead
            ax.text(x, 0, f"{trials[name].outcome}\nno value", ha="center", va="bottom", color="tab:red", fontsize=8)
        else:
            ax.text(x, value, readable(value), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(trials)), list(trials), fontsize=8, rotation=20 if len(trials) > 3 else 0)
    ax.set_ylim(0, largest * 1.18)
    ax.set_ylabel(plain_numbers(ax.yaxis, largest, metric, unit), fontsize=8)
    if higher is not None:
        ax.set_title(f"{'higher' if higher else 'lower'} is better", fontsize=8, loc="left", color="0.35")
    ax.tick_params(axis="y", labelsize=8)


def _over_time(ax: "Axes", trials: Mapping[str, "Trial"], colors: Mapping[str, str]) -> None:
    handles = []
    for name, trial in trials.items():
        if too_short(trial.samples, trial) is not None:
            continue
        at = spans(trial.samples, trial)
        use = trial.samples[trial.samples["source"].eq("tree") & trial.samples["metric"].eq("cpu_percent")]
        use = use[use["time_s"] >= at.begin]
        handles += ax.plot(use["time_s"] - at.begin, use["value"] / 100, color=colors[name],
                           label=f"{name} ({trial.seconds:.2f} s)")
        if at.measured is not None:
            handles.append(ax.axvspan(at.measured[0] - at.begin, at.measured[1] - at.begin, color=colors[name],
                                      alpha=0.12, label=f"{name}: measured"))
        if at.hung is not None:
            ax.axvline(at.hung - at.begin, color=colors[name], linestyle="--", linewidth=1)
    ax.set_ylim(bottom=0)
    ax.set_xlim(left=0)
    ax.set_xlabel("time since the trial's first line (s)")
    ax.set_ylabel("CPU use (cores)")
    ax.set_title("the trials' process trees", loc="left", fontsize=9)
    _legend_above(ax, handles)


# --- A/B and sweeps ----------------------------------------------------------------------------


def comparison_figure(comparison: "Comparison", ax=None) -> Figure:
    """Each trial's value of the chosen metric, side by side, medians marked, verdict in the title."""
    fig = Figure(figsize=(6, 3.6), layout="constrained") if ax is None else ax.figure
    ax = ax or fig.subplots()
    name, unit = comparison.metric.name, comparison.metric.unit
    if is_speed(name, unit) and any((side.knobs.get("gpus") or 0) > 0 for side in (comparison.a, comparison.b)):
        ax.text(0.5, 0.5, f"virtual GPUs: no {name} figure (their time is the CPU's)", ha="center", va="center",
                transform=ax.transAxes, color="0.35")
        ax.set_axis_off()
        return fig
    largest = 0.0
    for x, side in enumerate((comparison.a, comparison.b)):
        values = side.values(name)
        jitter = np.linspace(-0.08, 0.08, len(values)) if len(values) > 1 else [0.0]
        ax.scatter(np.full(len(values), x) + jitter, values, alpha=0.7)
        if values:
            ax.hlines(float(np.median(values)), x - 0.25, x + 0.25, color="black")
            largest = max(largest, max(abs(v) for v in values))
        else:  # a side that never finished (hung, crashed) has nothing to plot: say what happened
            ax.text(x, 0.5, f"{side.outcome_text()}\nno {name}", ha="center", va="center",
                    transform=ax.get_xaxis_transform(), color="tab:red")
    ax.set_xticks([0, 1], list(comparison.labels))  # "v (A)", "v (B)" when a variant is run against itself
    ax.set_xlim(-0.6, 1.6)
    ax.set_ylabel(plain_numbers(ax.yaxis, largest, name, unit))
    ax.set_title(comparison.verdict, fontsize=8, wrap=True)
    return fig


def sweep_figure(sweep: "Sweep", metric: str) -> Figure:
    """Lines over one knob, or a heat map over two, one panel per variant (medians). Axes say what a
    knob is (its help: "threads: concurrent requests") and the metric's unit; ticks sit at the swept values."""
    table = sweep.table(metric)
    knobs = list(sweep.grid)
    variants = list(dict.fromkeys(table.index.get_level_values("variant")))
    unit, _ = _declared(sweep.scenario).get(metric, (None, None))
    fig = Figure(figsize=(4.2 * len(variants) if len(knobs) == 2 else 6.4, 3.8), layout="constrained")
    if len(knobs) == 1:
        ax = fig.subplots()
        values = [v for v in sweep.grid[knobs[0]]]
        handles = []
        for variant in variants:
            rows = table.loc[variant]
            handles += ax.plot(rows.index, rows["median"], marker="o", label=variant)
        numeric = all(isinstance(v, (int, float)) and v > 0 for v in values)
        if numeric and max(values) / min(values) >= 4:  # doublings: equal steps on a log axis
            ax.set_xscale("log", base=2)
            ax.minorticks_off()
        if numeric:
            ax.set_xticks(values, [readable(v) for v in values])
        ax.set_xlabel(_knob_label(sweep.scenario, knobs[0]))
        largest = float(np.nanmax(np.abs(table["median"].to_numpy()))) if len(table) else 0.0
        ax.set_ylabel(plain_numbers(ax.yaxis, largest if math.isfinite(largest) else 0.0, metric, unit))
        ax.set_title("median of each setting's trials", loc="left", fontsize=9, color="0.35")
        _legend_above(ax, handles)
        return fig
    axes = np.atleast_1d(fig.subplots(1, len(variants)))
    for ax, variant in zip(axes, variants):
        grid = table.loc[variant]["median"].unstack(knobs[1])
        image = ax.imshow(grid.to_numpy(), origin="lower", cmap="viridis", aspect="auto")
        ax.set_xticks(range(grid.shape[1]), [readable(v) for v in grid.columns])
        ax.set_yticks(range(grid.shape[0]), [readable(v) for v in grid.index])
        ax.set_xlabel(_knob_label(sweep.scenario, knobs[1], short=True))
        ax.set_ylabel(_knob_label(sweep.scenario, knobs[0], short=True))
        ax.set_title(variant, fontsize=9)
        for (i, j), value in np.ndenumerate(grid.to_numpy()):  # dark text on the bright end of the map
            bright = image.norm(value) > 0.55
            ax.text(j, i, readable(value), ha="center", va="center", fontsize=8, color="black" if bright else "white")
        fig.colorbar(image, ax=ax, label=axis_label(metric, unit))
    return fig


def _knob_label(scenario: str, knob: str, short: bool = False) -> str:
    """A knob's name and what it counts (its help, up to a parenthesis or semicolon where ``short``)."""
    from labkit.core import scenario as registry
    from labkit.core.errors import BadInput

    try:
        found = next((k for k in registry.get(scenario).knobs if k.name == knob), None)
    except BadInput:
        found = None
    if found is None or not found.help:
        return knob
    help_ = found.help.split(";")[0]
    if short:
        help_ = help_.split(" (")[0]
    label = f"{knob}: {help_}"
    return knob if short and len(label) > 40 else label  # a heat map's side is short: a long help would be cut


# --- output -----------------------------------------------------------------------------------


def png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()


def save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def _show_figures_inline() -> None:
    """Let a bare ``Figure`` (returned by ``.plot()``) render as a PNG in a notebook cell."""
    if in_notebook():
        from IPython import get_ipython

        get_ipython().display_formatter.formatters["image/png"].for_type(Figure, png)


_show_figures_inline()


def status_line(samples: pd.DataFrame, title: str = "") -> str:
    """The latest reading of each series as one line: what a terminal gets instead of the figure."""
    latest = samples.sort_values("time_s").groupby(["source", "metric"])["value"].last()
    cores = [v for (source, metric), v in latest.items() if source.startswith("cpu") and metric == "cpu_percent"]
    parts = [f"{title or 'trial'} at {samples['time_s'].max():.1f} s",
             f"machine {np.mean(cores):.0f}% busy ({len(cores)} cores)" if cores else "machine: no reading yet"]
    if ("tree", "threads") in latest:
        parts.append(f"trial {latest.get(('tree', 'cpu_percent'), 0.0) / 100:.1f} cores, "
                     f"{latest[('tree', 'threads')]:.0f} threads, {latest[('tree', 'rss')] / 2**20:.0f} MiB")
    parts += [f"{source} {v:.0f}% SM" for (source, metric), v in latest.items() if metric == "sm_percent"]
    return " | ".join(parts)


class LivePlot:
    """Redraw the monitor figure in place while a trial runs: pass it as ``on_tick``.

    Rendering costs CPU in this process, on the same cores the trial uses, so it redraws at most
    every ``every`` seconds; leave it out when the numbers matter more than the picture.
    """

    def __init__(self, title: str = "", every: float = 1.0, image=None, path: str | Path | None = None):
        """``image``: an ``ipywidgets.Image`` to draw into (from any thread, as panels do); else a
        display handle in the current cell; else, with no front end, a :func:`status_line` per redraw
        on stderr. ``path``: also save the final figure there as a PNG (:meth:`show`)."""
        self.title, self.every, self.image, self.path = title, every, image, path
        self._last = 0.0
        self._handle = None
        if image is None and in_notebook():
            from IPython.display import display

            self._handle = display(f"{title}: waiting for the first samples...", display_id=True)

    def __call__(self, monitor: "Monitor") -> None:
        if time.monotonic() - self._last < self.every:
            return
        self._last = time.monotonic()
        samples = monitor.to_frame()
        if samples.empty:
            return
        if not self._on_screen:
            print(status_line(samples, self.title), file=sys.stderr, flush=True)
        elif too_short(samples) is None:  # a few readings would draw as empty axes: wait for more
            self._draw(monitor_figure(samples, self.title))

    def show(self, trial: "Trial | pd.DataFrame") -> None:
        """Draw the final picture once the trial is over, saved to ``path`` if given: from the
        :class:`~labkit.core.trial.Trial` (its measured window marked) or its samples. A trial too
        short to draw says so in the figure's place."""
        self._last = time.monotonic()
        samples = trial if isinstance(trial, pd.DataFrame) else trial.samples
        if samples is None or (samples.empty and isinstance(trial, pd.DataFrame)):
            return
        if not (self._on_screen or self.path):
            return
        why = too_short(samples, None if isinstance(trial, pd.DataFrame) else trial, self.title)
        fig = monitor_figure(trial, self.title)
        if self.path is not None:
            where = save(fig, self.path)
            if not self._on_screen:
                print(f"{self.title or 'trial'}: figure saved to {where}", file=sys.stderr, flush=True)
        if why is not None and self._handle is not None:  # a sentence, as text a reader can select
            from IPython.display import Markdown

            self._handle.update(Markdown(f"*{why}*"))
        elif self._on_screen:
            self._draw(fig)

    @property
    def _on_screen(self) -> bool:
        return self._handle is not None or self.image is not None

    def _draw(self, fig: Figure) -> None:
        picture = png(fig)
        if self.image is not None:
            self.image.value = picture
        else:
            from IPython.display import Image

            self._handle.update(Image(picture))
