"""Panels: Run in a background thread, Stop kills the trial, the table grows, bad settings are messages."""

import html
import re
import time

import psutil

from labkit.core.trial import Trial
from labkit.machine import monitor, nvml
from labkit.ui.widgets import device_map_panel, panel


def test_run_twice_grows_the_table_and_draws_the_plot(cheap):
    box = panel("test-count")
    runner = box.runner
    for expected_rows in (1, 2):
        runner.run_button.click()
        assert runner.stop_button.disabled is False  # the click returned while the trial runs
        runner.thread.join(60)
        assert len(runner.rows) == expected_rows and runner.table.value.split("<tbody>")[1].count("<tr>") == expected_rows
    assert "<b>ok</b>" in runner.status.value and runner.run_button.disabled is False
    assert runner.plot.value[:4] == b"\x89PNG"


def test_stop_kills_a_hung_trial_and_leaves_nothing_behind(cheap):
    box = panel("test-hang", timeout=30)
    runner = box.runner
    runner.run_button.click()
    deadline = time.monotonic() + 60
    while not _trials() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _trials(), "the trial never started"
    t0 = time.monotonic()
    runner.stop_button.click()
    runner.thread.join(10)
    assert time.monotonic() - t0 < 5 and not runner.thread.is_alive()
    assert "stopped" in runner.status.value
    assert _trials() == []
    assert runner.rows[-1]["outcome"] == "stopped"  # recorded in the table


def test_a_stopped_runs_plot_ends_where_stop_was_pressed():
    from labkit.machine.monitor import Monitor
    from labkit.ui.plots import monitor_figure, spans

    began = time.monotonic()
    with Monitor(interval=0.05, gpu=False) as mon:
        while time.monotonic() - began < 0.6:  # long enough for a plot (at least 5 readings)
            pass
        mon.mark("first_line", began)
        mon.mark("stopped", time.monotonic())
    at = spans(mon.to_frame())
    assert at.stopped is not None and at.end == at.stopped and at.hung is None
    words = [t.get_text() for ax in monitor_figure(mon.to_frame()).axes for t in ax.texts]
    assert any(w.endswith("until Stop was pressed") for w in words), words


def _trials() -> list:
    """This process's live descendants but the warm templates (which stay, ready for the next trial)."""
    from labkit.isolation.warm import live_templates

    templates = set(live_templates())
    return [p for p in psutil.Process().children(recursive=True)
            if p.pid not in templates and p.status() != psutil.STATUS_ZOMBIE]


def test_an_invalid_device_map_is_a_message_and_nothing_runs():
    box = device_map_panel()
    runner = box.runner
    assert box.controls["embeddings"].value == box.controls["layer 0"].value == "cpu"  # accelerate's balanced plan
    box.controls["layer 2"].value = ""
    runner.run_button.click()
    assert runner.thread is None
    assert "no device for layer 2; every row needs one" in runner.status.value


def test_the_device_map_panel_offers_virtual_gpus_and_plans_over_them():
    box = device_map_panel(gpus=4)
    assert box.controls["head"].options == ("", "cpu", "cuda:0", "cuda:1", "cuda:2", "cuda:3", "meta")
    assert {box.controls[row].value for row in ("embeddings", "layer 2", "head")} <= {"cuda:0", "cuda:1", "cuda:2", "cuda:3"}
    assert "'gpus': 4, 'gpu_memory': '24GiB'" in box._repr_mimebundle_()["text/plain"]  # what Run runs
    box.controls["gpus"].value = 2  # accelerate plans again, over two
    assert box.controls["head"].options[-2:] == ("cuda:1", "meta") and box.controls["embeddings"].value == "cuda:0"
    box.controls["gpu_memory"].value = "lots"
    box.controls["balanced"].click()
    assert "memory &#x27;lots&#x27; is not a size" in box.runner.status.value and box.runner.thread is None


def test_a_missing_gpu_is_said_once_quietly_in_the_panel_not_as_a_warning(cheap, monkeypatch, caplog):
    """A stderr warning in every panel reads as an error on every laptop without a GPU."""
    monkeypatch.setattr(nvml, "open_gpus", lambda: (None, "no GPU here (test)"))
    monkeypatch.setattr(monitor, "_said_no_gpu", False)
    with caplog.at_level("WARNING", logger="labkit"):
        runner = panel("test-count").runner
        runner.run_button.click()
        runner.thread.join(60)
    assert not caplog.records
    assert "no GPU: CPU only" in runner.status.value and "ok" in runner.status.value


