"""Figures that make their point: the trial's time told from its start-up, a measured window marked, a
sentence instead of empty axes, legends outside the data, units on every axis, plain numbers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

import labkit
from labkit import Metric, Scenario
from labkit.core import scenario as registry
from labkit.core.compare import Comparison
from labkit.core.sweep import Sweep
from labkit.core.trial import Outcome, Trial, TrialSet
from labkit.machine.monitor import NO_GPU, Sample, samples_frame
from labkit.ui import plots
from labkit.ui.plots import LivePlot, readable

from trial_functions import measures_a_window


def _frame(seconds: float, every: float = 0.1, marks: dict[str, float] | None = None) -> pd.DataFrame:
    """What a monitor records over ``seconds``: two cores, a tree using 1.5 cores with 4 threads."""
    times = np.arange(0, seconds + 1e-9, every)
    samples = [Sample(float(t), (math.nan, math.nan) if i == 0 else (60.0, 90.0), 1.5 * float(t), 4, 1, 0, 0, 1e8)
               for i, t in enumerate(times)]
    frame = samples_frame(samples)
    rows = pd.DataFrame([(t, "mark", name, t, "s") for name, t in (marks or {}).items()], columns=frame.columns)
    return pd.concat([frame, rows], ignore_index=True) if marks else frame


def _trial(variant: str = "broken", seconds: float = 2.0, metrics: dict | None = None, outcome: str = "ok",
           samples: pd.DataFrame | None = None, knobs: dict | None = None, scenario: str = "thread-storm") -> Trial:
    return Trial(scenario, variant, 0, Outcome(outcome), None if outcome == "ok" else "boom", seconds,
                 metrics if metrics is not None else {}, knobs or {}, samples=samples)


def _drawn(fig):
    FigureCanvasAgg(fig).draw()
    return fig.canvas.get_renderer()


def _texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts] + [t.get_text() for t in fig.texts]


def test_numbers_read_as_a_reader_wants_them():
    assert [readable(v) for v in (12.0, 2183.0, 151936, 0.09612, 12.903, 999.6, 0.000015, math.nan, None, True)] == \
        ["12", "2,183", "151,936", "0.0961", "12.9", "1,000", "1.50e-05", "–", "–", "True"]


def test_an_axis_says_its_unit_even_where_none_was_declared():
    assert plots.axis_label("items_per_s", "") == "items_per_s (items/s)"
    assert plots.axis_label("cpu_s_per_token", "CPU s/token") == "cpu_s_per_token (CPU s/token)"
    assert plots.is_speed("tokens_per_s") and plots.is_speed("cpu_s_per_token", "CPU s/token")
    assert not plots.is_speed("steps_completed", "steps") and not plots.is_speed("os_threads", "threads")


def test_a_trial_too_short_to_draw_gets_a_sentence_in_the_figures_place():
    """02's thread-device trial: over before the monitor's second reading, it drew as empty axes."""
    short = _trial("broken", seconds=0.04, outcome="raised", samples=_frame(0.1, marks={"first_line": 0.0}),
                   scenario="thread-device")
    fig = labkit.monitor_figure(short)
    assert fig.axes == [] and len(fig.texts) == 1
    assert fig.texts[0].get_text().startswith("thread-device / broken (raised): no plot: it ran 0.04 s, 2 readings")
    # its samples alone: the monitor's last reading came before its first line, and its end is not known
    assert plots.too_short(_frame(0.1, marks={"first_line": 0.15}), title="thread-device / broken") == (
        "thread-device / broken: no plot: 0 readings of the monitor during its code, one every 0.1 s: too few to draw; "
        "its numbers tell what it did")
    # the 0.3 s of 02's device-mismatch cell: four readings of one busy core, still no plot
    assert plots.too_short(_frame(0.3, marks={"first_line": 0.0})) is not None
    assert plots.too_short(_frame(0.6, marks={"first_line": 0.0})) is None
    # what ran before the first line is start-up, not the trial: 5 s of imports do not make it drawable
    assert plots.too_short(_frame(5.1, marks={"first_line": 5.0})) is not None


def test_the_measured_window_is_marked_and_told_from_start_up():
    """03's one-thread plot spanned 1.27 s of which 0.18 s was generation, unmarked: both variants looked alike."""
    trial = _trial(seconds=2.0, metrics={"tokens_per_s": 5.0, "measured_start_s": 1.2, "measured_end_s": 1.8},
                   samples=_frame(2.6, marks={"first_line": 0.5}))
    at = plots.spans(trial.samples, trial)
    assert at.measured == pytest.approx((1.7, 2.3)) and at.end == pytest.approx(2.5) and at.first_line == 0.5
    fig = labkit.monitor_figure(trial)
    timeline = fig.axes[0]
    assert [t.get_text() for t in timeline.get_yticklabels()] == ["trial", "measured"]
    assert {"start-up", "its code, 2.00 s", "measured, 0.60 s"} <= {t.get_text() for t in timeline.texts}
    bars = {round(p.get_x(), 3): round(p.get_width(), 3) for p in timeline.patches}
    assert bars == {0.0: 0.5, 0.5: 2.0, 1.7: 0.6}
    assert fig.get_suptitle() == "thread-storm / broken (ok)"


