"""A pre-started interpreter: ``python -m labkit.isolation._spare`` imports what trials need, says ``ready``,
then waits for one trial's folder on stdin and becomes that trial.

Where labkit does not fork (the portable route: macOS, where forking after torch's imports is
unsafe, and Windows, which has no fork), this is how a trial skips its imports. The parent
(:mod:`labkit.isolation.warm`) starts spares while nothing is being measured, and each serves
exactly one trial: every trial is still a fresh process of its own. stdin stays the parent's pipe:
its end, before the trial or during it, is the lifeline (:func:`labkit.isolation._child.hold_lifeline`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from labkit.isolation._child import NVML_CHECK, main, warm_imports_without_cuda


def _line(fd: int = 0) -> str:
    """One line from ``fd``, a byte at a time: nothing past it is buffered away from the lifeline."""
    data = b""
    while not data.endswith(b"\n"):
        byte = os.read(fd, 1)
        if not byte:
            return ""
        data += byte
    return data.decode().rstrip("\n")


def serve() -> None:
    added = warm_imports_without_cuda()
    print("ready", flush=True)
    folder = _line()
    if not folder:
        return  # the parent is gone before it needed this one
    if added:
        del os.environ[NVML_CHECK]
    sys.stdout.flush()
    out = os.open(Path(folder) / "output.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    main(Path(folder), lifeline=True)


if __name__ == "__main__":
    serve()
