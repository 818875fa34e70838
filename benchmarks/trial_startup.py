"""How long a trial waits before its first line: forked from a warm template, handed to a pre-started
interpreter, or started as a fresh interpreter.

    python benchmarks/trial_startup.py [--trials 10]

Each trial runs a function that returns at once, so what is measured is the time from asking for
the trial to its first line (``Isolated.startup_seconds``): for a fresh interpreter, starting
Python and importing torch, transformers and labkit; for a fork, a fork of the template that did
that once; for a pre-started interpreter (the portable route, ``LABKIT_PLATFORM=portable``: macOS,
Windows), handing over the trial to one that did it already. The three kinds alternate (fork,
spare, fresh, fork, ...) so that all see the same machine.

What each warm kind pays apart is printed too: the template's start, once per environment, and the
spares' batches, which start whenever none is ready (before the trial that needs them, never while
one is measured). A trial that waited for a batch counts in the medians with that wait; "per trial,
all included" spreads every batch over the trials it served. A benchmark, not a test: it reports
medians and ratios, it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from labkit.isolation.isolated import expect, run_isolated

KINDS = {"fork": ("linux", "warm"), "spare": ("portable", "warm"), "fresh": ("linux", "fresh")}


def first_line() -> dict[str, float]:
    return {}


def startup(kind: str) -> tuple[float, float]:
    """(ask to first line, ask to answer) of one trial of ``kind``."""
    route, start = KINDS[kind]
    os.environ["LABKIT_PLATFORM"] = route
    asked = time.monotonic()
    result = run_isolated(first_line, timeout=60, start=start)
    if result.outcome != "ok":
        raise SystemExit(f"a {kind} trial ended {result.outcome}: {result.error}")
    return result.startup_seconds, time.monotonic() - asked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10, help="trials of each kind (default 10)")
    args = parser.parse_args()
    print(f"the warm template's own start (once per environment): {startup('fork')[0]:.2f} s")
    os.environ["LABKIT_PLATFORM"] = "portable"
    expect([None] * args.trials)  # as a run of that many trials says: spares start together, up to warm.MAX_SPARES
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    total: dict[str, float] = {kind: 0.0 for kind in KINDS}
    for _ in range(args.trials):
        for kind in KINDS:
            first, whole = startup(kind)
            times[kind].append(first)
            total[kind] += whole
    for kind, values in times.items():
        q = statistics.quantiles(values, n=4)
        print(f"{kind:>5}: median {statistics.median(values):.3f} s, quartiles [{q[0]:.3f}, {q[2]:.3f}] s, "
              f"per trial, all included {total[kind] / len(values):.2f} s, {len(values)} trials")
    fresh = statistics.median(times["fresh"])
    print(f"fresh/fork start-up ratio: {fresh / statistics.median(times['fork']):.0f}")
    print(f"fresh/spare start-up ratio: {fresh / statistics.median(times['spare']):.0f} "
          f"(all included: {total['fresh'] / total['spare']:.1f})")


if __name__ == "__main__":
    main()