def test_a_hang_shows_its_stillness_on_a_row_of_its_own():
    trial = _trial(seconds=3.0, outcome="hung", samples=_frame(3.2, marks={"first_line": 0.1, "still_since": 0.2,
                                                                             "hung": 3.1}))
    fig = labkit.monitor_figure(trial)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["trial", "hang"]
    assert "no CPU: every thread blocked, 2.9 s" in _texts(fig) and "its code, 3.00 s until called hung" in _texts(fig)


def test_legends_sit_outside_the_data_and_every_axis_has_its_unit():
    """The blue OS-threads line ran through the legend in every live plot; 04's legend hid the phase a cell pointed at."""
    fig = labkit.monitor_figure(_frame(3.0))
    renderer = _drawn(fig)
    assert len(fig.axes) == 5  # time line, cores, colour bar, tree, its twin
    assert [t.get_text() for t in fig.axes[0].texts] == ["so far, 3.00 s"]  # a live redraw: no marks yet
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is not None:
            assert legend.get_window_extent(renderer).y0 >= ax.get_window_extent(renderer).y1 - 1
    labels = {label for ax in fig.axes for label in (ax.get_xlabel(), ax.get_ylabel()) if label}
    assert labels == {"core", "busy (%)", "CPU use (cores)", "OS threads (count)", "time (s)"}


def test_a_gpu_panel_has_its_units_and_its_legend_above_it():
    from labkit.machine.nvml import GpuSample

    samples = [Sample(t, (50.0,), t, 4, 1, 0, 0, 1e8, (GpuSample(0, 30.0, 2 * 2**30, 80 * 2**30, 300.0),))
               for t in np.arange(0, 1.01, 0.1)]
    fig = labkit.monitor_figure(samples_frame(samples))
    renderer = _drawn(fig)
    gpu = next(ax for ax in fig.axes if ax.get_title(loc="left") == "GPU (NVML)")
    assert gpu.get_ylabel() == "SM busy (%)" and "memory (GiB)" in [ax.get_ylabel() for ax in fig.axes]
    legend = gpu.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["gpu0 SM busy", "gpu0 memory"]
    assert legend.get_window_extent(renderer).y0 >= gpu.get_window_extent(renderer).y1 - 1
    assert NO_GPU not in _texts(fig)


def test_a_large_metric_reads_in_millions_not_with_an_offset():
    """00's A/B read "items_per_s ()" with a 1e7 in the corner."""
    sides = [TrialSet("functions", v, {}, tuple(_trial(v, metrics={"items_per_s": x * 1e7}, scenario="functions")
                                               for x in values))
             for v, values in (("python_loop", (2.9, 3.1, 3.3)), ("builtin_sum", (6.6, 6.8, 7.0)))]
    fig = labkit.comparison_figure(Comparison("functions", *sides, Metric("items_per_s", "")))
    _drawn(fig)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "items_per_s (million items/s)"
    assert ax.yaxis.get_offset_text().get_text() == ""
    assert all(t.get_text() in {"", *map(str, range(10, 100))} for t in ax.get_yticklabels())


def test_variants_side_by_side_make_the_difference_one_bar_apart():
    broken = _trial("broken", 3.0, {"tokens_per_s": 2.48, "cpu_s_per_token": 0.184, "os_threads": 12.0, "wall_s": 2.1},
                    samples=_frame(3.1, marks={"first_line": 0.0}))
    fixed = _trial("one-thread", 1.2, {"tokens_per_s": 30.9, "cpu_s_per_token": 0.0123, "os_threads": 4.0,
                                       "measured_start_s": 0.9, "measured_end_s": 1.1},
                   samples=_frame(1.3, marks={"first_line": 0.0}))
    hung = _trial("threadpool-limits", 5.0, {}, outcome="hung", samples=_frame(0.2, marks={"first_line": 0.0}))
    fig = labkit.variants_figure({"broken": broken, "one-thread": fixed, "threadpool-limits": hung})
    bars, over_time = fig.axes[:3], fig.axes[3]
    assert [ax.get_ylabel() for ax in bars] == ["tokens_per_s (tokens/s)", "cpu_s_per_token (CPU s/token)",
                                                 "os_threads (threads)"]  # the scenario's declared metrics, in order
    assert [ax.get_title(loc="left") for ax in bars] == ["higher is better", "lower is better", "lower is better"]
    assert [t.get_text() for t in bars[2].texts] == ["12", "4", "hung\nno value"]
    assert over_time.get_xlabel() == "time since the trial's first line (s)"
    legend = [t.get_text() for t in over_time.get_legend().get_texts()]
    assert legend == ["broken (3.00 s)", "one-thread (1.20 s)", "one-thread: measured"]  # the hung one: too short


