"""Figures: the machine while a trial runs, A/B comparisons, sweeps.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot, so no global state and no GUI
backend) and shown in notebooks as PNGs through an updatable display handle. That is why the live
plot redraws from the cell that runs the trial, where an ipympl figure created in the same cell as
its update loop would not. With no front end (a script, a terminal) the live plot becomes a line of
text per redraw, and the same figure can be saved as a static PNG.
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from labkit.machine.monitor import NO_GPU

if TYPE_CHECKING:
    from labkit.core.compare import Comparison
    from labkit.machine.monitor import Monitor
    from labkit.core.sweep import Sweep


def monitor_figure(samples: pd.DataFrame, title: str = "") -> Figure:
    """Per-core CPU as a heat strip, the trial's CPU use and threads, and GPU SM % and memory (on a
    machine without a GPU, a line that says so instead of an empty panel). The trial's marks (see
    :meth:`~labkit.machine.monitor.Monitor.mark`) shade its start-up and the stillness of a hang."""
    gpus = samples[samples["source"].str.startswith("gpu")]
    panels = 3 if len(gpus) else 2
    fig = Figure(figsize=(9, 5.2 if len(gpus) else 3.8), layout="constrained")
    axes = fig.subplots(panels, 1, sharex=True, height_ratios=[1.2, 1, 1][:panels])
    fig.suptitle(title or "machine during the trial")
    end = float(samples["time_s"].max()) if len(samples) else 1.0

    cores = samples[samples["metric"].eq("cpu_percent") & samples["source"].str.startswith("cpu")]
    if len(cores):
        grid = cores.pivot_table(index="source", columns="time_s", values="value")
        grid = grid.reindex(sorted(grid.index, key=lambda s: int(s[3:])))
        image = axes[0].imshow(grid.to_numpy(), aspect="auto", vmin=0, vmax=100, cmap="magma", interpolation="nearest",
                               extent=(0, end, len(grid) - 0.5, -0.5))
        every = -(-len(grid) // 8)  # at most 8 core labels: 16 of them overlap at this height
        axes[0].set_yticks(range(0, len(grid), every), grid.index[::every])
        fig.colorbar(image, ax=axes[0], label="busy %", pad=0.01)
    axes[0].set_title("per-core CPU (whole machine)", loc="left", fontsize=9)

    tree = samples[samples["source"].eq("tree")]
    use = tree[tree["metric"].eq("cpu_percent")]
    threads = tree[tree["metric"].eq("threads")]
    axes[1].plot(use["time_s"], use["value"] / 100, color="tab:red", label="CPU use (cores)")
    axes[1].set_ylabel("cores busy")
    axes[1].set_ylim(bottom=0)
    twin = axes[1].twinx()
    twin.plot(threads["time_s"], threads["value"], color="tab:blue", drawstyle="steps-post", label="OS threads")
    twin.set_ylabel("OS threads")
    twin.set_ylim(bottom=0)
    axes[1].set_title("this process tree (the trial and its workers)", loc="left", fontsize=9)

    marked = samples[samples["source"].eq("mark")]
    marks = dict(zip(marked["metric"], marked["value"]))
    if marks.get("first_line", 0) > 0.05:
        for ax in axes[:2]:
            ax.axvspan(0, marks["first_line"], color="0.85", zorder=0)
        axes[1].axvspan(0, 0, color="0.85", label="start-up (before the trial's code)")
    if "hung" in marks:
        since = marks.get("still_since", marks["hung"])
        axes[1].axvspan(since, marks["hung"], color="tab:red", alpha=0.15, zorder=0,
                        label="no CPU: every thread blocked" if "still_since" in marks else None)
        for ax in axes[:2]:
            ax.axvline(marks["hung"], color="tab:red", linestyle="--")
        axes[1].annotate("called hung", (marks["hung"], 1), xycoords=("data", "axes fraction"), xytext=(-4, -10),
                         textcoords="offset points", ha="right", fontsize=8, color="tab:red")
    axes[1].legend(handles=axes[1].get_legend_handles_labels()[0] + twin.lines, loc="upper left", fontsize=8)

    if len(gpus):
        for name, rows in gpus[gpus["metric"].eq("sm_percent")].groupby("source"):
            axes[2].plot(rows["time_s"], rows["value"], label=f"{name} SM %")
        mem = gpus[gpus["metric"].eq("memory_used")]
        total = gpus[gpus["metric"].eq("memory_total")]
        if len(mem):
            twin2 = axes[2].twinx()
            for name, rows in mem.groupby("source"):
                twin2.plot(rows["time_s"], rows["value"] / 2**30, linestyle="--", label=f"{name} memory GiB")
            twin2.set_ylim(0, float(total["value"].max()) / 2**30)
            twin2.set_ylabel("GiB")
        axes[2].set_ylim(0, 100)
        axes[2].legend(loc="upper left", fontsize=8)
        axes[2].set_title("GPU (NVML)", loc="left", fontsize=9)
    else:
        fig.text(0.99, 0.005, NO_GPU, ha="right", va="bottom", fontsize=7, color="0.45")
    axes[-1].set_xlabel("seconds")
    axes[-1].set_xlim(0, max(end, 0.1))
    return fig


def comparison_figure(comparison: "Comparison", ax=None) -> Figure:
    """Each trial's value of the chosen metric, side by side, medians marked, verdict in the title."""
    fig = Figure(figsize=(6, 3.6), layout="constrained") if ax is None else ax.figure
    ax = ax or fig.subplots()
    name = comparison.metric.name
    for x, side in enumerate((comparison.a, comparison.b)):
        values = side.values(name)
        jitter = np.linspace(-0.08, 0.08, len(values)) if len(values) > 1 else [0.0]
        ax.scatter(np.full(len(values), x) + jitter, values, alpha=0.7)
        if values:
            ax.hlines(float(np.median(values)), x - 0.25, x + 0.25, color="black")
        else:  # a side that never finished (hung, crashed) has nothing to plot: say what happened
            ax.text(x, 0.5, f"{side.outcome_text()}\nno {name}", ha="center", va="center",
                    transform=ax.get_xaxis_transform(), color="tab:red")
    ax.set_xticks([0, 1], list(comparison.labels))  # "v (A)", "v (B)" when a variant is run against itself
    ax.set_xlim(-0.6, 1.6)
    ax.set_ylabel(f"{name} ({comparison.metric.unit})")
    ax.set_title(comparison.verdict, fontsize=8, wrap=True)
    return fig


