"""Warm trials: a process that has already imported torch and transformers, per environment, in a fraction of a second.

Two ways, by the platform's route (:mod:`labkit.machine.system`):

* **a template that forks** (Linux; :mod:`labkit.isolation._template`): the first trial in an
  environment starts that environment's template (the imports, once), every later one is a fork of it;
* **pre-started interpreters** (the portable route, where labkit does not fork;
  :mod:`labkit.isolation._spare`): one interpreter per expected trial (up to :data:`MAX_SPARES`)
  imports side by side with the others, and each serves exactly one trial; when none is ready, the
  next batch starts.

Either way a process imports before the trial that asks for it, never while another trial of this
process is being measured (trials that run side by side measure nothing); while it does,
:func:`starting` says so, and the caller's ``on_wait`` runs every quarter second (a panel's Stop is
heard there, and no trial starts).

What a laptop can afford: at most :data:`MAX_TEMPLATES` templates and :data:`MAX_SPARES` spares are
kept, the least recently used idle ones go first, and any idle for :data:`IDLE_LIFETIME` seconds
ends. A warm process whose labkit sources changed on disk after its imports (a scenario edited or
added in a running kernel) is not used again: the next trial gets a new one, with the new code.

Nothing is left behind: a template or a spare reads from a pipe that only this process holds, so
when this process ends for any reason (a closed notebook, a restarted kernel, Ctrl-C, a crash,
SIGKILL) it sees the end of its input, kills every trial it started, removes its folder and exits.
:func:`shutdown` (also run at exit) ends them sooner.
"""

from __future__ import annotations

import atexit
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from labkit.machine import system

MAX_TEMPLATES = 2  # environments kept warm at once; each template holds torch and transformers (0.33 GiB)
# Pre-started interpreters, all environments together, at most (~0.25 GB each). When an environment
# has none ready, as many start side by side as trials are expected there (expect()), up to this.
MAX_SPARES = 4
IDLE_LIFETIME = 600.0  # seconds an idle warm process is kept
# Variables that no library reads when it loads, and that the run-time sets or changes as it goes (a
# model loaded in a notebook sets TORCHINDUCTOR_CACHE_DIR; CUDA's first use sets CUDA_MODULE_LOADING),
# or that a library reads only when it acts (tokenizers reads TOKENIZERS_PARALLELISM each time it may
# parallelise, and in its fork handler): a trial gets them (its whole environment) after it starts, so
# they need no warm process of their own.
RUN_TIME_ONLY = frozenset({"PYTEST_CURRENT_TEST", "TORCHINDUCTOR_CACHE_DIR", "CUDA_MODULE_LOADING", "TOKENIZERS_PARALLELISM"})
# Variables a warm process's own first import sets, as defaults, before any library could read them:
# threadpoolctl sets KMP_DUPLICATE_LIB_OK=True (labkit.isolation._child.WARM_IMPORTS), so a caller that
# imported threadpoolctl (a notebook's cell) and one that did not share one warm process, not one each.
SET_BY_IMPORTS = {"KMP_DUPLICATE_LIB_OK": "True"}
READY_TIMEOUT = 300.0  # seconds a warm process may take to import everything
FORK_TIMEOUT = 30.0  # seconds a template may take to answer a fork request
TICK = 0.25
SOURCES = Path(__file__).resolve().parent.parent  # labkit's own code: a change there makes warm processes stale

OnWait = Callable[[], None]
log = logging.getLogger("labkit.warm")  # the command line shows its INFO lines: what a trial waits for


class TemplateFailed(RuntimeError):
    """A warm process could not start (its imports failed): its output says why."""


class TemplateUnsafe(RuntimeError):
    """The template's self-check found it unsafe to fork (:func:`labkit.isolation._template.check_self`)."""