def test_no_speed_figure_for_virtual_gpus():
    trial = _trial(seconds=1.0, outcome="raised", knobs={"gpus": 4}, scenario="device-mismatch",
                   samples=_frame(1.1, marks={"first_line": 0.0}))
    assert [t.get_text() for t in labkit.monitor_figure(trial).axes[0].texts] == ["its code"]  # no duration
    on_four = {v: _trial(v, 0.5, {"tokens_per_s": 80.0, "steps_completed": s}, knobs={"gpus": 4}, scenario="device-mismatch")
               for v, s in (("broken", 1.0), ("skip-keys", 6.0))}
    fig = labkit.variants_figure(on_four)
    assert [ax.get_ylabel() for ax in fig.axes] == ["steps_completed (steps)"]
    assert "virtual GPUs: no speed figures (their time is the CPU's)" in _texts(fig)


def test_a_sweep_says_what_its_knob_counts_and_ticks_at_the_swept_values():
    """01's sweep: "threads" on a log axis with ticks 2^0..2^3 where the heading says requests."""
    runs = tuple(TrialSet("thread-race", v, {"threads": n}, (_trial(v, metrics={"tokens_per_s": t * n}, scenario="thread-race"),))
                 for v, t in (("lock", 500.0), ("batched", 160.0)) for n in (1, 4, 8))
    fig = labkit.sweep_figure(Sweep("thread-race", {"threads": (1, 4, 8)}, runs), "tokens_per_s")
    ax = fig.axes[0]
    _drawn(fig)
    assert ax.get_xlabel() == "threads: concurrent requests (one client thread each)"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "4", "8"]
    assert ax.get_ylabel() == "tokens_per_s (tokens/s)"
    grid = tuple(TrialSet("thread-storm", "broken", {"threads": t, "workers": n},
                          (_trial(metrics={"tokens_per_s": 1234.4 / (t * n)}),)) for t in (1, 2) for n in (1, 4))
    heat = labkit.sweep_figure(Sweep("thread-storm", {"threads": (1, 2), "workers": (1, 4)}, grid), "tokens_per_s")
    assert heat.axes[1].get_ylabel() == "tokens_per_s (tokens/s)"  # the colour bar
    assert {"1,234", "617", "309", "154"} == set(_texts(heat))


def test_a_live_plot_says_in_words_what_a_trial_too_short_to_draw_was(tmp_path):
    class Handle:
        shown: list = []

        def update(self, obj):
            self.shown.append(obj)

    live = LivePlot("thread-device / broken", path=tmp_path / "short.png")
    live._handle = Handle()  # as in a notebook cell
    live.show(_trial(seconds=0.04, outcome="raised", samples=_frame(0.1, marks={"first_line": 0.0}),
                     scenario="thread-device"))
    said = Handle.shown[-1]
    assert type(said).__name__ == "Markdown" and "no plot: it ran 0.04 s" in said.data
    assert (tmp_path / "short.png").read_bytes()[:4] == b"\x89PNG"  # the sentence, where the file was asked for


@pytest.fixture
def measuring(monkeypatch):
    scen = Scenario("test-window", summary="set-up, then a measured window", metrics=(Metric("items_per_s", "1/s"),))
    scen.variant("broken", broken=True)(measures_a_window)
    monkeypatch.setitem(registry._REGISTRY, scen.name, scen)
    return scen


def test_a_real_trials_measured_window_lands_where_it_ran(measuring):
    """The variant reports its window from its own first line; the figure puts it on the monitor's clock."""
    trial = labkit.run("test-window", "broken").trials[0]
    at = plots.spans(trial.samples, trial)
    assert trial.outcome == "ok" and at.measured is not None
    start, end = at.measured
    # after its set-up (from its first line, which may fall a few ms before the monitor's first reading,
    # where the figure starts: seen once, 2 ms), inside the trial
    assert at.first_line + 0.4 <= start + 1e-6 and start < end <= at.end + 1e-6
    assert end - start >= 0.6
    last_reading = trial.samples.loc[trial.samples["source"].eq("tree"), "time_s"].max()
    assert end <= last_reading + 0.15  # the monitor saw the window's end, within one reading
    timeline = labkit.monitor_figure(trial).axes[0]
    assert [t.get_text() for t in timeline.get_yticklabels()] == ["trial", "measured"]
