"""Stacks from the processes a trial spawns: a new interpreter (multiprocessing's spawn, the only
start method on the portable route) has none of the trial's stack handling, where a forked worker
inherits it.

The trial names its folder in :data:`VARIABLE`, which every process it starts inherits; a spawned
process that imports labkit (a scenario's worker does: its code is labkit's) answers stack requests
from then on, as the trial does, into the trial's own stacks file. A process that never imports
labkit (multiprocessing's resource tracker, say) gives none, and the stacks say so (on Linux it is
not even signalled: SIGUSR1 would kill it).
"""

from __future__ import annotations

import os
from pathlib import Path

VARIABLE = "LABKIT_TRIAL_FOLDER"
_joined = False


def answer_stacks(folder: Path) -> None:
    """Answer stack requests for this process into ``folder``'s stacks file, by the platform's route."""
    global _joined
    from labkit.machine import system

    # faulthandler may write from a signal handler with no GIL, so it needs a real file descriptor:
    # a file of our own, never sys.stderr (in a notebook kernel that one has no descriptor).
    # Forked children inherit the file and the handling, so their stacks come too.
    system.current().answer_stacks(folder, open(folder / "stacks.txt", "a", buffering=1))
    _joined = True


def join_trial() -> None:
    """In a process a trial spawned: answer stack requests, once (``labkit/__init__.py`` calls it)."""
    folder = os.environ.get(VARIABLE)
    if folder and not _joined and Path(folder).is_dir():
        answer_stacks(Path(folder))