def sweep_figure(sweep: "Sweep", metric: str) -> Figure:
    """Lines over one knob, or a heat map over two, one panel per variant (medians)."""
    table = sweep.table(metric)
    knobs = list(sweep.grid)
    variants = list(dict.fromkeys(table.index.get_level_values("variant")))
    fig = Figure(figsize=(4.2 * len(variants) if len(knobs) == 2 else 6, 3.6), layout="constrained")
    if len(knobs) == 1:
        ax = fig.subplots()
        for variant in variants:
            rows = table.loc[variant]
            ax.plot(rows.index, rows["median"], marker="o", label=variant)
        ax.set_xlabel(knobs[0])
        ax.set_ylabel(metric)
        ax.set_xscale("log", base=2)
        ax.legend()
        return fig
    axes = np.atleast_1d(fig.subplots(1, len(variants)))
    for ax, variant in zip(axes, variants):
        grid = table.loc[variant]["median"].unstack(knobs[1])
        image = ax.imshow(grid.to_numpy(), origin="lower", cmap="viridis", aspect="auto")
        ax.set_xticks(range(grid.shape[1]), grid.columns)
        ax.set_yticks(range(grid.shape[0]), grid.index)
        ax.set_xlabel(knobs[1])
        ax.set_ylabel(knobs[0])
        ax.set_title(variant, fontsize=9)
        for (i, j), value in np.ndenumerate(grid.to_numpy()):  # dark text on the bright end of the map
            bright = image.norm(value) > 0.55
            ax.text(j, i, f"{value:.3g}", ha="center", va="center", fontsize=8, color="black" if bright else "white")
        fig.colorbar(image, ax=ax, label=metric)
    return fig


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
        if self._on_screen:
            self._draw(monitor_figure(samples, self.title))
        else:
            print(status_line(samples, self.title), file=sys.stderr, flush=True)

    def show(self, samples: pd.DataFrame) -> None:
        """Draw ``samples`` now: the final picture once the trial is over, saved to ``path`` if given."""
        self._last = time.monotonic()
        if samples.empty or not (self._on_screen or self.path):
            return
        fig = monitor_figure(samples, self.title)
        if self.path is not None:
            where = save(fig, self.path)
            if not self._on_screen:
                print(f"{self.title or 'trial'}: figure saved to {where}", file=sys.stderr, flush=True)
        if self._on_screen:
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
