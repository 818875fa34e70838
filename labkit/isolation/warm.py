"""Warm trials: a process that has already imported torch and transformers, per environment, in a fraction of a second.

Two ways, by the platform's route (:mod:`labkit.machine.system`):

* **a template that forks** (Linux; :mod:`labkit.isolation._template`): the first trial in an
  environment starts that environment's template (the imports, once), every later one is a fork of it;
* **pre-started interpreters** (the portable route, where labkit does not fork;
  :mod:`labkit.isolation._spare`): one interpreter per expected trial (up to :data:`MAX_SPARES`)
  imports side by side with the others, and each serves exactly one trial; when none is ready, the
  next batch starts.

Either way a process imports before the trial that asks for it, never while another trial of this
process is being measured (trials that run side by side measure nothing).

Nothing is left behind: a template or a spare reads from a pipe that only this process holds, so
when this process ends for any reason (a closed notebook, a restarted kernel, Ctrl-C, a crash,
SIGKILL) it sees the end of its input, kills every trial it started, removes its folder and exits.
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

from labkit.machine import system

MAX_TEMPLATES = 4  # environments kept warm at once; each holds torch and transformers (~0.5 GB)
# Pre-started interpreters, all environments together, at most: each holds torch and transformers
# (~0.3 GB). When an environment has none ready, as many start side by side as trials are expected
# there (expect()), up to this; one where nothing was said.
MAX_SPARES = 4
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


class Spare:
    """One pre-started interpreter, for one trial."""

    def __init__(self, env: Mapping[str, str]):
        self._log = tempfile.TemporaryFile()  # its stderr until its trial starts, read back if it fails
        self.warming = (time.time(), float("nan"))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "labkit.isolation._spare"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=dict(env),
            **system.current().new_group(),
        )
        self._ready = threading.Event()
        self._said_ready = False
        threading.Thread(target=self._read, name="labkit-spare-reader", daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.strip() == b"ready":
                self.warming = (self.warming[0], time.time())
                self._said_ready = True
                self._ready.set()
        self._ready.set()  # it ended, or its trial took its output over

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self) -> None:
        if not self._ready.wait(READY_TIMEOUT) or not self._said_ready or not self.alive:
            self._log.seek(0)
            tail = self._log.read().decode(errors="replace").strip().splitlines()[-5:]
            self.close()
            raise TemplateFailed("the pre-started interpreter did not start: " + (" | ".join(tail) or "no output"))

    def take(self, folder: Path) -> subprocess.Popen:
        """Hand it its trial: from here it is that trial's process (its stdin, the trial's lifeline)."""
        self.proc.stdin.write(f"{folder}\n".encode())
        self.proc.stdin.flush()
        self._log.close()
        return self.proc

    def close(self) -> None:
        try:
            self.proc.stdin.close()  # the end of its input: it exits
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


_templates: OrderedDict[frozenset, Template] = OrderedDict()
_spares: OrderedDict[frozenset, list[Spare]] = OrderedDict()
_spare_windows: list[tuple[float, float]] = []
_expected: dict[frozenset, int] = {}  # trials still expected per environment (expect())
_templates_lock = threading.Lock()


def start(folder: Path, env: Mapping[str, str]) -> WarmChild | subprocess.Popen:
    """A trial process for ``folder`` (its ``call.pkl`` written): forked from ``env``'s template, or
    a pre-started interpreter of ``env``, by the platform's route.

    A template or a batch of spares is started here, before the trial: never while another trial
    of this process is being measured (trials that run side by side measure nothing).
    """
    key = _key(env)
    if system.current().warm == "spares":
        return _spare(key, env).take(folder)
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


def _key(env: Mapping[str, str]) -> frozenset:
    return frozenset((name, value) for name, value in env.items() if name not in RUN_TIME_ONLY)


def expect(envs: list[Mapping[str, str]]) -> None:
    """The trials coming next, by environment (replacing what was said before): on the portable route,
    that many interpreters (up to :data:`MAX_SPARES`) start side by side when the first is asked for."""
    with _templates_lock:
        _expected.clear()
        for env in envs:
            _expected[_key(env)] = _expected.get(_key(env), 0) + 1


def _spare(key: frozenset, env: Mapping[str, str]) -> Spare:
    """A ready spare of ``env``; when there is none, a batch started now, all of it ready before the trial."""
    with _templates_lock:
        ready = _spares.setdefault(key, [])
        ready[:] = [spare for spare in ready if spare.alive]
        if not ready:
            size = max(1, min(_expected.get(key, 1), MAX_SPARES))
            _evict_spares(room=size)
            batch = [Spare(env) for _ in range(size)]
            for spare in batch:
                spare.wait_ready()
            _spare_windows.extend(spare.warming for spare in batch)
            ready.extend(batch)
        _spares.move_to_end(key)
        if _expected.get(key):
            _expected[key] -= 1
        return ready.pop(0)


def _evict_spares(room: int) -> None:
    """End the least recently used environments' idle spares until ``room`` more fit under :data:`MAX_SPARES`."""
    for key in list(_spares):
        if sum(map(len, _spares.values())) + room <= MAX_SPARES:
            return
        for spare in _spares.pop(key):
            spare.close()


def _evict() -> None:
    """Beyond :data:`MAX_TEMPLATES`, end the least recently used templates that run no trial now
    (ending one kills its trials: a trial running in another thread keeps its template)."""
    idle = [key for key, template in _templates.items() if not template.busy]
    for key in idle[:max(0, len(_templates) - MAX_TEMPLATES)]:
        _templates.pop(key).close()


def shutdown() -> None:
    """End every template (each kills its trials first) and every idle spare now."""
    with _templates_lock:
        while _templates:
            _templates.popitem()[1].close()
        while _spares:
            for spare in _spares.popitem()[1]:
                spare.close()


def warming_windows() -> list[tuple[float, float]]:
    """When each live template, and each spare started here, imported (wall clock, start and end): for
    the check that warming never overlaps a measured trial."""
    with _templates_lock:
        return [t.warming for t in _templates.values() if t.alive] + list(_spare_windows)


def live_templates() -> list[int]:
    """Pids of the templates this process holds (for tests and ``labkit doctor``)."""
    with _templates_lock:
        return [t.proc.pid for t in _templates.values() if t.alive]


atexit.register(shutdown)

