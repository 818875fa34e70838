"""A background sampler of what the machine is doing while a trial runs.

One daemon thread wakes every ``interval`` seconds (10 Hz by default) and reads: per-core CPU %
(``psutil.cpu_times`` deltas, so it never disturbs ``psutil.cpu_percent``'s shared state), and for the
process tree under ``root`` (by default this process and every descendant; a trial's monitor
watches the trial's own process and its workers) the CPU seconds, OS threads, context switches
and RSS; and, through :mod:`labkit.machine.nvml`, each GPU's SM utilisation, memory and power.
``benchmarks/monitor_overhead.py`` measures what it costs. Processes are read through the platform's
route (:mod:`labkit.machine.system`); where a reading cannot be had (no per-core CPU, a tree psutil
cannot read), it says so once and records what it has.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field

import pandas as pd
import psutil

from labkit.machine import nvml, system
from labkit.machine.system import say_once

log = logging.getLogger("labkit")
REFRESH = 2.0  # seconds between two full searches for descendants (see Monitor._tree)
_said_no_gpu = False
NO_GPU = "no GPU: CPU only"


@dataclass(frozen=True)
class Sample:
    time_s: float
    cpu_percent: tuple[float, ...]  # one per logical core
    tree_cpu_s: float  # user+system seconds of the process tree, reaped children included
    threads: int
    processes: int
    ctx_voluntary: int
    ctx_involuntary: int
    rss_bytes: float
    gpus: tuple[nvml.GpuSample, ...] = ()


@dataclass
class Monitor:
    """``with Monitor() as mon: ...`` then ``mon.to_frame()``; also usable with start()/stop()."""

    interval: float = 0.1
    root: int | None = None  # pid whose tree is watched; this process by default
    gpu: bool = True
    samples: list[Sample] = field(default_factory=list, init=False)
    gpu_note: str = field(default="", init=False)
    marks: dict[str, float] = field(default_factory=dict, init=False)  # name -> seconds on the samples' clock

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._procs: dict[int, psutil.Process] = {}
        self._found_at = 0.0
        self._gpus: nvml.Gpus | None = None

    def start(self) -> "Monitor":
        if self._thread is not None:
            raise RuntimeError("this monitor is already running")
        if self.gpu:
            self._gpus, self.gpu_note = _open_gpus()
        self._system = system.current()
        try:
            self._root: psutil.Process | None = psutil.Process(self.root or os.getpid())
        except psutil.Error as exc:  # a trial that already ended, or a process psutil may not read
            self._root = None
            if not isinstance(exc, psutil.NoSuchProcess) or psutil.pid_exists(self.root or os.getpid()):
                say_once(f"the monitor cannot read process {self.root or os.getpid()} ({type(exc).__name__}): "
                         "no CPU, thread or memory readings of the trial")
        self._t0 = time.monotonic()
        self._last_cpu = _per_core()
        self._stop.clear()
        self._sample(first=True)  # a trial shorter than one interval still has its start on record
        self._thread = threading.Thread(target=self._run, name="labkit-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> "Monitor":
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._sample()  # one last reading, so even a short run has its end state
        if self._gpus is not None:
            self._gpus.close()
            self._gpus = None
        return self

    def mark(self, name: str, at: float) -> None:
        """Note a moment (``time.monotonic()``) on the samples' clock: a trial's first line, the
        moment it was called hung. :func:`~labkit.ui.plots.monitor_figure` draws them."""
        self.marks[name] = at - self._t0

    def __enter__(self) -> "Monitor":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _tree(self) -> list[psutil.Process]:
        """The watched processes, found two ways.

        Every sample, each known process lists its direct children (on Linux one small read of
        ``/proc/PID/task/PID/children``): a worker forked or spawned by the trial shows up within one
        tick, so its CPU is not counted late in a single burst. Every ``REFRESH`` seconds a full
        search also catches children started from other threads.
        """
        if self._root is None:
            return []
        now = time.monotonic()
        if now - self._found_at >= REFRESH or not self._procs:
            self._found_at = now
            try:
                found = [self._root, *self._root.children(recursive=True)]
            except psutil.Error:
                return []
            # Reuse Process objects: creating one per sample costs more than reading it.
            self._procs = {p.pid: self._procs.get(p.pid, p) for p in found}
        else:
            queue = list(self._procs)
            while queue:
                for child in self._system.direct_children(queue.pop()):
                    if child not in self._procs:
                        try:
                            self._procs[child] = psutil.Process(child)
                        except psutil.Error:
                            continue
                        queue.append(child)
        return list(self._procs.values())

    def _sample(self, first: bool = False) -> None:
        now = _per_core()
        # the first reading has no interval behind it: each core's use is not known yet
        percents = tuple(math.nan if first else _busy_percent(a, b) for a, b in zip(self._last_cpu, now))
        self._last_cpu = now
        cpu_s = threads = vol = invol = rss = count = 0
        for proc in self._tree():
            reading = self._system.read_process(proc)
            if reading is None:
                continue
            cpu_s += reading[0]
            threads += reading[1]
            vol += reading[2]
            invol += reading[3]
            rss += reading[4]
            count += 1
        if not count:  # the watched tree has exited (a trial that ended): nothing of it to record
            return
        gpus = tuple(self._gpus.sample()) if self._gpus is not None else ()
        self.samples.append(
            Sample(time.monotonic() - self._t0, percents, cpu_s, threads, count, vol, invol, rss, gpus)
        )

    def to_frame(self) -> pd.DataFrame:
        """Tidy: one row per (time, source, metric); sources are ``cpuN``, ``tree``, ``gpuN``, and
        ``mark`` (one row per :meth:`mark`, its name as the metric)."""
        frame = samples_frame(list(self.samples))
        marks = pd.DataFrame([(t, "mark", name, t, "s") for name, t in self.marks.items()], columns=frame.columns)
        return pd.concat([frame, marks], ignore_index=True) if self.marks else frame


def _open_gpus() -> tuple[nvml.Gpus | None, str]:
    """NVML's GPUs; when there are none, say why once per process, quietly (INFO on the ``labkit``
    logger): a laptop without a GPU is the common case, not a problem. Figures and panels say
    :data:`NO_GPU` where a GPU panel would be."""
    global _said_no_gpu
    gpus, note = nvml.open_gpus()
    if gpus is None and not _said_no_gpu:
        log.info("labkit.machine.monitor: %s (%s)", NO_GPU, note)
        _said_no_gpu = True
    return gpus, note


def has_gpu() -> bool:
    """Whether NVML sees a GPU now (what a panel checks once, to say :data:`NO_GPU` or not)."""
    gpus, _ = _open_gpus()
    if gpus is not None:
        gpus.close()
    return gpus is not None


def _per_core() -> list:
    """Each core's CPU times; none where they cannot be read (said once): the plot shows what it has."""
    try:
        return psutil.cpu_times(percpu=True)
    except (psutil.Error, OSError) as exc:
        say_once(f"no per-core CPU readings here ({type(exc).__name__}): the plots show the trial's own CPU only")
        return []