def test_the_results_table_reads_settings_outcome_metrics_error_whichever_run_came_first():
    from labkit.ui.widgets import results_html

    table = results_html([{"run": 1, "threads": 2, "outcome": "raised", "error": "boom"},
                          {"run": 2, "threads": 4, "outcome": "ok", "tokens_per_s": 12.5, "error": ""}])
    header = [re.sub(r"<[^>]+>", "", cell) for cell in re.findall(r"<th[^>]*>(.*?)</th>", table)]
    assert header == ["run", "threads", "outcome", "tokens_per_s", "error"]
    assert "NaN" not in table and "–" in table


def _cells(table: str) -> list[list[str]]:
    body = table.split("<tbody>")[1]
    return [[re.sub(r"<[^>]+>", "", cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row)]
            for row in re.findall(r"<tr>(.*?)</tr>", body)]


def test_the_table_reads_as_a_reader_wants_it():
    """03's panel in JupyterLab: os_threads 12.0, ctx_involuntary 2180.0 (of 2183), an error cut mid-word
    at 80 characters with no ellipsis, and headers too wide for the 900 px box."""
    from labkit.ui.widgets import ERROR_CHARS, results_html

    error = ("RuntimeError: Expected all tensors to be on the same device, but found at least two devices, "
             "cuda:1 and cuda:0! (when checking argument for argument mat2 in method wrapper_CUDA_mm)")
    table = results_html([{"run": 1, "variant": "broken", "vocab": 151936, "outcome": "raised",
                           "os_threads": 12, "ctx_involuntary": 2183.0, "cpu_s_per_token": 0.0961234, "error": error},
                          {"run": 2, "variant": "one-thread", "vocab": 151936, "outcome": "ok", "os_threads": 4,
                           "ctx_involuntary": float("nan"), "cpu_s_per_token": 0.0123, "error": ""}],
                         {"cpu_s_per_token": "CPU s/token"})
    first, second = _cells(table)
    assert first[:7] == ["1", "broken", "151,936", "raised", "12", "2,183", "0.0961"]
    assert second[:7] == ["2", "one-thread", "151,936", "ok", "4", "–", "0.0123"]
    shown = html.unescape(first[-1])
    assert shown.endswith("…") and len(shown) <= ERROR_CHARS + 1 and error.startswith(shown[:-1])
    assert error[len(shown) - 1] == " " and shown[:-1] == shown[:-1].rstrip()  # cut at a word, not in one
    assert f"title='{html.escape(error, quote=True)}'" in table  # the whole text on hover
    assert "cpu_s_<wbr>per_<wbr>token<br>" in table and "CPU s/token" in table  # wraps only between its words
    assert second[-1] == "–"


def test_a_cut_error_is_whole_under_the_table(cheap):
    from labkit.isolation.isolated import Outcome
    from labkit.ui.plots import LivePlot

    runner = panel("test-count").runner
    error = "ValueError: " + " ".join(f"word{i}" for i in range(60))
    trial = Trial("test-count", "slow", 0, Outcome.RAISED, error, 0.1, {"items_per_s": 5.0}, {"items": 10})
    runner.record(trial, LivePlot("x", image=runner.plot), {"variant": "slow", "items": 10})
    assert f"<b>error</b>: {error}" in runner.details.value
    assert "items_<wbr>per_s<br><span style='font-weight:normal;color:#777'>1/s</span>" in runner.table.value


def test_a_slider_reaches_past_the_starting_value_where_the_setting_allows():
    """03's vocab slider stopped at its starting 151,936 where the setting allows 300,000."""
    controls = panel("thread-storm", knobs=["workers", "vocab", "tokens"]).controls
    assert controls["vocab"].max == 300_000 and controls["vocab"].value == 151_936
    assert controls["workers"].max == 16 and controls["tokens"].max == 16  # counts stay kind to a laptop
    assert panel("thread-race", knobs=["threads"]).controls["threads"].max == 16  # 8 requests to start: still 16
    assert controls["vocab"].readout_format == ",d"


def test_without_a_widget_front_end_a_panel_says_what_it_is_and_the_call_that_does_it(cheap):
    import labkit

    bundle = panel("test-count")._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle  # JupyterLab still shows the widget
    assert "test-count, two counters; settings: items" in bundle["text/html"]
    call = bundle["text/plain"].split("without one: ", 1)[1]
    assert call == "labkit.run('test-count', 'slow', knobs={'items': 10})"  # the quick settings a panel starts at
    hidden = panel("test-count", knobs=[])._repr_mimebundle_()["text/plain"]  # ... shown or not
    assert hidden.endswith("knobs={'items': 10})")
    assert eval(call, {"labkit": labkit}).trials[0].outcome == "ok"  # the advice works
    device_map = device_map_panel()._repr_mimebundle_()["text/plain"]
    assert "device_map': 'cpu,cpu," in device_map and "labkit.run('device-mismatch', 'broken'" in device_map
