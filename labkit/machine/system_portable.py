"""The portable route (macOS, Windows, and Linux with ``LABKIT_PLATFORM=portable``): psutil, no POSIX
signal for stacks, no ``os.fork`` of labkit's own.

* A trial's processes are its psutil descendants (``children(recursive=True)``). Each one seen is
  remembered, so a worker whose parent died (re-parented away from the tree) is still killed at
  the end; psutil checks a process's start time before it kills, so a reused pid is never hit.
* Stacks: each trial process runs a small thread, ``labkit-stacks``, that looks for a request file
  (``stacks-PID.request`` in the trial's folder) every 50 ms and answers with
  ``faulthandler.dump_traceback(all_threads=True)``. Workers the trial forks get one too
  (``os.register_at_fork``). Unlike a signal it needs the GIL: a process stuck in native code that
  holds it never answers, and the stacks say so.
* Warm trials come from interpreters started ahead of them, not from a fork
  (:mod:`labkit.isolation.warm`): forking after importing torch is unsafe on macOS (its system
  frameworks), and ``os.fork`` does not exist on Windows.
"""

from __future__ import annotations

import faulthandler
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

import psutil

from labkit.machine.system_base import System, Tree, say_once

POLL = 0.05  # seconds between two looks for a stacks request
_ERRORS = (psutil.Error, OSError)


def _request(folder: Path, pid: int) -> Path:
    return folder / f"stacks-{pid}.request"


class PortableTree(Tree):
    """A trial's psutil descendants, with every one seen remembered."""

    def __init__(self, leader: int):
        super().__init__(leader)
        self._seen: dict[int, psutil.Process] = {}
        try:
            self._root: psutil.Process | None = psutil.Process(leader)
        except _ERRORS:
            self._root = None  # no readings here (or it already ended): members() and cpu_seconds() say None

    def _live(self) -> list[psutil.Process] | None:
        if self._root is None:
            return None
        try:
            found = [self._root, *self._root.children(recursive=True)]
        except psutil.NoSuchProcess:
            found = []  # the leader ended: only workers seen before may be left
        except _ERRORS:
            return None
        for proc in found:
            self._seen.setdefault(proc.pid, proc)
        live = []
        for proc in self._seen.values():
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    live.append(proc)
            except _ERRORS:
                continue
        return sorted(live, key=lambda p: (p.pid != self.leader, p.pid))

    def members(self) -> list[int] | None:
        live = self._live()
        return None if live is None else [p.pid for p in live]

    def cpu_seconds(self) -> dict[int, float] | None:
        live = self._live()
        if live is None:
            return None
        seconds = {}
        for proc in live:
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            except _ERRORS:
                return None
            seconds[proc.pid] = times.user + times.system
        return seconds

    def kill(self) -> None:
        self._live()  # one more search: workers started since the last reading
        for proc in sorted(self._seen.values(), key=lambda p: p.pid == self.leader):  # workers first
            try:
                proc.kill()
            except _ERRORS:
                pass

    def ask_stacks(self, pid: int, folder: Path) -> str | None:
        _request(folder, pid).touch()
        return None


def _watch_for_requests(folder: Path, file: TextIO) -> None:
    """The ``labkit-stacks`` thread of one process: answer each request for this process's stacks."""
    request, stop = _request(folder, os.getpid()), threading.Event()

    def watch() -> None:
        while not stop.wait(POLL):
            if request.exists():
                faulthandler.dump_traceback(file=file, all_threads=True)
                file.flush()
                request.unlink(missing_ok=True)

    threading.Thread(target=watch, name="labkit-stacks", daemon=True).start()


class PortableSystem(System):
    name = "portable"
    warm = "spares"

    def tree(self, leader: int) -> Tree:
        return PortableTree(leader)

    def new_group(self) -> dict[str, Any]:
        if sys.platform == "win32":
            return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
        return {"start_new_session": True}  # so a terminal's Ctrl-C reaches labkit, which ends the trial

    def answer_stacks(self, folder: Path, file: TextIO) -> None:
        _watch_for_requests(folder, file)
        if hasattr(os, "register_at_fork"):  # a worker the trial forks answers for itself
            os.register_at_fork(after_in_child=lambda: _watch_for_requests(folder, file))

    def end_own_tree(self) -> None:
        try:
            me = psutil.Process()
            for child in me.children(recursive=True):
                child.kill()
        except _ERRORS:
            pass
        os._exit(137)

    def direct_children(self, pid: int) -> list[int]:
        try:
            return [p.pid for p in psutil.Process(pid).children()]
        except _ERRORS:
            return []

    def read_process(self, proc) -> tuple[float, int, int, int, int] | None:
        try:
            with proc.oneshot():
                t, ctx = proc.cpu_times(), proc.num_ctx_switches()
                cpu = t.user + t.system + getattr(t, "children_user", 0.0) + getattr(t, "children_system", 0.0)
                return cpu, proc.num_threads(), ctx.voluntary, ctx.involuntary, proc.memory_info().rss
        except psutil.NoSuchProcess:
            return None
        except _ERRORS as exc:
            say_once(f"psutil cannot read process {proc.pid} ({type(exc).__name__}): the live plot leaves it out")
            return None

    def own_threads(self) -> int | None:
        try:
            return psutil.Process().num_threads()
        except _ERRORS:
            return None

    def own_involuntary_switches(self) -> int | None:
        try:
            return psutil.Process().num_ctx_switches().involuntary
        except _ERRORS:
            return None

    def unavailable(self) -> list[str]:
        missing = super().unavailable()
        try:
            psutil.Process().cpu_times()
        except _ERRORS:
            missing.append("CPU readings (psutil cannot read processes here): no stillness, a hang ends at its timeout")
        missing.append("stacks by a signal: a process stuck in native code while holding the GIL cannot answer")
        return missing
