import subprocess
import sys
import threading
import time
import types

import pytest

from labkit import Monitor
from labkit.machine import nvml
from labkit.machine import monitor as monitor_module


def test_it_samples_at_its_rate_and_stops():
    with Monitor(interval=0.05, gpu=False) as mon:
        time.sleep(0.6)
    assert 6 <= len(mon.samples) <= 16
    assert not mon.running
    assert "labkit-monitor" not in [t.name for t in threading.enumerate()]
    frame = mon.to_frame()
    assert list(frame.columns) == ["time_s", "source", "metric", "value", "unit"]
    cores = frame[frame.metric.eq("cpu_percent") & frame.source.str.startswith("cpu")]
    assert cores.source.nunique() == len(mon.samples[0].cpu_percent)
    assert frame.value[frame.metric.eq("cpu_percent")].between(0, 200).all()


def test_it_follows_a_busy_child_process():
    # a second of its own CPU time, however long a loaded machine takes to give it that
    busy = subprocess.Popen([sys.executable, "-c", "import time\nwhile time.process_time() < 1.0: pass"])
    try:
        with Monitor(interval=0.05, gpu=False) as mon:
            busy.wait()
    finally:
        busy.kill()
    assert max(s.processes for s in mon.samples) >= 2
    used = mon.samples[-1].tree_cpu_s - mon.samples[0].tree_cpu_s
    assert used > 0.8  # the child burned 1 s of CPU (start-up included), reaped children included


def test_it_survives_a_missing_nvml(monkeypatch, caplog):
    monkeypatch.setattr(nvml, "pynvml", None)
    monkeypatch.setattr(nvml, "_IMPORT_ERROR", "pynvml is not importable (test)")
    monkeypatch.setattr(monitor_module, "_said_no_gpu", False)
    with caplog.at_level("INFO", logger="labkit"):
        with Monitor(interval=0.05) as first:
            time.sleep(0.15)
        with Monitor(interval=0.05):
            time.sleep(0.05)
    assert "pynvml is not importable" in first.gpu_note
    said = [r for r in caplog.records if "no GPU: CPU only" in r.message]
    assert len(said) == 1 and said[0].levelname == "INFO"  # said once, quietly: no GPU is no error
    assert first.samples and all(s.gpus == () for s in first.samples)


class FakeNvml(types.SimpleNamespace):
    """Stands in for pynvml so the GPU branch runs on a CPU machine (the seam gpustat uses too)."""

    class NVMLError(Exception):
        pass

    def __init__(self):
        super().__init__(calls=0)

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return b"Fake GPU"

    def nvmlDeviceGetUtilizationRates(self, h):
        self.calls += 1
        return types.SimpleNamespace(gpu=40 + h)

    def nvmlDeviceGetMemoryInfo(self, h):
        return types.SimpleNamespace(used=2**30, total=8 * 2**30)

    def nvmlDeviceGetPowerUsage(self, h):
        if h == 1:
            raise self.NVMLError("not supported")
        return 75_000


def test_gpu_columns_come_from_nvml(monkeypatch):
    fake = FakeNvml()
    monkeypatch.setattr(nvml, "pynvml", fake)
    with Monitor(interval=0.05) as mon:
        time.sleep(0.2)
    frame = mon.to_frame()
    gpu = frame[frame.source.str.startswith("gpu")]
    assert set(gpu.source) == {"gpu0", "gpu1"}
    assert set(gpu[gpu.metric.eq("sm_percent")].value) == {40.0, 41.0}
    assert set(gpu[gpu.metric.eq("power")].source) == {"gpu0"}  # gpu1 reports no power
    assert fake.calls >= 2 * 3


@pytest.mark.gpu
def test_real_nvml_sees_the_gpu():
    gpus, reason = nvml.open_gpus()
    assert gpus is not None, reason
    try:
        sample = gpus.sample()[0]
        assert 0 <= sample.sm_percent <= 100 and sample.memory_total_bytes > 0
    finally:
        gpus.close()
    with Monitor(interval=0.05) as mon:
        time.sleep(0.2)
    assert (mon.to_frame().source == "gpu0").any()


def test_a_trials_monitor_watches_the_trial_not_its_caller(cheap):
    """A notebook kernel draws the live plot while its trial runs: that work is not the trial's."""
    import labkit

    def busy_caller(_monitor):
        start = time.process_time()
        while time.process_time() - start < 0.1:
            pass

    trial = labkit.run("test-hang", "broken", timeout=2, on_tick=busy_caller).trials[0]
    tree = trial.samples[trial.samples.source.eq("tree")]
    assert trial.outcome == "hung"
    assert set(tree[tree.metric.eq("processes")].value) == {1}  # the trial's process alone, never the caller
    # the last 0.6 s: start-up is over (0.5 s here, 1 s on a 16-core GPU machine) and the child waits
    late = tree[tree.metric.eq("cpu_seconds") & tree.time_s.gt(trial.seconds - 0.6)].value
    assert len(late) >= 3 and late.max() - late.min() < 0.1  # idle, while the caller burnt ~0.1 s of CPU per tick


def test_with_no_front_end_a_live_plot_prints_a_line_per_redraw_and_saves_its_figure(cheap, tmp_path, capsys):
    from labkit import LivePlot, run

    live = LivePlot("test-hang / broken", every=0, path=tmp_path / "live.png")
    trial = run("test-hang", "broken", timeout=1.5, on_tick=live).trials[0]  # a trial that lasts: it hangs
    live.show(trial.samples)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("test-hang / broken at ")]
    assert lines and "% busy (" in lines[-1] and " threads, " in lines[-1], err
    assert f"figure saved to {tmp_path / 'live.png'}" in err
    assert (tmp_path / "live.png").read_bytes()[:4] == b"\x89PNG"


def test_a_hung_trials_figure_marks_its_start_up_and_the_stillness_that_called_it_hung(cheap):
    """The hang is the moment the process tree stops using CPU: the samples carry it, the figure shows it."""
    from labkit import monitor_figure, run

    trial = run("test-hang", "broken", timeout=20).trials[0]
    marks = trial.samples[trial.samples.source.eq("mark")].set_index("metric")["time_s"]
    assert trial.outcome == "hung" and trial.notes["hung"].startswith("no progress")
    assert 0 < marks["first_line"] < marks["still_since"] < marks["hung"]
    assert abs(marks["hung"] - marks["first_line"] - trial.seconds) < 0.05
    assert abs(marks["hung"] - marks["still_since"] - 3.0) < 0.05  # the scenario's idle_after
    fig = monitor_figure(trial, "hang")
    timeline = fig.axes[0]
    assert [t.get_text() for t in timeline.get_yticklabels()] == ["trial", "hang"]
    assert "no CPU: every thread blocked, 3.0 s" in [t.get_text() for t in timeline.texts]
    assert "no GPU: CPU only" in [t.get_text() for t in fig.texts]
    assert not any("GPU" in ax.get_title(loc="left") for ax in fig.axes)  # no empty GPU panel


def test_a_trial_that_ended_before_the_monitor_looked_is_no_error():
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()  # reaped: its pid names no process
    mon = Monitor(interval=0.05, gpu=False, root=ended.pid).start()
    mon.stop()
    assert mon.samples == [] and mon.to_frame().empty
