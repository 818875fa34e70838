"""The Linux route: ``/proc`` for processes and CPU time, a process group per trial, SIGUSR1 for stacks,
warm trials forked from a template.

Every trial is the leader of a process group of its own, so ``killpg`` ends its forked workers and
ranks too, and the group's members are the processes whose ``/proc/PID/stat`` names it. Stacks come
from ``faulthandler`` on SIGUSR1: its handler is C and async-signal-safe, so it answers even while
the process holds the GIL in native code, and forked workers inherit it.

With ``/proc`` hidden (a container, ``unshare -m`` with a tmpfs over it) the groups still work, so a
trial is still killed whole; only the readings go: :meth:`LinuxTree.cpu_seconds` answers None and
stillness is off. Only the leader is then asked for stacks: it is the one process known to handle
SIGUSR1 (whose default action would kill the others).
"""

from __future__ import annotations

import faulthandler
import os
import resource
import signal
import warnings
from pathlib import Path
from typing import Any, TextIO

from labkit.machine.system_base import System, Tree

PROC = Path("/proc")
STACK_SIGNAL = signal.SIGUSR1
_HZ = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def readable() -> bool:
    """Whether ``/proc`` shows processes (it may be hidden or empty)."""
    return (PROC / "self" / "stat").exists()


def _stat(pid: int) -> list[str] | None:
    """``/proc/PID/stat`` after the command name: fields 3 onwards (the state first)."""
    try:
        return (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def group_members(pgid: int) -> list[int] | None:
    """Live processes of a process group, the leader first; None where ``/proc`` is unreadable."""
    if not readable():
        return None
    members = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:  # state, ..., pgrp
            members.append(int(entry.name))
    return sorted(members, key=lambda pid: (pid != pgid, pid))


def is_zombie(pid: int) -> bool:
    fields = _stat(pid)
    return fields is None or fields[0] == "Z"


def _catches(pid: int, sig: int) -> bool | None:
    """Whether ``pid`` installed a handler for ``sig`` (so the signal will not kill it); None: unknown."""
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool((int(line.split()[1], 16) >> (sig - 1)) & 1)
    except OSError:
        return None
    return False


class LinuxTree(Tree):
    """A trial's process group."""

    def members(self) -> list[int] | None:
        return group_members(self.leader)

    def cpu_seconds(self) -> dict[int, float] | None:
        members = self.members()
        if members is None:
            return None
        seconds = {}
        for pid in members:
            if (fields := _stat(pid)) is not None:
                seconds[pid] = (int(fields[11]) + int(fields[12])) / _HZ  # utime, stime
        return seconds

    def kill(self) -> None:
        kill_group(self.leader)

    def ask_stacks(self, pid: int, folder: Path) -> str | None:
        catches = _catches(pid, STACK_SIGNAL)
        if catches is None and pid == self.leader:
            catches = True  # /proc unreadable: the trial installed its handler before its first line
        if not catches:
            return ("(no stack handler installed in this process: it had not started Python's faulthandler)"
                    if catches is False else "(not asked: /proc is unreadable here, so whether it handles SIGUSR1 is unknown)")
        try:
            os.kill(pid, STACK_SIGNAL)
        except ProcessLookupError:
            return "(the process ended before it was asked)"
        return None


class LinuxSystem(System):
    name = "linux"
    warm = "fork"

    def tree(self, leader: int) -> Tree:
        return LinuxTree(leader)

    def new_group(self) -> dict[str, Any]:
        return {"start_new_session": True}

    def answer_stacks(self, folder: Path, file: TextIO) -> None:
        faulthandler.register(STACK_SIGNAL, file=file, all_threads=True)

    def end_own_tree(self) -> None:
        os.killpg(0, signal.SIGKILL)

    def direct_children(self, pid: int) -> list[int]:
        try:
            return [int(x) for x in (PROC / str(pid) / "task" / str(pid) / "children").read_bytes().split()]
        except OSError:
            return []

    def read_process(self, proc) -> tuple[float, int, int, int, int] | None:
        """Two reads of ``/proc`` (stat and status): psutil's accessors would open more files and cost
        about twice as much per process."""
        fields = _stat(proc.pid)
        try:
            status = (PROC / str(proc.pid) / "status").read_bytes()
        except OSError:
            return None
        if fields is None:
            return None
        cpu = sum(int(x) for x in fields[11:15]) / _HZ  # utime, stime, cutime, cstime
        vol = int(status.split(b"voluntary_ctxt_switches:", 1)[1].split(None, 1)[0])
        invol = int(status.split(b"nonvoluntary_ctxt_switches:", 1)[1].split(None, 1)[0])
        return cpu, int(fields[17]), vol, invol, int(fields[21]) * _PAGE

    def own_threads(self) -> int | None:
        try:
            return len(os.listdir(PROC / "self" / "task"))
        except OSError:
            return None

    def own_involuntary_switches(self) -> int | None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw

    def unavailable(self) -> list[str]:
        missing = super().unavailable()
        if not readable():
            missing.append("/proc: no CPU readings, so no stillness (a hang ends at its timeout) and no live CPU plot")
        return missing


def maps_library(fragment: str) -> bool | None:
    """Whether this process has a shared library whose path holds ``fragment`` mapped; None: unknown."""
    try:
        return fragment in (PROC / "self" / "maps").read_text()
    except OSError:
        return None


def fork() -> int:
    """``os.fork()`` in the warm template. Python 3.12 and newer warn (DeprecationWarning) when a process
    with more than one thread forks; the template's one other thread is OpenBLAS's, which OpenBLAS
    stops in its own ``pthread_atfork`` handler, and the template checks that it has no other
    (:func:`labkit.isolation._template.check_self`). The warning goes to the template's own log, never
    to a notebook; it is silenced here only, for this reason."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def kill_group(pgid: int) -> None:
    """Kill a trial's whole process group (a tree's end, and the template's clean-up of a trial whose parent
    is gone); one already gone is no error."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
