"""Does a warm start change what a trial shows? Every variant of every scenario, warm and fresh.

    python benchmarks/warm_fidelity.py [--repeats 1] [--only SCENARIO]

For each variant (each scenario's quick settings), ``--repeats`` trials forked from a warm template
and as many in fresh interpreters, alternating, then the outcomes side by side; and the storm's
A/B (broken against one-thread, on CPU seconds per token) measured both ways. A warm start must
not change an outcome or a verdict: the last line says whether any did. It reports; it asserts
nothing (a run on a busy machine can differ for reasons of its own: read the rows).
"""

from __future__ import annotations

import argparse

from labkit import all_scenarios, compare, get, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--only", action="append", metavar="SCENARIO")
    args = parser.parse_args()
    scenarios = [get(name) for name in args.only] if args.only else all_scenarios()
    differ = 0
    for scen in scenarios:
        for variant in scen.variants:
            said = {}
            for start in ("warm", "fresh"):
                trials = run(scen, variant, repeats=args.repeats, knobs=scen.quick, monitor=False, start=start)
                said[start] = trials.outcome_text()
            same = said["warm"] == said["fresh"]
            differ += not same
            print(f"{scen.name:<20} {variant:<20} warm: {said['warm']:<12} fresh: {said['fresh']:<12}"
                  f"{'' if same else '  DIFFERENT'}", flush=True)
    if args.only is None or "thread-storm" in args.only:
        storm = get("thread-storm")
        for start in ("warm", "fresh"):
            ab = compare(storm, "broken", "one-thread", repeats=3, knobs=storm.quick, metric="cpu_s_per_token",
                         monitor=False, start=start)
            print(f"thread-storm A/B, {start}: {ab.verdict}", flush=True)
    print(f"variants whose outcomes differ warm and fresh: {differ}")


if __name__ == "__main__":
    main()
