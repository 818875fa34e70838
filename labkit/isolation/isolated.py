"""Run one call in a child process, with a timeout, and always get an answer back.

Each call is one process of its own, with a process group of its own (so the whole group it
starts, forked workers and ranks included, is killed together at the end), started one of two ways:

* **warm** (the default): forked from a template process of the same environment that has already
  imported torch, transformers and labkit (:mod:`labkit.isolation.warm`), in about 0.05 s instead of 6-10 s.
  The template only imports (no thread pool has run, no CUDA context exists), which is what makes
  this fork safe where the ``tokenizer-deadlock`` fork is not; each environment has its own
  template, because thread-pool variables are read when a library loads.
* **fresh**: a new interpreter (``python -m labkit.isolation._child``, the same as multiprocessing's *spawn*),
  which imports everything itself. ``start="fresh"`` or ``LABKIT_START=fresh`` asks for it, to
  compare, or where a failure would depend on start-up itself.

Both run the same imports before the call's first line, and the timeout counts from that line
(the ``started`` file), not from the start of the process. A hang is also known sooner by its
stillness: when the whole process group has used (almost) no CPU for ``idle`` seconds, every
thread is blocked, and the call is ``hung`` then, with the reason in ``Isolated.hung_by``.

What the operating system gives here (a trial's processes, their CPU time, killing its tree,
asking for stacks) comes from one seam, :mod:`labkit.machine.system`: ``/proc``, process groups and
a signal (USR1) on Linux; psutil and a request file elsewhere (and with ``LABKIT_PLATFORM=portable``).
Where no CPU reading can be had, stillness is off, said once, and a hang ends at its timeout:
no reading is never taken for no progress.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Mapping

import cloudpickle

from labkit.machine import system
from labkit.machine.system import Tree, say_once

STARTS = ("warm", "fresh")
OUTPUT_KEEP = 20_000  # characters of the child's stdout+stderr kept in the result
STACK_WAIT = 1.0  # seconds allowed for one process to write its stacks
STARTUP_LIMIT = 300.0  # seconds a child may take to reach its first line (imports on a busy machine)
IDLE_CPU = 0.02  # below this share of one core, the process group counts as still


class Outcome(str, Enum):
    """How an isolated call ended. A ``str``, so ``outcome == "hung"`` and JSON keep working."""

    OK = "ok"  # it returned
    RAISED = "raised"  # it raised (the error is the failure the variant reproduces, or a bug)
    WRONG = "wrong"  # it finished with a wrong answer (WrongResult)
    HUNG = "hung"  # no progress, or no answer within the timeout: stopped, with stacks
    CRASHED = "crashed"  # the process died without an answer (a signal, an exit)

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__  # f"{outcome:<7}" pads the word, as for a plain string
    __repr__ = str.__repr__  # printed inside a dict or a list, it reads 'ok', as it did when it was a plain string


OUTCOMES = tuple(o.value for o in Outcome)


@dataclass(frozen=True)
class Isolated:
    """What came back from one isolated call."""

    outcome: Outcome
    error: str | None
    seconds: float  # from the call's first line to its end (or to the moment it was called hung)
    value: Any = None
    stacks: dict[int, str] = field(default_factory=dict)
    output: str = ""
    exitcode: int | None = None
    traceback: str | None = None
    pid: int | None = None  # the child's pid, also its process group's id
    start: str = "warm"
    startup_seconds: float | None = None  # from asking for the process to the call's first line
    hung_by: str | None = None  # how a hang was known: stillness or the timeout


def checked_start(start: str | None) -> str:
    """``start``, or ``LABKIT_START``'s (else warm) when None; anything else is a :class:`BadInput`."""
    start = start or default_start()
    if start not in STARTS:
        from labkit.core.errors import BadInput

        raise BadInput(f"start={start!r} is not allowed; allowed: {', '.join(STARTS)}")
    return start


def default_start() -> str:
    start = os.environ.get("LABKIT_START", "warm")
    return start if start in STARTS else "warm"


