"""The A/B numbers the README quotes, measured again on this machine.

    python benchmarks/ab_numbers.py [--repeats 6]

Each line is one `labkit compare` (isolated trials in pairs, a coin for the order in each pair): how
each side ended, the medians, the ratio B/A, its 95% interval from the exact test the comparison
chose (paired from 6 pairs: the shared 2-core VM drifts, and pairs see through drift; see
labkit/core/stats.py) and the verdict. These are benchmarks, not tests: they report, they do not
assert.
"""

from __future__ import annotations

import argparse

from labkit import compare

COMPARISONS = [
    ("thread-storm", "broken", "one-thread", "cpu_s_per_token"),
    ("thread-storm", "broken", "one-thread", "tokens_per_s"),
    ("thread-race", "lock", "batched", "tokens_per_s"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=6, help="trials a side (6: the fewest for a paired test at 95%%)")
    args = parser.parse_args()
    done: dict[tuple[str, str, str], object] = {}
    for scenario, a, b, metric in COMPARISONS:
        key = (scenario, a, b)
        if key not in done:  # one run answers every metric of the pair
            done[key] = compare(scenario, a, b, repeats=args.repeats, monitor=False, progress=True)
        result = done[key].for_metric(metric)
        print(f"{scenario}: {a} {result.a_median:.4g} vs {b} {result.b_median:.4g} {metric}; {result.verdict}")
        print(f"  {result.method}")


if __name__ == "__main__":
    main()
