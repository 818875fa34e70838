"""Warm templates for isolated trials: one per environment, each forking a trial in a fraction of a second.

The parent's side of :mod:`labkit.isolation._template`. A trial asks :func:`start` for a process: the first
trial in an environment starts that environment's template (the imports, once, before the trial:
never while another trial of this process is being measured), every later one is a fork of it.

Nothing is left behind: a template reads its instructions from a pipe that only this process
holds, so when this process ends for any reason (a closed notebook, a restarted kernel, Ctrl-C, a
crash, SIGKILL) the template sees the end of its input, kills every trial it started and exits.
:func:`shutdown` (also run at exit) ends them sooner.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Mapping

MAX_TEMPLATES = 4  # environments kept warm at once; each holds torch and transformers (~0.5 GB)
# Variables no library reads when it loads, which change from one trial to the next: a trial gets
# them (its whole environment) after the fork, so they need no template of their own.
RUN_TIME_ONLY = frozenset({"PYTEST_CURRENT_TEST"})
READY_TIMEOUT = 300.0  # seconds a template may take to import everything


class TemplateFailed(RuntimeError):
    """The template could not start (its imports failed): its output says why."""


class Template:
    """One warm process for one environment."""

    def __init__(self, env: Mapping[str, str]):
        self._log = tempfile.TemporaryFile()  # the template's own stderr, read back if it fails to start
        self.warming = (time.time(), float("nan"))  # wall-clock start and end of its imports
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "labkit.isolation._template"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            env=dict(env), start_new_session=True, text=True, bufsize=1,
        )
        self._lock = threading.Lock()  # one fork request at a time
        self._changed = threading.Condition()
        self._forked: dict[str, int] = {}
        self._exits: dict[int, int] = {}
        self._ready = threading.Event()  # set when the template said "ready", or ended without saying it
        self._said_ready = False
        self.busy = 0  # trials asked for and not yet ended (under the module's lock and this one's)
        self._reader = threading.Thread(target=self._read, name="labkit-template-reader", daemon=True)
        self._reader.start()
        if not self._ready.wait(READY_TIMEOUT) or not self._said_ready:
            self._log.seek(0)
            tail = self._log.read().decode(errors="replace").strip().splitlines()[-5:]
            self.close()
            raise TemplateFailed("the warm template did not start: " + (" | ".join(tail) or "no output"))

    def _read(self) -> None:
        for line in self.proc.stdout:
            kind, _, rest = line.rstrip("\n").partition(" ")
            with self._changed:
                if kind == "ready":
                    self.warming = (self.warming[0], time.time())
                    self._said_ready = True
                    self._ready.set()
                elif kind == "forked":
                    folder, _, pid = rest.rpartition(" ")
                    self._forked[folder] = int(pid)
                elif kind == "exit":
                    pid, _, status = rest.partition(" ")
                    self._exits[int(pid)] = int(status)
                    self.busy -= 1
                self._changed.notify_all()
        with self._changed:  # the template ended: nothing more will come
            self._changed.notify_all()
        self._ready.set()

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def fork(self, folder: Path) -> "WarmChild":
        key = str(folder)
        with self._lock:
            self.proc.stdin.write(key + "\n")
            self.proc.stdin.flush()
            with self._changed:
                self._changed.wait_for(lambda: key in self._forked or not self.alive, timeout=30)
                pid = self._forked.pop(key, None)
        if pid is None:
            raise TemplateFailed("the warm template did not fork a trial")
        return WarmChild(pid, self)

    def exit_status(self, pid: int, timeout: float | None) -> int | None:
        """The trial's ``waitpid`` status once it has ended, waiting up to ``timeout`` seconds."""
        with self._changed:
            self._changed.wait_for(lambda: pid in self._exits or not self.alive, timeout=timeout)
            return self._exits.pop(pid, None) if pid in self._exits else None

    def close(self) -> None:
        """End the template: closing its input is the signal; it kills its trials and exits."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


class WarmChild:
    """A trial forked by a template, with the part of ``subprocess.Popen`` that the isolation uses."""

    def __init__(self, pid: int, template: Template):
        self.pid, self._template, self.returncode = pid, template, None

    def _status(self, timeout: float | None) -> int | None:
        if self.returncode is None:
            status = self._template.exit_status(self.pid, timeout)
            if status is not None:
                self.returncode = os.waitstatus_to_exitcode(status)
            elif not self._template.alive:
                self.returncode = -9  # the template died and took its trials with it
        return self.returncode

    def poll(self) -> int | None:
        return self._status(0)

    def wait(self, timeout: float | None = None) -> int:
        code = self._status(timeout)
        if code is None:
            raise subprocess.TimeoutExpired("warm trial", timeout)
        return code


_templates: OrderedDict[frozenset, Template] = OrderedDict()
_templates_lock = threading.Lock()


def start(folder: Path, env: Mapping[str, str]) -> WarmChild:
    """A trial process for ``folder`` (its ``call.pkl`` written), forked from ``env``'s template.

    The template of an environment is started on first use, here, before the trial: never while
    another trial of this process is being measured (trials that run side by side measure nothing).
    """
    key = frozenset((name, value) for name, value in env.items() if name not in RUN_TIME_ONLY)
    with _templates_lock:
        template = _templates.get(key)
        if template is None or not template.alive:
            template = _templates[key] = Template(env)
        _templates.move_to_end(key)
        with template._changed:
            template.busy += 1  # reserved before the fork, so that no other thread ends this template meanwhile
        _evict()
    try:
        return template.fork(folder)
    except BaseException:
        with template._changed:
            template.busy -= 1
        raise


def _evict() -> None:
    """Beyond :data:`MAX_TEMPLATES`, end the least recently used templates that run no trial now
    (ending one kills its trials: a trial running in another thread keeps its template)."""
    idle = [key for key, template in _templates.items() if not template.busy]
    for key in idle[:max(0, len(_templates) - MAX_TEMPLATES)]:
        _templates.pop(key).close()


def shutdown() -> None:
    """End every template now (each kills its trials first)."""
    with _templates_lock:
        while _templates:
            _templates.popitem()[1].close()


def warming_windows() -> list[tuple[float, float]]:
    """When each live template imported (wall clock, start and end): for the check that warming never
    overlaps a measured trial."""
    with _templates_lock:
        return [t.warming for t in _templates.values() if t.alive]


def live_templates() -> list[int]:
    """Pids of the templates this process holds (for tests and ``labkit doctor``)."""
    with _templates_lock:
        return [t.proc.pid for t in _templates.values() if t.alive]


atexit.register(shutdown)

