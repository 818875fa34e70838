"""Panels: Run in a background thread, Stop kills the trial, the table grows, bad settings are messages."""

import re
import time

import psutil

from labkit.machine import monitor, nvml
from labkit.ui.widgets import device_map_panel, panel


def test_run_twice_grows_the_table_and_draws_the_plot(cheap):
    box = panel("test-count")
    runner = box.runner
    for expected_rows in (1, 2):
        runner.run_button.click()
        assert runner.stop_button.disabled is False  # the click returned while the trial runs
        runner.thread.join(60)
        assert len(runner.rows) == expected_rows and runner.table.value.count("<tr>") == expected_rows  # body rows
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
    header = re.findall(r"<th>(.*?)</th>", table)
    assert header == ["run", "threads", "outcome", "tokens_per_s", "error"]
    assert "NaN" not in table and "–" in table


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
