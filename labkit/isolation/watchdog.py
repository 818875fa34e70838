"""``with labkit.watchdog(seconds=30): ...``: a hang in your own code becomes an error, with stacks.

When the time is up, a timer thread records every thread's Python stack, then interrupts the watched
thread: the main thread (a notebook cell) gets a real SIGINT, which also wakes a blocked
``lock.acquire()``, ``queue.get()`` or ``time.sleep()``; another thread gets an asynchronous
exception at its next bytecode. Either way the block ends with :class:`WatchdogTimeout` and the
kernel lives on. Where the main thread's SIGINT is ignored (a shell's background job inherits that)
or left to the OS default (which would end the process), the block gets Python's own handler while
it runs, and the old disposition back after. What it cannot stop is native code that holds the GIL
and never returns: then no Python runs at all, and only a child process
(:func:`labkit.run_isolated`) can be killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import sys
import threading
import time
import traceback


class WatchdogTimeout(RuntimeError):
    """The watched block made no progress in time; ``stacks`` holds every thread's stack then."""

    def __init__(self, message: str, stacks: str):
        super().__init__(message)
        self.stacks = stacks


def all_stacks() -> str:
    names = {t.ident: t.name for t in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        parts.append(f"Thread {names.get(ident, ident)} ({ident}):\n" + "".join(traceback.format_stack(frame)))
    return "\n".join(parts)


class watchdog(contextlib.ContextDecorator):
    """Context manager and decorator: raise :class:`WatchdogTimeout` if the block runs too long."""

    def __init__(self, seconds: float):
        if seconds <= 0:
            from labkit.core.errors import BadInput

            raise BadInput(f"seconds must be positive, got {seconds}")
        self.seconds = seconds

    def __enter__(self) -> "watchdog":
        self._target = threading.get_ident()
        self._restore = None
        if self._target == threading.main_thread().ident and signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL):
            self._restore = signal.signal(signal.SIGINT, signal.default_int_handler)
        self._lock = threading.Lock()
        self._inside, self._fired, self.stacks = True, False, ""
        self._timer = threading.Timer(self.seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()
        return self

    def _fire(self) -> None:
        with self._lock:
            if not self._inside:
                return
            self.stacks = all_stacks()
            self._fired = True
            if self._target == threading.main_thread().ident:
                signal.pthread_kill(self._target, signal.SIGINT)
            else:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._target), ctypes.py_object(KeyboardInterrupt))

    def __exit__(self, exc_type, exc, tb) -> bool:
        with self._lock:
            self._inside = False
        self._timer.cancel()
        try:
            if not self._fired:
                return False
            if exc_type is not KeyboardInterrupt:
                _absorb_pending_interrupt()  # the block ended just as the time ran out
        finally:
            if self._restore is not None:
                signal.signal(signal.SIGINT, self._restore)
        raise WatchdogTimeout(f"no progress within {self.seconds:g} s; every thread's stack is in .stacks:\n{self.stacks}",
                              self.stacks) from None


def _absorb_pending_interrupt(limit: float = 1.0) -> None:
    deadline = time.monotonic() + limit
    try:
        while time.monotonic() < deadline:
            time.sleep(0.01)
    except KeyboardInterrupt:
        pass
