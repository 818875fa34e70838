"""How often an A/A comparison names a winner, and how often a real 1.2x difference is found.

    python benchmarks/ab_calibration.py [--draws 20000] [--seed 0] [--real 6 | --real 0]

A verdict at 95% promises: run the same thing on both sides and a winner is named at most 5% of the
time. This checks that promise the way :func:`labkit.compare` keeps it: trials in pairs, a coin for
the order within each pair, and the very code that decides (``labkit.core.stats``: the choice of
test, the intervals), on simulated runs whose noise is shaped like a shared machine's:

* ``normal``: 10% normal noise, each trial on its own;
* ``log-normal``: 30% skewed noise (a slow run is slower by a factor);
* ``heavy tails``: log values with Student's t noise, 2 degrees of freedom (no finite variance);
* ``outliers``: 5% noise, and one trial in 10 two to four times slower (another job took the cores);
* ``drift``: the machine slows down steadily to 2x by the end of the run, 5% noise on top;
* ``random walk``: the machine's speed wanders (3% steps), 3% noise on top;
* ``whole numbers``: 10% noise on a metric rounded to whole numbers near 20 (ties).

Rows ``n = 3 .. 20`` are fixed numbers of trials a side (``--repeats N``); ``looks`` rows are the
open-ended comparison (``labkit compare`` without ``--repeats``): looks at 5, 10 and 20 a side, or an
earlier last look where the budget runs out. Then the power to find a 1.2x difference at 10% noise,
with and without drift, and one real A/A run of a scenario.

The largest of many noisy estimates overstates the worst rate, so the five highest cells are measured
again on fresh draws (twenty times as many) and the last line reports the highest of those:
``worst false-positive rate: X%``.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Callable

import numpy as np

from labkit.core import stats
from labkit.core.compare import CONFIDENCE, LOOKS

Noise = Callable[[np.random.Generator, int, int], np.ndarray]  # (rng, draws, slots) -> log values per slot


def _time(slots: int) -> np.ndarray:
    return np.linspace(0.0, 1.0, slots)


SHAPES: dict[str, Noise] = {
    "normal": lambda rng, s, k: np.log(np.clip(1 + 0.1 * rng.standard_normal((s, k)), 1e-3, None)),
    "log-normal": lambda rng, s, k: 0.3 * rng.standard_normal((s, k)),
    "heavy tails": lambda rng, s, k: 0.05 * rng.standard_t(2, (s, k)),
    "outliers": lambda rng, s, k: (0.05 * rng.standard_normal((s, k))
                                   + (rng.random((s, k)) < 0.1) * np.log(rng.uniform(2, 4, (s, k)))),
    "drift": lambda rng, s, k: np.log1p(_time(k))[None, :] + 0.05 * rng.standard_normal((s, k)),
    "random walk": lambda rng, s, k: (np.cumsum(0.03 * rng.standard_normal((s, k)), axis=1)
                                      + 0.03 * rng.standard_normal((s, k))),
    "whole numbers": lambda rng, s, k: np.log(np.maximum(np.round(20 * (1 + 0.1 * rng.standard_normal((s, k)))), 1)),
}
POWER_SHAPES: dict[str, Noise] = {
    "10% noise": SHAPES["normal"],
    "10% noise, 2x drift": lambda rng, s, k: np.log1p(_time(k))[None, :] + SHAPES["normal"](rng, s, k),
}
# Open-ended schemes: the looks as the CLI takes them; a budget that runs out adds an earlier last look.
SCHEMES = {"looks 5, 10, 20": LOOKS, "budget ends at 7": (5, 7), "budget ends at 13": (5, 10, 13)}
SIZES = range(3, 21)


def paired_runs(noise: Noise, rng: np.random.Generator, draws: int, pairs: int, effect: float = 1.0):
    """Log values of A and B, ``(draws, pairs)`` each: slots in time order, a coin per pair for which side
    runs first, as :func:`labkit.compare` plans them; B is ``effect`` times A."""
    v = noise(rng, draws, 2 * pairs)
    b_first = rng.random((draws, pairs)) < 0.5
    first, second = v[:, 0::2], v[:, 1::2]
    return np.where(b_first, second, first), np.where(b_first, first, second) + math.log(effect)


def decisive(a: np.ndarray, b: np.ndarray, confidence: float) -> np.ndarray:
    """Per draw: does labkit's verdict name a winner? (Its own choice of test and its own intervals.)"""
    n = a.shape[1]
    method, k = stats.choose(n, n, n, confidence)
    if method == stats.PAIRED:
        _, low, high = stats.walsh_bounds(b - a, k)
    elif method == stats.UNPAIRED:
        _, low, high = stats.shift_bounds(a, b, k)
    else:
        return np.zeros(len(a), bool)
    return (low > 0) | (high < 0)


def fixed_rate(noise: Noise, n: int, draws: int, rng: np.random.Generator, effect: float = 1.0,
               confidence: float = CONFIDENCE) -> float:
    """How often n trials a side name a winner (a false positive when ``effect`` is 1, the power otherwise)."""
    return float(decisive(*paired_runs(noise, rng, draws, n, effect), confidence).mean())


