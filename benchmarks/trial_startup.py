"""How long a trial waits before its first line: forked from a warm template against a fresh interpreter.

    python benchmarks/trial_startup.py [--trials 10]

Each trial runs a function that returns at once, so what is measured is the time from asking for
the trial to its first line (``Isolated.startup_seconds``): for a fresh interpreter, starting
Python and importing torch, transformers and labkit; for a warm one, a fork of the template that
did that once. The two kinds alternate (warm, fresh, warm, ...) so that both see the same machine.
The template's own start is printed apart: it is paid once per environment, before the first
warm trial. A benchmark, not a test: it reports medians and a ratio, it asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics

from labkit.isolation.isolated import run_isolated


def first_line() -> dict[str, float]:
    return {}


def startup(start: str) -> float:
    result = run_isolated(first_line, timeout=60, start=start)
    if result.outcome != "ok":
        raise SystemExit(f"a {start} trial ended {result.outcome}: {result.error}")
    return result.startup_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10, help="trials of each kind (default 10)")
    args = parser.parse_args()
    print(f"the warm template's own start (once per environment): {startup('warm'):.2f} s")
    times: dict[str, list[float]] = {"warm": [], "fresh": []}
    for _ in range(args.trials):
        for start in times:
            times[start].append(startup(start))
    for start, values in times.items():
        q = statistics.quantiles(values, n=4)
        print(f"{start:>5}: median {statistics.median(values):.3f} s, quartiles [{q[0]:.3f}, {q[2]:.3f}] s, "
              f"{len(values)} trials")
    print(f"warm/fresh start-up ratio: {statistics.median(times['fresh']) / statistics.median(times['warm']):.0f}")


if __name__ == "__main__":
    main()
