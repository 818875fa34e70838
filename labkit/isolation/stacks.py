"""Read the stacks ``faulthandler`` wrote for a hung trial: which process, which thread, which line.

faulthandler writes plain text (it must: it runs in a signal handler), one block per thread::

    Thread 0x00007f3a... (most recent call first):
      File "/.../tokenizer_deadlock.py", line 75 in _encode
      File "/.../multiprocessing/pool.py", line 125 in worker

Turned into rows, a notebook asks "which processes wait in ``_encode``?" with pandas instead of
searching text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator, Mapping

_THREAD = re.compile(r"^(Current thread|Thread) (0x[0-9a-f]+)", re.IGNORECASE)
_FRAME = re.compile(r'^\s+File "(?P<file>[^"]*)", line (?P<line>\d+|\?\?\?) in (?P<function>\S+)')


@dataclass(frozen=True)
class Frame:
    pid: int
    thread: str  # faulthandler's thread id, as it printed it
    main: bool  # the thread that took the signal: Python's main thread
    depth: int  # 0: the innermost frame, where the thread is now
    function: str
    file: str
    line: int | None


def frames(stacks: Mapping[int, str]) -> Iterator[Frame]:
    """Every frame of every thread of every process, innermost first within a thread."""
    for pid, text in stacks.items():
        thread, main, depth = None, False, 0
        for row in text.splitlines():
            if match := _THREAD.match(row):
                thread, main, depth = match.group(2), match.group(1).lower() == "current thread", 0
            elif thread is not None and (match := _FRAME.match(row)):
                line = match["line"]
                yield Frame(int(pid), thread, main, depth, match["function"], match["file"],
                            None if line == "???" else int(line))
                depth += 1
