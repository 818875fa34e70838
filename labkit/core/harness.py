"""What variants share: threads released together, workers forked safely, measurements kept on failure.

A variant's own module shows what fails and what fixes it; the scaffolding around that lives here,
written once, so that two variants differ only where the failure and its fix do.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Callable, Iterator, Mapping

from labkit.core.errors import WrongResult


def with_metrics(exc: BaseException, metrics: Mapping[str, Any]) -> BaseException:
    """``exc``, carrying ``metrics`` (its own win) for the trial to keep with its outcome.

    The isolated child reads ``exc.metrics`` when a variant raises, so a run that failed at step 3
    still reports the steps it completed and the notes that explain it.
    """
    exc.metrics = {**metrics, **getattr(exc, "metrics", {})}
    return exc


@contextlib.contextmanager
def metrics_on_failure(metrics: Mapping[str, Any]) -> Iterator[None]:
    """Whatever the block raises leaves with ``metrics`` (read at the moment it fails)."""
    try:
        yield
    except Exception as exc:
        with_metrics(exc, metrics)
        raise


def same_as_reference(answer: Any, reference: Any, metrics: Mapping[str, Any], *, how: str, reference_how: str) -> None:
    """Raise :class:`WrongResult` unless a run's answer is the reference run's (greedy decoding agrees)."""
    if answer != reference:
        raise WrongResult(f"{how} said {answer}, {reference_how} {reference}", dict(metrics))


def together(count: int, work: Callable[[int], Any], name: str = "worker") -> tuple[list[Any], list[BaseException | None], float]:
    """Run ``work(i)`` in ``count`` threads released at once; return answers, errors and wall seconds.

    A barrier holds every thread until all exist, so they contend from the first instruction
    instead of the first one finishing before the last starts.
    """
    answers: list[Any] = [None] * count
    errors: list[BaseException | None] = [None] * count
    start = threading.Barrier(count)

    def thread(i: int) -> None:
        start.wait()
        try:
            answers[i] = work(i)
        except Exception as exc:  # noqa: BLE001 - each thread's failure is reported
            errors[i] = exc

    threads = [threading.Thread(target=thread, args=(i,), name=f"{name}-{i}") for i in range(count)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers, errors, time.monotonic() - t0


def fork_context():
    """The context for a trial's own worker processes: fork right after its imports where the platform's
    route forks (Linux), else spawn (:meth:`labkit.machine.system.System.worker_start_method`).

    A fork copies memory but one thread: a lock another thread held stays held forever in the
    child (the ``tokenizer-deadlock`` scenario). Forking right after the imports is cheap and safe;
    this check keeps it so when the code around it changes. labkit's own ``labkit-*`` threads (a
    trial's lifeline and stack watcher) wait in system calls and hold no lock a worker could need.
    (Threads that Python does not know, such as the tokenizers Rust pool, are not seen here: that
    scenario is about exactly those.)
    """
    import multiprocessing as mp

    from labkit.machine import system

    method = system.current().worker_start_method()
    others = [t.name for t in threading.enumerate()
              if t is not threading.current_thread() and not t.name.startswith("labkit-")]
    if method == "fork" and others:
        raise RuntimeError(f"refusing to fork workers from a process that runs other threads: {', '.join(others)}")
    return mp.get_context(method)
