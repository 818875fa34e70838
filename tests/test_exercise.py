"""try_variant: a learner's function run as a variant of a scenario, and a one-line answer whether it holds."""

import threading

import pytest

from labkit import Attempt, BadInput, run, try_variant


def counts(items=100):
    return {"items_per_s": float(items)}


def refuses(items=100):
    raise ValueError(f"no {items} items today")


def test_a_function_that_holds_says_so_in_every_trial(cheap):
    attempt = try_variant("test-count", counts, repeats=2)
    assert isinstance(attempt, Attempt) and attempt.holds
    assert str(attempt) == repr(attempt) == "holds: 2 of 2 ok"
    assert [t.outcome for t in attempt.trials.trials] == ["ok", "ok"]


def test_it_stops_at_the_first_trial_that_does_not_hold_and_says_why(cheap):
    attempt = try_variant("test-count", refuses, knobs={"items": 7})
    assert not attempt.holds and len(attempt.trials.trials) == 1
    assert str(attempt) == "does not hold: trial 1 of 3 raised ValueError: no 7 items today"
    assert "refuses" in attempt.traceback


def test_a_fix_that_fails_fast_holds_with_the_error_it_names(cheap):
    assert str(try_variant("test-count", refuses, repeats=1, expect="raised ValueError")) == "holds: 1 of 1 raised ValueError"
    other = try_variant("test-count", refuses, repeats=1, expect="raised KeyError")
    assert not other.holds and other.said.endswith("where a fix here raises KeyError")
    assert try_variant("test-count", counts, repeats=1, expect="raised").said == "trial 1 of 1 ended ok, where a fix here ends raised"


def test_than_asks_each_trial_to_beat_trials_already_run_by_a_factor(cheap):
    slow = run("test-count", "slow", monitor=False)  # items / 2: 50 items/s
    fast = try_variant("test-count", counts, repeats=2, than=slow, metric="items_per_s", by=2)
    assert fast.holds and fast.said == "2 of 2 ok; items_per_s each at least 2x slow's (measured: 100 against 50)"
    short = try_variant("test-count", counts, repeats=2, than=slow.trials[0], metric="items_per_s", by=3)
    assert not short.holds and short.said == "trial 1 of 2 measured items_per_s 100, where a fix here has it at least 3x slow's 50"


def test_what_cannot_run_is_refused_in_one_line(cheap):
    lock = threading.Lock()

    def locked(items=100):
        with lock:
            return {"items_per_s": float(items)}

    with pytest.raises(BadInput, match="cannot travel to the trial's process.*inside the function"):
        try_variant("test-count", locked, repeats=1)
    with pytest.raises(BadInput, match="allowed: ok, raised"):
        try_variant("test-count", counts, expect="hung")
    with pytest.raises(BadInput, match="than and metric go together"):
        try_variant("test-count", counts, metric="items_per_s")
    with pytest.raises(BadInput, match="unknown setting"):
        try_variant("test-count", counts, knobs={"itemz": 3})
