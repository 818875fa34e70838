"""What one measurement costs: labkit.compare_functions against timeit and torch.utils.benchmark.

    python benchmarks/function_cost.py [--trials 10]

The same functions, measured three ways:

* ``timeit`` (``Timer.autorange`` then ``repeat``): many calls in this process, the per-call median;
* ``torch.utils.benchmark.Timer.blocked_autorange``: many calls in this process, one thread by
  default, CUDA synchronised where there is CUDA; the per-call median;
* ``labkit.compare_functions`` (the function against itself, an A/A run): one call per trial, each
  trial a process forked from a warm template; ``call_s`` is that one call, and the per-trial cost
  is the wall-clock time of the whole comparison divided by its trials (fork, pickling, waiting,
  reading the result back), with the monitor off and on.

The README's "which tool when" quotes this. It reports; it does not assert.
"""

from __future__ import annotations

import argparse
import statistics
import time
import timeit
from typing import Callable


def small_sum() -> None:
    """About 10 microseconds of Python."""
    sum(range(500))


def big_sum() -> None:
    """About 10 milliseconds of Python."""
    sum(range(500_000))


def matmul() -> None:
    """A torch matmul of 256 x 256 (the tensors made inside: a fresh process has none)."""
    import torch

    torch.ones(256, 256) @ torch.ones(256, 256)


def waits() -> None:
    """A 50 ms wait with every thread blocked, as a call to a server."""
    time.sleep(0.05)


FUNCTIONS: list[Callable[[], None]] = [small_sum, big_sum, matmul, waits]


def with_timeit(fn: Callable[[], None]) -> tuple[float, float]:
    """``(per-call median, wall seconds spent)``."""
    began = time.perf_counter()
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    runs = timer.repeat(repeat=5, number=number)
    return statistics.median(runs) / number, time.perf_counter() - began


def with_torch(fn: Callable[[], None]) -> tuple[float, float]:
    from torch.utils import benchmark

    began = time.perf_counter()
    measurement = benchmark.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=0.2)
    return measurement.median, time.perf_counter() - began


def with_labkit(fn: Callable[[], None], trials: int, monitor: bool) -> tuple[float, float]:
    """``(median call_s, wall seconds per trial)`` of an A/A comparison of ``fn`` with ``trials`` a side."""
    from labkit import compare_functions

    began = time.perf_counter()
    result = compare_functions(fn, fn, repeats=trials, monitor=monitor)
    per_trial = (time.perf_counter() - began) / (2 * trials)
    return statistics.median(result.a.values("call_s") + result.b.values("call_s")), per_trial


def _time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10, help="labkit trials a side")
    args = parser.parse_args()
    from labkit import compare_functions

    compare_functions(small_sum, small_sum, repeats=1, monitor=False)  # the warm template, started once
    print(f"{'function':<10} {'timeit call':>12} {'(spent)':>9} {'torch call':>11} {'(spent)':>9} "
          f"{'labkit call_s':>14} {'a trial':>9} {'with monitor':>13}")
    for fn in FUNCTIONS:
        t_call, t_spent = with_timeit(fn)
        b_call, b_spent = with_torch(fn)
        l_call, l_trial = with_labkit(fn, args.trials, monitor=False)
        _, m_trial = with_labkit(fn, args.trials, monitor=True)
        print(f"{fn.__name__:<10} {_time(t_call):>12} {_time(t_spent):>9} {_time(b_call):>11} {_time(b_spent):>9} "
              f"{_time(l_call):>14} {_time(l_trial):>9} {_time(m_trial):>13}")
    print("call: the per-call median; spent: wall time of that tool's whole measurement; a trial: labkit's wall time "
          "per trial (one call each), monitor off, then on")


if __name__ == "__main__":
    main()