def run_isolated(
    fn: Callable[..., Any],
    kwargs: Mapping[str, Any] | None = None,
    *,
    timeout: float = 60.0,
    idle: float | None = None,
    start: str | None = None,
    env: Mapping[str, str | None] | None = None,
    on_start: Callable[[int], None] | None = None,
    on_tick: Callable[[], None] | None = None,
    tick: float = 0.25,
) -> Isolated:
    """Call ``fn(**kwargs)`` in a child process and report how it ended.

    ``fn`` may be defined in a notebook: cloudpickle carries it by value. ``env`` is applied on
    top of this process's environment (``None`` removes a variable). ``timeout`` counts from the
    call's first line; ``idle`` (seconds, or None for never) calls it hung sooner when its whole
    process group has been still that long. ``start`` is ``"warm"`` or ``"fresh"`` (default:
    ``LABKIT_START``, else warm). ``on_start`` gets the child's pid as soon as it exists (a
    monitor watches that process tree). ``on_tick`` runs in this thread every ``tick`` seconds
    while the child runs, which is how a notebook redraws a live plot without a second thread; it also
    runs while a warm process for this environment starts, and what it raises then (a panel's Stop)
    ends the call before any trial starts.
    """
    start = checked_start(start)
    child_env = child_environment(env)
    call = cloudpickle.dumps((fn, dict(kwargs or {})))
    asked = time.monotonic()
    handover, start = _launcher(child_env, start, on_tick)  # may wait for a warm process: no folder exists yet
    with tempfile.TemporaryDirectory(prefix="labkit-trial-") as tmp:
        folder = Path(tmp)
        try:
            with open(folder / "call.pkl", "wb") as f:
                # The parent's sys.path and working folder travel too, so whatever the parent can
                # import by name (a test module, a notebook's neighbour file) the child can import too.
                pickle.dump({"path": list(sys.path), "cwd": os.getcwd(), "env": child_env, "fn": call}, f)
            (folder / "output.txt").touch()
            proc = handover.start(folder)
        except BaseException:
            handover.cancel()
            raise
        tree = system.current().tree(proc.pid)
        stacks: dict[int, str] = {}
        try:
            if on_start is not None:
                on_start(proc.pid)
            ended, began, hung_by = _wait(proc, tree, folder / "started", asked, timeout, idle, on_tick, tick)
            seconds = time.monotonic() - (began or asked)
            if not ended:
                stacks = _dump_stacks(tree, folder)
        finally:
            _end(proc, tree)
        output = (folder / "output.txt").read_text(errors="replace")[-OUTPUT_KEEP:]
        common = dict(output=output, pid=proc.pid, start=start, startup_seconds=(began - asked) if began else None)
        if not ended:
            return Isolated(Outcome.HUNG, hung_by, seconds, stacks=stacks, hung_by=hung_by, **common)
        result_file = folder / "result.json"
        if result_file.exists():
            result = json.loads(result_file.read_text())
            return Isolated(Outcome(result["outcome"]), result["error"], seconds, value=result.get("value"),
                            exitcode=proc.returncode, traceback=result.get("traceback"), **common)
        return Isolated(Outcome.CRASHED, _describe_exit(proc.returncode), seconds, exitcode=proc.returncode, **common)


def child_environment(env: Mapping[str, str | None] | None) -> dict[str, str]:
    """This process's environment with ``env`` applied on top (``None`` removes a variable)."""
    child_env = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            child_env.pop(key, None)
        else:
            child_env[key] = str(value)
    return child_env


def expect(envs: list[Mapping[str, str | None] | None], start: str | None = None) -> None:
    """Say which trials are coming (each one's ``env``, as :func:`run_isolated` would get it), so that warm
    processes for all of them can start together, before the first is measured (pre-started interpreters
    import side by side; a template needs nothing)."""
    if checked_start(start) == "warm":
        from labkit.isolation import warm

        warm.expect([child_environment(env) for env in envs])


def _launcher(env: dict[str, str], start: str, on_wait: Callable[[], None] | None):
    """How the child will start, and the start it is: a warm process of the environment, ready (waiting
    for it here, ``on_wait`` meanwhile), or a fresh interpreter (asked for, or where the template found
    itself unsafe to fork)."""
    if start == "warm":
        from labkit.isolation import warm

        try:
            return warm.prepare(env, on_wait), "warm"
        except warm.TemplateUnsafe as exc:
            say_once(f"the warm template failed its self-check ({exc}): trials start fresh")

    def fresh(folder: Path) -> subprocess.Popen:
        with open(folder / "output.txt", "ab") as out:  # stdin: its lifeline (see labkit.isolation._child)
            return subprocess.Popen(
                [sys.executable, "-m", "labkit.isolation._child", str(folder), "--lifeline"],
                stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, env=env, **system.current().new_group(),
            )

    from labkit.isolation.warm import Handover

    return Handover(fresh, lambda: None), "fresh"