class _Warm:
    """A process that imports what trials need, says ``ready``, then serves (a template) or becomes one trial (a spare)."""

    what = "warm process"

    def __init__(self, module: str, env: Mapping[str, str], **popen):
        self._log = tempfile.TemporaryFile()  # its own stderr, read back if it fails to start
        self.warming = (time.time(), float("nan"))  # wall-clock start and end of its imports
        self.last_used = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", module], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, env=dict(env), **popen)
        self._ready = threading.Event()  # set at "ready", or when it ended without saying it
        self._said_ready = False
        self._unsafe: str | None = None
        threading.Thread(target=self._read, name=f"labkit-{self.what.split()[-1]}-reader", daemon=True).start()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            kind, _, rest = (raw.decode() if isinstance(raw, bytes) else raw).rstrip("\n").partition(" ")
            if kind == "ready":
                self.warming = (self.warming[0], time.time())
                self._said_ready = True
                self._ready.set()
            elif kind == "unsafe":
                self._unsafe = rest
            else:
                self._line(kind, rest)
        self._ended()
        self._ready.set()

    def _line(self, kind: str, rest: str) -> None:
        """A line after ``ready`` (a template's fork and exit reports)."""

    def _ended(self) -> None:
        """Its output ended: it exited, or (a spare) its trial took its output over."""

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def ready(self) -> bool:
        return self._said_ready and self.alive and self._unsafe is None

    def wait_ready(self, on_wait: OnWait | None) -> None:
        """Wait for its imports, calling ``on_wait`` every :data:`TICK` (which may raise to give up: the
        process goes on importing for the next trial)."""
        deadline = time.monotonic() + READY_TIMEOUT
        while not self._ready.wait(TICK):
            if on_wait is not None:
                on_wait()
            if time.monotonic() > deadline:
                break
        if self._unsafe is not None:
            raise TemplateUnsafe(self._unsafe)
        if not self.ready:
            self._log.seek(0)
            tail = self._log.read().decode(errors="replace").strip().splitlines()[-5:]
            self.close()
            raise TemplateFailed(f"the {self.what} did not start: " + (" | ".join(tail) or "no output"))

    def stale(self, newest_source: float) -> bool:
        """Whether labkit's code changed on disk after this process imported it."""
        return newest_source > self.warming[0]

    def close(self) -> None:
        """End it: closing its input is the signal; it kills its trials and exits."""
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


class Template(_Warm):
    """One warm process for one environment, forking a trial per request."""

    what = "warm template"

    def __init__(self, env: Mapping[str, str]):
        self._lock = threading.Lock()  # one fork request at a time
        self._changed = threading.Condition()
        self._forked: dict[str, int] = {}
        self._exits: dict[int, int] = {}
        self._abandoned: set[str] = set()  # fork requests that timed out: a late child is killed at once
        self._uncounted: set[int] = set()  # such children, whose exit must not count in busy
        self.busy = 0  # trials asked for and not yet ended (under the module's lock and this one's)
        super().__init__("labkit.isolation._template", env, text=True, bufsize=1, start_new_session=True)

    def _line(self, kind: str, rest: str) -> None:
        with self._changed:
            if kind == "forked":
                folder, _, pid = rest.rpartition(" ")
                if folder in self._abandoned:  # asked for long ago, given up on: end it, it must not run
                    self._abandoned.discard(folder)
                    self._uncounted.add(int(pid))
                    system.current().tree(int(pid)).kill()
                else:
                    self._forked[folder] = int(pid)
            elif kind == "exit":
                pid, _, status = rest.partition(" ")
                self._exits[int(pid)] = int(status)
                if int(pid) in self._uncounted:
                    self._uncounted.discard(int(pid))
                else:
                    self.busy -= 1
                self.last_used = time.monotonic()
            self._changed.notify_all()

    def _ended(self) -> None:
        with self._changed:  # the template ended: nothing more will come
            self._changed.notify_all()

    def fork(self, folder: Path) -> "WarmChild":
        key = str(folder)
        with self._lock:
            self.proc.stdin.write(key + "\n")
            self.proc.stdin.flush()
            with self._changed:
                self._changed.wait_for(lambda: key in self._forked or not self.alive, timeout=FORK_TIMEOUT)
                pid = self._forked.pop(key, None)
                if pid is None:
                    self._abandoned.add(key)
        if pid is None:
            raise TemplateFailed(f"the warm template did not fork a trial within {FORK_TIMEOUT:g} s")
        return WarmChild(pid, self)

    def exit_status(self, pid: int, timeout: float | None) -> int | None:
        """The trial's ``waitpid`` status once it has ended, waiting up to ``timeout`` seconds."""
        with self._changed:
            self._changed.wait_for(lambda: pid in self._exits or not self.alive, timeout=timeout)
            return self._exits.pop(pid, None) if pid in self._exits else None


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


