"""Panels: Run in a background thread, Stop kills the trial, the table grows, bad settings are messages."""

import time

import psutil

from labkit.widgets import device_map_panel, panel


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
    deadline = time.monotonic() + 20
    while not psutil.Process().children(recursive=True) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert psutil.Process().children(recursive=True), "the trial never started"
    t0 = time.monotonic()
    runner.stop_button.click()
    runner.thread.join(10)
    assert time.monotonic() - t0 < 5 and not runner.thread.is_alive()
    assert "stopped" in runner.status.value
    assert [p for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE] == []


def test_an_invalid_device_map_is_a_message_and_nothing_runs():
    box = device_map_panel()
    runner, pickers = box.runner, box.children[1:8]
    assert [p.value for p in pickers][:2] == ["cpu", "cpu"]  # filled from accelerate's balanced plan
    pickers[3].value = ""
    runner.run_button.click()
    assert runner.thread is None
    assert "no device for layer 2; every row needs one" in runner.status.value
