"""The two halves of the platform seam (:mod:`labkit.machine.system` chooses the route): what a route
must give, as abstract classes, and how a missing reading is said.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, TextIO

log = logging.getLogger("labkit")
_said: set[str] = set()


def say_once(message: str) -> None:
    """A missing reading, said once per process (a WARNING on the ``labkit`` logger), never per trial."""
    if message not in _said:
        _said.add(message)
        log.warning("labkit: %s", message)


class Tree(ABC):
    """One trial's processes, seen from the parent: the trial leads, its workers follow."""

    def __init__(self, leader: int):
        self.leader = leader

    @abstractmethod
    def members(self) -> list[int] | None:
        """Live processes of the trial, the leader first; None where they cannot be read."""

    @abstractmethod
    def cpu_seconds(self) -> dict[int, float] | None:
        """CPU seconds (user + system) of each live member; None where they cannot be read."""

    @abstractmethod
    def kill(self) -> None:
        """Kill every process of the trial, workers included (the leader is reaped by its caller)."""

    @abstractmethod
    def ask_stacks(self, pid: int, folder: Path) -> str | None:
        """Ask ``pid`` to append its threads' stacks to the trial's stacks file; a reason when it cannot be asked."""


class System(ABC):
    """One route: what this operating system gives a trial and its parent."""

    name: str
    warm: str  # a key of WARM_STARTS: how a warm trial starts here

    @abstractmethod
    def tree(self, leader: int) -> Tree:
        """The trial led by ``leader`` (started with :meth:`new_group`)."""

    @abstractmethod
    def new_group(self) -> dict[str, Any]:
        """``subprocess.Popen`` arguments that make a trial the head of a tree of its own."""

    @abstractmethod
    def answer_stacks(self, folder: Path, file: TextIO) -> None:
        """In a trial: answer :meth:`Tree.ask_stacks` by writing every thread's stack to ``file``."""

    @abstractmethod
    def end_own_tree(self) -> None:
        """In a trial whose parent died: kill this process and everything it started."""

    @abstractmethod
    def direct_children(self, pid: int) -> list[int]:
        """Children of ``pid`` (the monitor's cheap search between full ones)."""

    @abstractmethod
    def read_process(self, proc) -> tuple[float, int, int, int, int] | None:
        """(CPU seconds incl. reaped children, threads, voluntary and involuntary switches, RSS) of a
        ``psutil.Process``; None when it is gone or cannot be read."""

    @abstractmethod
    def own_threads(self) -> int | None:
        """OS threads of this process (OpenMP's and Rust's too); None where they cannot be read."""

    @abstractmethod
    def own_involuntary_switches(self) -> int | None:
        """Times this process's threads were preempted so far; None where it cannot be read."""

    def worker_start_method(self) -> str:
        """How a trial starts worker processes of its own: ``fork`` right after its imports where
        this route forks, else ``spawn`` (each worker imports for itself)."""
        return "fork" if self.warm == "fork" else "spawn"

    def unavailable(self) -> list[str]:
        """What this machine does not give labkit, a line each (``labkit doctor`` lists them)."""
        missing = []
        if not hasattr(os, "fork"):
            missing.append("os.fork: scenarios whose failure needs fork (tokenizer-deadlock broken) say so and stop")
        return missing


