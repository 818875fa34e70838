"""tokenizer-deadlock: the real tokenizers pool, a real fork, a real hang (isolated, with stacks)."""

import pytest

from labkit import run
from labkit.machine.system_linux import group_members


def test_broken_hangs_with_the_workers_stuck_in_encode():
    trial = run("tokenizer-deadlock", "broken", timeout=5, monitor=False).trials[0]
    assert trial.outcome == "hung" and trial.seconds < 5 + 4
    assert len(trial.stacks) >= 3  # the trial process and its two forked workers
    frames = trial.stack_frames()
    in_encode = set(frames.pid[frames.function == "_encode"])
    forked = set(frames.pid[frames.function == "_launch"])  # multiprocessing's popen_fork started them
    assert len(in_encode) == 2 and in_encode <= forked, trial.stacks
    assert all(group_members(pid) == [] for pid in trial.stacks)


@pytest.mark.parametrize("variant", ["no-parallelism", "spawn", "library-guard", "pool-after-fork"])
def test_every_fix_finishes(variant):
    trial = run("tokenizer-deadlock", variant, timeout=60, monitor=False).trials[0]
    assert (trial.outcome, trial.error) == ("ok", None)
    assert trial.metrics["texts_per_s"] > 0
