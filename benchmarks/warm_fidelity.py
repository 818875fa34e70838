"""Does a warm start change what a trial shows? Every variant of every scenario, warm and fresh.

    python benchmarks/warm_fidelity.py [--repeats 1] [--only SCENARIO]

For each variant (each scenario's quick settings), ``--repeats`` trials forked from a warm template
and as many in fresh interpreters, then the outcomes side by side (what must agree is how many
failed: a race fails as ``raised`` or ``wrong`` at random); and the storm's
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
            said, failed, why = {}, {}, {}
            for start in ("warm", "fresh"):
                trials = run(scen, variant, repeats=args.repeats, knobs=scen.quick, monitor=False, start=start)
                said[start] = trials.outcome_text()
                failed[start] = sum(t.outcome != "ok" for t in trials.trials)
                why[start] = [f"{t.outcome.value} after {t.seconds:.2f} s: {t.notes.get('hung') or t.error}"
                              for t in trials.trials if t.outcome != "ok"]
            # A race fails as raised or as wrong at random: what must agree is whether it failed.
            same = failed["warm"] == failed["fresh"]
            differ += not same
            kinds = "" if said["warm"] == said["fresh"] else "  (both failed, in different ways)" if same else "  DIFFERENT"
            print(f"{scen.name:<20} {variant:<20} warm: {said['warm']:<12} fresh: {said['fresh']:<12}{kinds}", flush=True)
            if not same:  # how each failed trial ended, to tell a real difference from labkit's own bug
                for start, lines in why.items():
                    for line in lines:
                        print(f"    {start}: {line}", flush=True)
    if args.only is None or "thread-storm" in args.only:
        storm = get("thread-storm")
        for start in ("warm", "fresh"):
            ab = compare(storm, "broken", "one-thread", repeats=3, knobs=storm.quick, metric="cpu_s_per_token",
                         monitor=False, start=start)
            print(f"thread-storm A/B, {start}: {ab.verdict}", flush=True)
    print(f"variants that failed warm and not fresh, or the other way: {differ}")


if __name__ == "__main__":
    main()
