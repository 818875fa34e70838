"""A warm template: ``python -m labkit.isolation._template`` imports what trials need, then forks one child per trial.

Why: a trial's first 6-10 s used to be ``import torch`` and ``import transformers``. This process
pays them once; each trial is then a ``fork`` of it (about 0.05 s), still one process per trial with
a process group of its own, killed as a group by the parent (:mod:`labkit.isolation.warm`).

Why forking it is safe here, when forking is what ``tokenizer-deadlock`` warns against: the hazard
is a fork while another thread holds a lock. This process only imports; it runs no torch op (no
OpenMP team exists), encodes nothing (no tokenizers pool), creates no CUDA context. The one other
thread it has is OpenBLAS's server thread, started when numpy loads; OpenBLAS stops it in its own
``pthread_atfork`` handler before every fork and restarts it lazily after (checked in
``tests/test_warm.py``: the template's threads before a fork, a multi-threaded matmul after it).

Why one template per environment: libgomp, MKL, OpenBLAS and tokenizers read their variables when
they load, which here is before any trial exists. So the parent keys templates by the whole
environment a trial should see, and a trial never runs in a template started with another one.

Protocol, a line each way: the parent writes ``FOLDER`` (holding ``call.pkl``, as for a fresh
child); the template answers ``forked FOLDER PID``, and ``exit PID STATUS`` (a ``waitpid`` status)
when that trial ends. End of input means the parent is gone (closed, crashed, killed, a kernel
restart): the template kills every live trial's process group, removes their folders (a parent
killed outright could not), and exits.
"""

from __future__ import annotations

import contextlib
import os
import select
import selectors
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Iterator

from labkit.isolation._child import NVML_CHECK, main, warm_imports_without_cuda
from labkit.machine.system_linux import LinuxSystem, fork, kill_group, maps_library


def _become_trial(folder: Path, selector: selectors.BaseSelector, wakeup: tuple[int, int], drop: tuple[str, ...]) -> None:
    """In the forked child: a process group of its own, this process's own output file, default
    signals, the environment as the parent gave it (``drop``: what the template added for itself),
    then the trial."""
    try:
        os.setpgid(0, 0)  # the template does the same from its side: whichever runs first, the group exists
        for name in drop:
            del os.environ[name]
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        selector.close()
        for fd in wakeup:
            os.close(fd)
        out = os.open(folder / "output.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        os.close(null)
        import numpy

        numpy.random.seed()  # numpy's global generator was seeded when the template imported it
        main(folder)
    except BaseException:  # noqa: BLE001 - before main() could report it: say why in the trial's output
        import traceback

        traceback.print_exc()
    finally:
        os._exit(70)  # main() leaves with os._exit(0); getting here means it could not start


def check_self() -> str | None:
    """Why forking this process would not be safe, or None. After the imports it must run exactly the
    threads it is known to run: its main thread and OpenBLAS's servers (one fewer than each OpenBLAS
    pool's size, as threadpoolctl reports it; OpenBLAS stops them in its own fork handler). Any other
    thread could hold a lock that a forked trial would wait for forever. And no CUDA driver may be
    loaded (``torch.cuda.is_initialized()`` misses one loaded by a device count's fallback)."""
    import torch
    from threadpoolctl import threadpool_info

    expected = 1 + sum(pool["num_threads"] - 1 for pool in threadpool_info() if pool["internal_api"] == "openblas")
    threads = LinuxSystem().own_threads()
    if threads is not None and threads != expected:
        return f"it runs {threads} OS threads after its imports where it should run {expected} (its own and OpenBLAS's)"
    if torch.cuda.is_initialized() or maps_library("libcuda.so"):
        return "the CUDA driver is loaded: a trial forked from here could not use CUDA"
    return None


@contextlib.contextmanager
def _exit_if_the_parent_goes() -> Iterator[None]:
    """While the block runs (the imports: seconds), a thread watches the parent's pipe on stdin, and its
    end (the parent died) ends this process at once. The thread has ended when the block does: the
    template forks with no thread of its own. (Nothing is written to the pipe before "ready".)"""
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if select.select([sys.stdin], [], [], 0.1)[0] and not os.read(sys.stdin.fileno(), 1):
                os._exit(0)

    watcher = threading.Thread(target=watch, name="labkit-template-lifeline", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


def serve() -> None:
    with _exit_if_the_parent_goes():
        added = warm_imports_without_cuda()
    if (unsafe := check_self()) is not None:
        print(f"unsafe {unsafe}", flush=True)  # the parent starts this environment's trials fresh
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so that the wakeup fd hears of each exit
    selector = selectors.DefaultSelector()
    selector.register(sys.stdin, selectors.EVENT_READ)
    selector.register(read_fd, selectors.EVENT_READ)
    trials: dict[int, Path] = {}  # live trials and their folders
    print("ready", flush=True)
    try:
        while True:
            for key, _ in selector.select():
                if key.fileobj is sys.stdin:
                    line = sys.stdin.readline()
                    if not line:
                        return  # the parent is gone
                    folder = Path(line.rstrip("\n"))
                    sys.stdout.flush()
                    pid = fork()
                    if pid == 0:
                        _become_trial(folder, selector, (read_fd, write_fd), drop=(NVML_CHECK,) if added else ())
                    try:
                        os.setpgid(pid, pid)  # before the parent hears of it: a kill of the group must find it
                    except (PermissionError, ProcessLookupError):
                        pass  # it did so itself already, or it is gone
                    trials[pid] = folder
                    print(f"forked {folder} {pid}", flush=True)
                else:
                    os.read(read_fd, 512)
                    _reap(trials)
    finally:  # the parent is gone: it can no longer kill these trials or remove their folders
        for pid, folder in trials.items():
            kill_group(pid)
            shutil.rmtree(folder, ignore_errors=True)


def _reap(trials: dict[int, Path]) -> None:
    while trials:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        trials.pop(pid, None)
        print(f"exit {pid} {status}", flush=True)


if __name__ == "__main__":
    serve()