def _busy_percent(before, after) -> float:
    idle = (after.idle + getattr(after, "iowait", 0)) - (before.idle + getattr(before, "iowait", 0))
    total = sum(after) - sum(before)
    return 0.0 if total <= 0 else max(0.0, min(100.0, 100.0 * (1 - idle / total)))


def samples_frame(samples: list[Sample]) -> pd.DataFrame:
    rows = []
    prev = None
    for s in samples:
        rows.extend((s.time_s, f"cpu{core}", "cpu_percent", pct, "%")
                    for core, pct in enumerate(s.cpu_percent) if not math.isnan(pct))  # unknown: no row
        tree = [
            ("cpu_seconds", s.tree_cpu_s, "s"),
            ("threads", s.threads, "count"),
            ("processes", s.processes, "count"),
            ("ctx_voluntary", s.ctx_voluntary, "count"),
            ("ctx_involuntary", s.ctx_involuntary, "count"),
            ("rss", s.rss_bytes, "bytes"),
        ]
        if prev is not None and s.time_s > prev.time_s:
            # CPU use of the tree in "cores": 100% is one core busy for the whole interval.
            used = max(0.0, s.tree_cpu_s - prev.tree_cpu_s) / (s.time_s - prev.time_s)
            tree.append(("cpu_percent", 100.0 * used, "% of one core"))
        rows.extend((s.time_s, "tree", m, v, u) for m, v, u in tree)
        for g in s.gpus:
            src = f"gpu{g.index}"
            rows.append((s.time_s, src, "sm_percent", g.sm_percent, "%"))
            rows.append((s.time_s, src, "memory_used", g.memory_used_bytes, "bytes"))
            rows.append((s.time_s, src, "memory_total", g.memory_total_bytes, "bytes"))
            if g.power_w is not None:
                rows.append((s.time_s, src, "power", g.power_w, "W"))
        prev = s
    return pd.DataFrame(rows, columns=["time_s", "source", "metric", "value", "unit"])