def looks_rate(noise: Noise, looks: tuple[int, ...], draws: int, rng: np.random.Generator, effect: float = 1.0,
               confidence: float = CONFIDENCE) -> tuple[float, float]:
    """``(share decisive at some look, mean trials a side run)`` of the open-ended comparison: each look at
    its Bonferroni share of the level, as :func:`labkit.compare` takes them."""
    a, b = paired_runs(noise, rng, draws, looks[-1], effect)
    each = 1 - (1 - confidence) / len(LOOKS)  # compare() splits the level over len(LOOKS), whatever the budget
    found = np.zeros(draws, bool)
    ran = np.full(draws, looks[-1])
    for n in looks:
        now = decisive(a[:, :n], b[:, :n], each) & ~found
        ran[now] = n
        found |= now
    return float(found.mean()), float(ran.mean())


def false_positive_table(draws: int, seed: int) -> dict[tuple[str, str], float]:
    """``{(shape, "n=5" or a scheme): false-positive rate}`` for every shape, size and open-ended scheme."""
    rng = np.random.default_rng(seed)
    table = {}
    for name, noise in SHAPES.items():
        for n in SIZES:
            table[name, f"n={n}"] = fixed_rate(noise, n, draws, rng)
        for scheme, looks in SCHEMES.items():
            table[name, scheme] = looks_rate(noise, looks, draws, rng)[0]
    return table


def remeasure(cell: tuple[str, str], draws: int, seed: int, chunk: int = 20_000) -> float:
    """One cell's rate again, on fresh draws (in chunks, so that memory stays small)."""
    rng = np.random.default_rng(seed)
    name, where = cell
    rates = []
    for start in range(0, draws, chunk):
        size = min(chunk, draws - start)
        if where.startswith("n="):
            rates.append(fixed_rate(SHAPES[name], int(where[2:]), size, rng) * size)
        else:
            rates.append(looks_rate(SHAPES[name], SCHEMES[where], size, rng)[0] * size)
    return sum(rates) / draws


def _row(label: str, cells: list[str], width: int = 15) -> str:
    return f"{label:<{width}}" + "".join(f"{c:>6}" for c in cells)


def real_aa(repeats: int) -> None:
    """An A/A run of a real scenario: tokenizer-deadlock's no-parallelism against itself."""
    from labkit import compare

    began = time.monotonic()
    result = compare("tokenizer-deadlock", "no-parallelism", "no-parallelism", repeats=repeats, monitor=False,
                     progress=True)
    ratio, low, high = result.interval
    print(f"real A/A, tokenizer-deadlock no-parallelism twice, {repeats} trials a side "
          f"({time.monotonic() - began:.0f} s, order {result.order}):")
    print(f"  medians {result.a_median:.4g} and {result.b_median:.4g} {result.metric.unit}; {result.verdict}")
    print(f"  {result.method}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=20_000, help="simulated comparisons per cell")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--real", type=int, default=6, help="trials a side of the real A/A run (0: none)")
    args = parser.parse_args()
    began = time.monotonic()

    level = stats.pct(CONFIDENCE)
    print(f"A/A false-positive rate at {level} (%), {args.draws} simulated comparisons per cell; "
          f"trials a side across, then the open-ended schemes")
    schemes = list(SCHEMES)
    print(_row("", [str(n) for n in SIZES]) + "  " + " | ".join(schemes))
    exact = [100 * stats.size(stats.choose(n, n, n, CONFIDENCE)[0], n, CONFIDENCE) for n in SIZES]
    print(_row("exact (iid)", [f"{e:.1f}" for e in exact]) + "  (the test's own size, with no simulation)")
    table = false_positive_table(args.draws, args.seed)
    for name in SHAPES:
        cells = [f"{100 * table[name, f'n={n}']:.1f}" for n in SIZES]
        print(_row(name, cells) + "  " + " | ".join(f"{100 * table[name, s]:.1f}".rjust(len(s)) for s in schemes))
    methods = [stats.choose(n, n, n, CONFIDENCE)[0] for n in SIZES]
    print(_row("test", [{"paired": "pair", "unpaired": "rank", "too few": "-"}[m] for m in methods])
          + "  (pair: signed-rank of pairs; rank: rank-sum; -: too few to reach the level, says so)")

    rng = np.random.default_rng(args.seed + 1)
    print(f"\npower to find a 1.2x difference at {level} (%), by trials a side")
    print(_row("", [str(n) for n in SIZES], 20) + "  open-ended (mean trials a side)")
    for name, noise in POWER_SHAPES.items():
        cells = [f"{100 * fixed_rate(noise, n, args.draws, rng, 1.2):.0f}" for n in SIZES]
        found, ran = looks_rate(noise, LOOKS, args.draws, rng, 1.2)
        print(_row(name, cells, 20) + f"  {100 * found:.0f} ({ran:.1f})")

    if args.real:
        print()
        real_aa(args.real)

    ranked = sorted(table, key=table.get, reverse=True)[:5]
    draws = 20 * args.draws
    again = {cell: remeasure(cell, draws, args.seed + 2) for cell in ranked}
    worst = max(again.values())
    print(f"\nthe five highest cells, measured again on {draws} fresh draws each "
          f"(standard error {100 * math.sqrt(0.05 * 0.95 / draws):.2f} points at 5%):")
    print("  " + "; ".join(f"{name} {where}: {100 * table[name, where]:.2f} -> {100 * again[name, where]:.2f}"
                           for name, where in ranked))
    print(f"({time.monotonic() - began:.0f} s)")
    print(f"worst false-positive rate: {100 * worst:.1f}%")


if __name__ == "__main__":
    main()