def _wait(proc, tree: Tree, started: Path, asked: float, timeout: float, idle: float | None, on_tick, tick: float):
    """Wait for the child: ``(ended by itself, when its first line ran, how a hang was known)``."""
    began, deadline = None, asked + STARTUP_LIMIT
    still = _Stillness(tree)
    while True:
        now = time.monotonic()
        if began is None and (began := _first_line(started)) is not None:
            deadline = began + timeout
        if now >= deadline or (began is not None and idle is not None and still.seconds(now) >= idle):
            if proc.poll() is not None:
                return True, _first_line(started), None
            if now < deadline:
                return False, began, (f"no progress: its processes used no CPU for {idle:g} s "
                                      f"(every thread blocked), before the {timeout:g} s timeout")
            return False, began, (f"no answer within {timeout:g} s of its first line" if began
                                  else f"it did not reach its first line within {STARTUP_LIMIT:g} s")
        try:
            proc.wait(timeout=min(tick, deadline - now))
            return True, _first_line(started), None
        except subprocess.TimeoutExpired:
            if on_tick is not None:
                on_tick()


def _first_line(started: Path) -> float | None:
    """When the child's call began (its monotonic clock, which is this process's too), if it has."""
    try:
        return float(started.read_text())
    except (OSError, ValueError):
        return None


class _Stillness:
    """How long a trial's processes have used (almost) no CPU: every thread of them blocked, a hang.

    Still means: no process came or went, and their CPU time grew by less than :data:`IDLE_CPU` of
    one core (a pool's housekeeping thread that wakes every 0.1 s stays under it).
    The clock starts at the first reading, taken once the trial's first line has run: a fresh
    interpreter's seconds of imports are not stillness, even when the tree reads empty then (a trial
    that is already exiting, its main thread gone while others finish). Where no reading can be
    had, it never calls a trial still (said once): the timeout decides.
    """

    def __init__(self, tree: Tree):
        self.tree, self.cpu, self.used, self.since = tree, {}, 0.0, None

    def seconds(self, now: float) -> float:
        cpu = self.tree.cpu_seconds()
        if cpu is None:
            say_once("no CPU readings of a trial's processes here: stillness is off, a hang ends at its timeout")
            return 0.0
        self.used += sum(max(0.0, s - self.cpu.get(pid, 0.0)) for pid, s in cpu.items())
        # a reading's grain is one clock tick (10 ms): allow one
        if self.since is None or set(cpu) != set(self.cpu) or self.used > IDLE_CPU * (now - self.since) + 0.01:
            self.since, self.used = now, 0.0
        self.cpu = cpu
        return now - self.since


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        import signal

        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code} before reporting a result"


def _dump_stacks(tree: Tree, folder: Path) -> dict[int, str]:
    """Ask every process of the trial, one at a time, to write all its threads' stacks."""
    stacks: dict[int, str] = {}
    stacks_file = folder / "stacks.txt"
    for pid in tree.members() or [tree.leader]:
        before = stacks_file.stat().st_size if stacks_file.exists() else 0
        why_not = tree.ask_stacks(pid, folder)
        if why_not is not None:
            stacks[pid] = why_not
            continue
        text = _read_when_settled(stacks_file, before)
        stacks[pid] = text or "(the process did not answer with its stacks)"
    return stacks


def _read_when_settled(path: Path, offset: int) -> str:
    """Read what was appended after ``offset`` once the file stops growing (poll, bounded)."""
    deadline = time.monotonic() + STACK_WAIT
    size, stable_since = offset, time.monotonic()
    while time.monotonic() < deadline:
        now = path.stat().st_size if path.exists() else offset
        if now != size:
            size, stable_since = now, time.monotonic()
        elif size > offset and time.monotonic() - stable_since > 0.05:
            break
        time.sleep(0.01)
    if not path.exists():
        return ""
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace").strip()


def _end(proc, tree: Tree) -> None:
    """Kill the trial's whole tree (workers too), reap the trial, and wait until none of it is left."""
    tree.kill()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"trial process {proc.pid} outlived a kill of its tree for 30 s") from None
    finally:
        if getattr(proc, "stdin", None) is not None:
            proc.stdin.close()  # its lifeline: nothing is left to end by now
    deadline = time.monotonic() + 2.0
    while tree.members() and time.monotonic() < deadline:
        time.sleep(0.01)
