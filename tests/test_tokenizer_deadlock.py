"""tokenizer-deadlock: the real tokenizers pool, a real fork, a real hang (isolated, with stacks)."""

import pytest

from labkit import run
from labkit.isolate import group_members


def test_broken_hangs_with_the_workers_stuck_in_encode():
    trial = run("tokenizer-deadlock", "broken", timeout=5, monitor=False).trials[0]
    assert trial.outcome == "hung" and trial.seconds < 5 + 4
    assert len(trial.stacks) >= 3  # the trial process and its two forked workers
    workers = [s for s in trial.stacks.values() if "in _encode" in s and "popen_fork" in s]
    assert len(workers) == 2, trial.stacks
    assert all(group_members(pid) == [] for pid in trial.stacks)


@pytest.mark.parametrize("variant", ["no-parallelism", "spawn", "library-guard", "pool-after-fork"])
def test_every_fix_finishes(variant):
    trial = run("tokenizer-deadlock", variant, timeout=60, monitor=False).trials[0]
    assert (trial.outcome, trial.error) == ("ok", None)
    assert trial.metrics["texts_per_s"] > 0


def test_the_variable_is_what_each_variant_says():
    from labkit import get

    env = {v.name: v.env.get("TOKENIZERS_PARALLELISM", "absent") for v in get("tokenizer-deadlock").variants.values()}
    assert env == {"broken": "true", "no-parallelism": "false", "spawn": "true", "library-guard": None,
                   "pool-after-fork": "true"}