class Spare(_Warm):
    """One pre-started interpreter, for one trial."""

    what = "pre-started interpreter"

    def __init__(self, env: Mapping[str, str]):
        super().__init__("labkit.isolation._spare", env, **system.current().new_group())

    def take(self, folder: Path) -> subprocess.Popen:
        """Hand it its trial: from here it is that trial's process (its stdin, the trial's lifeline)."""
        self.proc.stdin.write(f"{folder}\n".encode())
        self.proc.stdin.flush()
        self._log.close()
        return self.proc


_templates: OrderedDict[frozenset, Template] = OrderedDict()
_spares: OrderedDict[frozenset, list[Spare]] = OrderedDict()
_started: list[_Warm] = []  # every template and spare this process started: when each imported
_expected: dict[frozenset, int] = {}  # trials still expected per environment (expect())
_unsafe: dict[frozenset, str] = {}  # environments whose template failed its self-check, and why
_starting: str | None = None
_templates_lock = threading.Lock()


@dataclass(frozen=True)
class Handover:
    """A warm process, ready and reserved for one trial: ``start(folder)`` hands it the trial's folder
    (its ``call.pkl`` written); ``cancel()`` gives the reservation back if no trial comes: the caller's
    to call, once, when ``start`` raised or was never called."""

    start: Callable[[Path], "WarmChild | subprocess.Popen"]
    cancel: Callable[[], None]


def prepare(env: Mapping[str, str], on_wait: OnWait | None = None) -> Handover:
    """A warm process of ``env``, ready for one trial: forked from its template, or a pre-started
    interpreter, by the platform's route.

    Whatever is slow happens here, before the trial's folder exists (so a parent killed meanwhile
    leaves no folder behind), and before the trial: a template or a batch of spares never imports
    while another trial of this process is being measured. Raises :class:`TemplateUnsafe` where the
    template found itself unsafe to fork (the caller starts the trial fresh), and whatever
    ``on_wait`` raises while a warm process starts (no trial is started).
    """
    key = _key(env)
    if system.current().warm == "spares":
        spare = _spare(key, env, on_wait)
        return Handover(spare.take, spare.close)
    with _templates_lock:
        if key in _unsafe:
            raise TemplateUnsafe(_unsafe[key])
        _retire(_newest_source())
        template = _templates.get(key)
        if template is None or not template.alive:
            template = _templates[key] = Template(env)
            _started.append(template)
        try:
            _wait_ready(template, on_wait)
        except TemplateUnsafe as exc:
            _unsafe[key] = str(exc)
            _templates.pop(key).close()
            raise
        except TemplateFailed:
            _templates.pop(key, None)
            raise
        _templates.move_to_end(key)
        template.last_used = time.monotonic()
        with template._changed:
            template.busy += 1  # reserved before the fork, so that no other thread ends this template meanwhile
        _evict()

    def unreserve() -> None:  # the caller's, once, when start() raised or no trial came
        with template._changed:
            template.busy -= 1

    return Handover(template.fork, unreserve)


def _key(env: Mapping[str, str]) -> frozenset:
    return frozenset((name, value) for name, value in {**SET_BY_IMPORTS, **env}.items() if name not in RUN_TIME_ONLY)


def _wait_ready(process: _Warm, on_wait: OnWait | None) -> None:
    """Wait for a warm process, saying so meanwhile (:func:`starting`)."""
    global _starting
    if process.ready:
        return
    took = [end - begin for begin, end in warming_windows() if end == end]  # NaN: still importing
    _starting = f"starting a warm process for this environment, about {max(took[-3:], default=8.0):.0f} s (once)"
    log.info("labkit: %s", _starting)
    try:
        process.wait_ready(on_wait)
    finally:
        _starting = None


