"""Run one call in a child process, with a timeout, and always get an answer back.

Why a fresh interpreter (``subprocess.Popen([python, "-m", "labkit._child"])``, the same thing as
multiprocessing's *spawn* method) and not *fork*: a forked child inherits a copy of the parent's
memory but none of its threads. A notebook kernel, or any process that has already run torch's
OpenMP pool or the tokenizers Rust pool, can hand the child a lock that some thread held at the
moment of the fork and that nobody will ever release; that is the ``tokenizer-deadlock`` scenario
itself. A fresh interpreter also means every trial starts with the same process-global state
(thread pools, environment variables read at start-up such as ``OMP_NUM_THREADS``). The cost is
the imports: about 6 s per trial on the 2-core CI machine (torch 2.2 s, transformers 3.5 s more).

Why a new session (``start_new_session=True``): the child and everything it starts (forked
workers, ranks, pools) form one process group that can be killed as a whole, so nothing is left
behind after a timeout.

Why a signal plus ``faulthandler`` for the stacks: a hung process may hold the GIL or sit in native
code, so no Python code of ours can be relied on to run in it; faulthandler's handler is C and
async-signal-safe. Each process in the group that installed it is asked in turn, so every
process's stacks come back separately.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import cloudpickle

from ._child import STACK_SIGNAL

OUTCOMES = ("ok", "raised", "wrong", "hung", "crashed")
OUTPUT_KEEP = 20_000  # characters of the child's stdout+stderr kept in the result
STACK_WAIT = 1.0  # seconds allowed for one process to write its stacks


@dataclass(frozen=True)
class Isolated:
    """What came back from one isolated call."""

    outcome: str
    error: str | None
    seconds: float
    value: Any = None
    stacks: dict[int, str] = field(default_factory=dict)
    output: str = ""
    exitcode: int | None = None
    traceback: str | None = None
    pid: int | None = None  # the child's pid, also its process group's id


def run_isolated(
    fn: Callable[..., Any],
    kwargs: Mapping[str, Any] | None = None,
    *,
    timeout: float = 60.0,
    env: Mapping[str, str | None] | None = None,
    on_start: Callable[[int], None] | None = None,
    on_tick: Callable[[], None] | None = None,
    tick: float = 0.25,
) -> Isolated:
    """Call ``fn(**kwargs)`` in a fresh child process and report how it ended.

    ``fn`` may be defined in a notebook: cloudpickle carries it by value. ``env`` is applied on
    top of this process's environment before the child starts (``None`` removes a variable).
    ``on_start`` gets the child's pid as soon as it exists (a monitor watches that process tree).
    ``on_tick`` runs in this thread every ``tick`` seconds while the child runs, which is how a
    notebook redraws a live plot without a second thread.
    """
    with tempfile.TemporaryDirectory(prefix="labkit-trial-") as tmp:
        folder = Path(tmp)
        with open(folder / "call.pkl", "wb") as f:
            # The parent's sys.path travels first, so whatever the parent can import by name
            # (a test module, a notebook's neighbour file) the child can import too.
            pickle.dump((list(sys.path), cloudpickle.dumps((fn, dict(kwargs or {})))), f)
        child_env = dict(os.environ)
        for key, value in (env or {}).items():
            if value is None:
                child_env.pop(key, None)
            else:
                child_env[key] = str(value)
        started = time.monotonic()
        with open(folder / "output.txt", "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "labkit._child", str(folder)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env,
                start_new_session=True,
            )
        stacks: dict[int, str] = {}
        try:
            if on_start is not None:
                on_start(proc.pid)
            finished = _wait(proc, started + timeout, on_tick, tick)
            seconds = time.monotonic() - started
            if not finished:
                stacks = _dump_stacks(proc.pid, folder / "stacks.txt")
        finally:
            _kill_group(proc)
        output = (folder / "output.txt").read_text(errors="replace")[-OUTPUT_KEEP:]
        if not finished:
            return Isolated("hung", f"no answer within {timeout:g} s", seconds, stacks=stacks, output=output, pid=proc.pid)
        result_file = folder / "result.json"
        if result_file.exists():
            result = json.loads(result_file.read_text())
            return Isolated(
                result["outcome"],
                result["error"],
                seconds,
                value=result.get("value"),
                output=output,
                exitcode=proc.returncode,
                traceback=result.get("traceback"),
                pid=proc.pid,
            )
        return Isolated("crashed", _describe_exit(proc.returncode), seconds, output=output, exitcode=proc.returncode,
                        pid=proc.pid)


def _wait(proc: subprocess.Popen, deadline: float, on_tick, tick: float) -> bool:
    """Wait for the child until the deadline; True if it exited by itself."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return proc.poll() is not None
        try:
            proc.wait(timeout=min(tick, left))
            return True
        except subprocess.TimeoutExpired:
            if on_tick is not None:
                on_tick()


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by signal {signal.Signals(-code).name}"
    return f"exited with code {code} before reporting a result"


def group_members(pgid: int) -> list[int]:
    """Live processes in a process group, oldest pid first (the trial itself leads)."""
    members = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            if os.getpgid(pid) == pgid and not _is_zombie(pid):
                members.append(pid)
        except (ProcessLookupError, PermissionError):
            continue
    return sorted(members, key=lambda pid: (pid != pgid, pid))


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _catches(pid: int, sig: int) -> bool:
    """Whether ``pid`` installed a handler for ``sig`` (so the signal will not kill it)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool((int(line.split()[1], 16) >> (sig - 1)) & 1)
    except OSError:
        pass
    return False


def _dump_stacks(pgid: int, stacks_file: Path) -> dict[int, str]:
    """Ask every process of the group, one at a time, to write all its threads' stacks."""
    stacks: dict[int, str] = {}
    pids = group_members(pgid) or [pgid]
    for pid in pids:
        if not _catches(pid, STACK_SIGNAL):
            stacks[pid] = "(no stack handler installed in this process: it had not started Python's faulthandler)"
            continue
        before = stacks_file.stat().st_size if stacks_file.exists() else 0
        try:
            os.kill(pid, STACK_SIGNAL)
        except ProcessLookupError:
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
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace").strip()


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the whole process group (grandchildren too) and reap the child."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    deadline = time.monotonic() + 2.0
    while group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
