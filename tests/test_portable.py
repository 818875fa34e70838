"""The portable route (psutil readings, stacks asked for through a file, no fork of labkit's own: how
labkit runs on macOS and Windows), forced here with LABKIT_PLATFORM=portable: the isolation's own
tests a second time, and a trial of every scenario."""

import pytest

from labkit import all_scenarios, run
from labkit.machine import system
# What the route changes, run again: processes and their CPU (stillness, the monitor), stacks, killing the
# tree. What it does not (a result's outcome, error and traceback; ticks) runs once, on Linux.
# A result coming back is checked by the first test below.
from test_isolate import (  # noqa: F401 - collected again here, with the route forced below
    test_a_spawned_child_answers_with_its_stacks_once_it_imports_labkit,
    test_an_interrupt_still_kills_the_group,
    test_hung_comes_back_in_time_with_every_process_stacks_and_leaves_nothing,
)
from test_monitor import test_a_trials_monitor_watches_the_trial_not_its_caller, test_it_follows_a_busy_child_process  # noqa: F401
from test_warm import (  # noqa: F401
    test_a_busy_trial_is_not_still_and_ends_at_its_timeout,
    test_a_still_trial_is_hung_by_stillness_and_leaves_no_folder,
)


@pytest.fixture(autouse=True)
def portable(monkeypatch):
    monkeypatch.setenv("LABKIT_PLATFORM", "portable")
    assert system.current().name == "portable"


def parent_pid():
    import os

    return {"parent": float(os.getppid()), "pid": float(os.getpid())}


def test_a_warm_trial_is_a_pre_started_interpreter_not_a_fork():
    import os

    from labkit.isolation.isolated import run_isolated

    first, second = (run_isolated(parent_pid, timeout=60) for _ in range(2))
    assert (first.outcome, second.outcome, first.start) == ("ok", "ok", "warm")
    assert first.value["parent"] == second.value["parent"] == os.getpid()  # this process's own children: no template
    assert first.value["pid"] != second.value["pid"]


def test_thread_storm_broken_is_a_storm_not_a_hang():
    trial = run("thread-storm", "broken", knobs={"tokens": 2, "workers": 2}).trials[0]  # spawned workers: two import
    assert trial.outcome == "ok", (trial.error, trial.stacks)
    assert trial.metrics["threads_per_core"] > 1 and trial.metrics["os_threads"] > 2


def test_the_tokenizer_deadlock_is_hung_with_every_process_stacks():
    trial = run("tokenizer-deadlock", "broken").trials[0]
    assert trial.outcome == "hung" and trial.notes["hung"].startswith("no progress")  # stillness, read through psutil
    assert len(trial.stacks) == 3, trial.stacks  # the trial and its two forked workers, each answering for itself
    assert sum("_encode" in text for text in trial.stacks.values()) == 2


def test_the_race_fails():
    broken = run("thread-race", "broken", repeats=2, monitor=False)  # 5 of 5 failed on 2026-11-30 (README)
    assert any(t.outcome in ("raised", "wrong") for t in broken.trials), [t.outcome for t in broken.trials]


@pytest.mark.parametrize("scenario", [s.name for s in all_scenarios() if s.name not in ("thread-storm", "tokenizer-deadlock")])
def test_every_other_scenario_is_fixed_by_its_main_fix(scenario):
    scen = next(s for s in all_scenarios() if s.name == scenario)
    trial = run(scen, scen.main_fix, knobs=scen.quick, monitor=False).trials[0]
    assert trial.outcome == scen.variants[scen.main_fix].expect, (trial.error, trial.output[-2000:])