def starting() -> str | None:
    """What a trial is waiting for, while a warm process starts (a panel or the CLI says it), else None."""
    return _starting


def refused(env: Mapping[str, str]) -> str | None:
    """Why the template of ``env`` failed its self-check (its trials start fresh), or None."""
    return _unsafe.get(_key(env))


def expect(envs: list[Mapping[str, str]]) -> None:
    """The trials coming next, by environment (replacing what was said before): on the portable route,
    that many interpreters (up to :data:`MAX_SPARES`) start side by side when the first is asked for."""
    with _templates_lock:
        _expected.clear()
        for env in envs:
            _expected[_key(env)] = _expected.get(_key(env), 0) + 1


def _spare(key: frozenset, env: Mapping[str, str], on_wait: OnWait | None) -> Spare:
    """A ready spare of ``env``; when there is none, a batch started now, all of it ready before the trial."""
    with _templates_lock:
        _retire(_newest_source())
        batch = _spares.setdefault(key, [])
        batch[:] = [spare for spare in batch if spare.alive]
        if not batch:
            size = max(1, min(_expected.get(key, 1), MAX_SPARES))
            _evict_spares(room=size)
            batch.extend(Spare(env) for _ in range(size))
            _started.extend(batch)
        for spare in list(batch):
            try:
                _wait_ready(spare, on_wait)
            except TemplateFailed:
                batch.remove(spare)
                raise
        _spares.move_to_end(key)
        if _expected.get(key):
            _expected[key] -= 1
        return batch.pop(0)


def _newest_source() -> float:
    """When labkit's code last changed on disk (its newest ``.py``; about 60 files, a millisecond). A time
    still to come (a file unpacked from a machine whose clock runs ahead) counts once it has passed."""
    now = time.time()
    return max((m for p in SOURCES.rglob("*.py") if (m := p.stat().st_mtime) <= now), default=0.0)


def _retire(newest_source: float) -> None:
    """End warm processes that are stale (labkit's code changed since their imports) or idle too long."""
    now = time.monotonic()
    for key, template in list(_templates.items()):
        if not template.busy and (template.stale(newest_source) or now - template.last_used > IDLE_LIFETIME):
            _templates.pop(key).close()
    for key, batch in list(_spares.items()):
        for spare in [s for s in batch if s.stale(newest_source) or now - s.last_used > IDLE_LIFETIME]:
            batch.remove(spare)
            spare.close()


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


def _reaper() -> None:
    """Every minute, end warm processes idle for :data:`IDLE_LIFETIME` (a kernel left open overnight)."""
    minute = threading.Event()  # never set: a wait that is not a planted sleep
    while not minute.wait(60):
        with _templates_lock:
            _retire(0.0)


def shutdown() -> None:
    """End every template (each kills its trials first) and every idle spare now."""
    with _templates_lock:
        while _templates:
            _templates.popitem()[1].close()
        while _spares:
            for spare in _spares.popitem()[1]:
                spare.close()


def warming_windows() -> list[tuple[float, float]]:
    """When each template and spare started here imported (wall clock, start and end; NaN while it still
    imports): for the check that warming never overlaps a measured trial."""
    return [process.warming for process in list(_started)]


def live_templates() -> list[int]:
    """Pids of the templates this process holds (for tests and ``labkit doctor``)."""
    with _templates_lock:
        return [t.proc.pid for t in _templates.values() if t.alive]


def idle_processes() -> list[int]:
    """Pids of the warm processes this process keeps and no trial uses now (each holds torch's imports)."""
    with _templates_lock:
        return ([t.proc.pid for t in _templates.values() if t.alive and not t.busy]
                + [s.proc.pid for batch in _spares.values() for s in batch if s.alive])


atexit.register(shutdown)
threading.Thread(target=_reaper, name="labkit-warm-reaper", daemon=True).start()
