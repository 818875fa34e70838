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
import queue
import sys
import threading
from pathlib import Path

from labkit.isolation._child import NVML_CHECK, main, warm_imports_without_cuda


def _folder_or_exit() -> "queue.Queue[str]":
    """Watch the parent's pipe from the start: a thread reads the one line the parent sends (the trial's
    folder, a byte at a time, so that nothing past it is buffered away from the lifeline) into the
    returned queue; the pipe's end, during the imports or after, ends this process at once."""

    def read() -> None:
        data = b""
        while not data.endswith(b"\n"):
            byte = os.read(0, 1)
            if not byte:
                os._exit(0)  # the parent is gone before it needed this one
            data += byte
        folder.put(data.decode().rstrip("\n"))

    folder: queue.Queue[str] = queue.Queue()
    threading.Thread(target=read, name="labkit-spare-folder", daemon=True).start()
    return folder


def serve() -> None:
    folder_line = _folder_or_exit()
    added = warm_imports_without_cuda()
    print("ready", flush=True)
    folder = Path(folder_line.get())
    if added:
        del os.environ[NVML_CHECK]
    sys.stdout.flush()
    out = os.open(folder / "output.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    main(folder, lifeline=True)


if __name__ == "__main__":
    serve()
