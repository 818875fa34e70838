"""What the monitor costs: its own CPU at 10 Hz, and the slowdown of a CPU-bound loop beside it.

    python benchmarks/monitor_overhead.py [--repeats 7] [--seconds 3]

1. Idle cost: the monitor samples a process tree of this process plus four idle children for a few
   seconds; its CPU time (this process's, minus the idle baseline) as a share of one core.
2. Slowdown: a fixed pure-Python loop, timed with and without the monitor running, interleaved,
   in two placements: in the monitor's own process (it then also competes for the GIL, as in a
   notebook kernel) and in a child process (as an isolated trial is).
Each pair (without, with) runs back to back and the answer is the median of the pairs' ratios with
a 95% bootstrap interval ("within noise" when it holds 1): this VM's speed drifts by tens of
percent between seconds, which unpaired medians cannot see through.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from labkit import Monitor, paired_ratio_ci

LOOP = "s = 0\nfor i in range(1_500_000):\n    s += i * i\n"


def idle_cost(seconds: float, interval: float) -> tuple[float, int]:
    children = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(4)]
    try:
        time.sleep(0.5)  # let the children finish starting
        c0 = time.process_time()
        time.sleep(seconds)
        baseline = time.process_time() - c0
        with Monitor(interval=interval) as mon:
            c0 = time.process_time()
            time.sleep(seconds)
            used = time.process_time() - c0
        return (used - baseline) / seconds, len(mon.samples)
    finally:
        for child in children:
            child.kill()
            child.wait()


def loop_in_process() -> float:
    t0 = time.perf_counter()
    exec(LOOP, {})
    return time.perf_counter() - t0


def loop_in_child() -> float:
    out = subprocess.run(
        [sys.executable, "-c", f"import time\nt0 = time.perf_counter()\n{LOOP}print(time.perf_counter() - t0)"],
        capture_output=True, text=True, check=True,
    )
    return float(out.stdout)


def slowdown(loop, repeats: int, interval: float) -> tuple[float, float, float]:
    plain, watched = [], []
    loop()  # warm-up
    for i in range(repeats):
        if i % 2:  # alternate which side goes first, so an order effect cancels too
            plain.append(loop())
        with Monitor(interval=interval):
            watched.append(loop())
        if not i % 2:
            plain.append(loop())
    return paired_ratio_ci(plain, watched)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--interval", type=float, default=0.1)
    args = parser.parse_args()

    share, samples = idle_cost(args.seconds, args.interval)
    print(f"monitor at {1 / args.interval:g} Hz over a 5-process tree: {100 * share:.2f}% of one core "
          f"({samples} samples in {args.seconds:g} s)")
    for name, loop in (("same process", loop_in_process), ("child process", loop_in_child)):
        ratio, low, high = slowdown(loop, args.repeats, args.interval)
        noise = " (within noise)" if low <= 1 <= high else ""
        print(f"CPU-bound loop in the {name}: with/without monitor = {ratio:.4f}, "
              f"95% CI [{low:.4f}, {high:.4f}]{noise}; slowdown {100 * (ratio - 1):+.2f}%")


if __name__ == "__main__":
    main()
