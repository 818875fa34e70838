"""Kill labkit outright at random moments and count what it leaves behind.

    python benchmarks/faults.py [--kills 40] [--jobs 2] [--within 8] [--seed S]

Each kill starts the command line as a user would (``labkit run ...``), on one of four cases: a hung
trial (``tokenizer-deadlock broken``, whose forked workers wait forever) or a running one
(``thread-storm broken``, busy on every core), each started warm or ``--fresh``; then SIGKILLs it
at a moment drawn uniformly from 0 to ``--within`` seconds after its start (while its warm process
imports, as its trial starts, while it runs or hangs), waits 5 s, and counts the processes still
alive that it started (they carry a tag in their environment, re-parented or not) and labkit's
folders left in the temporary folder it was given (torch's own cache, ``torchinductor_*``, is not labkit's). Its last line is ``left after N kills: P processes, F folders``.
A benchmark of a promise, not a test: ``tests/test_faults.py`` runs a short version of it.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

CASES = {
    "hung, warm": ["tokenizer-deadlock", "--variant", "broken", "--timeout", "60"],
    "hung, fresh": ["tokenizer-deadlock", "--variant", "broken", "--timeout", "60", "--fresh"],
    "running, warm": ["thread-storm", "--variant", "broken", "--set", "tokens=40"],
    "running, fresh": ["thread-storm", "--variant", "broken", "--set", "tokens=40", "--fresh"],
}
SETTLE = 5.0  # seconds between the kill and the count


def tagged(tag: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("LABKIT_FAULT_TAG") == tag and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def one_kill(case: str, after: float) -> tuple[int, int]:
    """Start ``case``, kill it ``after`` seconds in; (processes, folders) left :data:`SETTLE` s later."""
    tag, tmp = uuid.uuid4().hex, Path(tempfile.mkdtemp(prefix="labkit-faults-"))
    env = {**os.environ, "LABKIT_FAULT_TAG": tag, "TMPDIR": str(tmp)}
    labkit = subprocess.Popen([sys.executable, "-m", "labkit.ui.cli", "run", *CASES[case]], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(after)
    labkit.send_signal(signal.SIGKILL)
    labkit.wait()
    time.sleep(SETTLE)
    left = tagged(tag)
    folders = list(tmp.glob("labkit-*"))
    for proc in left:  # leave the machine as it was, whatever the count
        try:
            proc.kill()
        except psutil.Error:
            pass
    shutil.rmtree(tmp, ignore_errors=True)
    return len(left), len(folders)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=40, help="kills in all, spread over the four cases (default 40)")
    parser.add_argument("--jobs", type=int, default=2, help="kills at once (default 2)")
    parser.add_argument("--within", type=float, default=8.0, help="latest kill moment, seconds after the start (default 8)")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    plan = [(list(CASES)[i % len(CASES)], rng.uniform(0, args.within)) for i in range(args.kills)]
    with ThreadPoolExecutor(args.jobs) as pool:
        counts = list(pool.map(lambda p: one_kill(*p), plan))
    for (case, after), (procs, folders) in zip(plan, counts):
        print(f"{case:<15} killed at {after:4.1f} s: {procs} processes, {folders} folders left")
    last = (f"left after {len(plan)} kills: {sum(c[0] for c in counts)} processes, "
            f"{sum(c[1] for c in counts)} folders")
    print(last)
    return last


if __name__ == "__main__":
    main()
