"""Every outcome of an isolated trial, with real child processes."""

import io
import os
import signal
import sys
import threading
import time

import pytest

from labkit.core.errors import WrongResult
from labkit.isolation.isolated import run_isolated
from labkit.machine.system_linux import group_members


def returns_metrics():
    return {"items_per_s": 12.5}


def raises():
    raise TypeError("cannot unpack non-iterable NoneType object")


def finishes_wrong():
    raise WrongResult("request 3 differs from its solo run", {"items_per_s": 7})


def segfaults():
    os.kill(os.getpid(), signal.SIGSEGV)


def exits_early():
    os._exit(3)


def deadlocks_with_a_forked_child():
    """A real deadlock: the lock is held by this thread forever, a worker thread and a forked
    child both wait for it."""
    lock = threading.Lock()
    lock.acquire()
    if os.fork() == 0:
        lock.acquire()  # the child's copy of the lock is held by a thread it does not have
    waiter = threading.Thread(target=lock.acquire, name="waiter")
    waiter.start()
    waiter.join()


def deadlocks_with_a_spawned_child():
    """A spawned worker (a new interpreter: every worker is one on the portable route) that never ends."""
    import multiprocessing

    from trial_functions import waits_for_good_after_importing_labkit

    child = multiprocessing.get_context("spawn").Process(target=waits_for_good_after_importing_labkit)
    child.start()
    child.join()


def reads_env():
    return {"set": os.environ.get("LABKIT_TEST_SET"), "gone": os.environ.get("LABKIT_TEST_GONE", "absent")}


def test_ok_returns_the_metrics():
    r = run_isolated(returns_metrics, timeout=30)
    assert (r.outcome, r.error, r.value) == ("ok", None, {"items_per_s": 12.5})
    assert group_members(r.pid) == []


def test_raised_keeps_type_and_message():
    r = run_isolated(raises, timeout=30)
    assert r.outcome == "raised"
    assert r.error == "TypeError: cannot unpack non-iterable NoneType object"
    assert "raises" in r.traceback


def test_wrong_keeps_message_and_metrics():
    r = run_isolated(finishes_wrong, timeout=30)
    assert (r.outcome, r.error, r.value) == ("wrong", "request 3 differs from its solo run", {"items_per_s": 7})


@pytest.mark.parametrize("fn, expected", [(segfaults, "killed by signal SIGSEGV"), (exits_early, "exited with code 3")])
def test_crashed_says_how(fn, expected):
    r = run_isolated(fn, timeout=30)
    assert r.outcome == "crashed"
    assert r.error.startswith(expected)


def test_hung_comes_back_in_time_with_every_process_stacks_and_leaves_nothing():
    started = time.monotonic()
    r = run_isolated(deadlocks_with_a_forked_child, timeout=2)
    assert r.outcome == "hung"
    assert time.monotonic() - started - r.startup_seconds < 2 + 4  # from its first line: a start-up is not the hang's
    assert len(r.stacks) == 2, r.stacks  # the trial and its forked child
    trial_stack, child_stack = r.stacks.values()
    assert "deadlocks_with_a_forked_child" in trial_stack and "join" in trial_stack
    assert "Thread" in trial_stack and trial_stack.count("Thread 0x") + trial_stack.count("Current thread") >= 2
    assert "deadlocks_with_a_forked_child" in child_stack
    assert group_members(r.pid) == []


def test_a_spawned_child_answers_with_its_stacks_once_it_imports_labkit():
    r = run_isolated(deadlocks_with_a_spawned_child, timeout=30, idle=2)  # hung once still for 2 s
    assert r.outcome == "hung"
    spawned = [text for text in r.stacks.values() if "waits_for_good_after_importing_labkit" in text]
    assert len(spawned) == 1, r.stacks  # the trial, the spawned child, multiprocessing's resource tracker
    assert group_members(r.pid) == []


def test_stacks_need_no_file_descriptor_in_the_parent(monkeypatch):
    """A Jupyter kernel's sys.stderr has no fileno(); the dump must not depend on it."""
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    r = run_isolated(deadlocks_with_a_forked_child, timeout=1)
    assert r.outcome == "hung" and all("deadlocks_with_a_forked_child" in s for s in r.stacks.values())


def test_a_closure_travels_by_value():
    factor = 3

    def local():
        return {"value": 2 * factor}

    assert run_isolated(local, timeout=30).value == {"value": 6}


def test_env_is_applied_and_none_removes(monkeypatch):
    monkeypatch.setenv("LABKIT_TEST_GONE", "present")
    r = run_isolated(reads_env, timeout=30, env={"LABKIT_TEST_SET": "yes", "LABKIT_TEST_GONE": None})
    assert r.value == {"set": "yes", "gone": "absent"}


def test_on_tick_runs_while_waiting():
    ticks = []
    r = run_isolated(deadlocks_with_a_forked_child, timeout=1, on_tick=lambda: ticks.append(1), tick=0.1)
    assert r.outcome == "hung" and len(ticks) >= 3


@pytest.mark.parametrize("start", ["warm", "fresh"])
def test_an_interrupt_still_kills_the_group(start):
    trial_pids = []

    def interrupt():
        if not trial_pids:
            return  # its warm process still starts (ticks run then too): no trial yet
        assert group_members(trial_pids[0])  # the trial and its forked child, before we give up on them
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_isolated(deadlocks_with_a_forked_child, timeout=30, on_start=trial_pids.append, on_tick=interrupt, tick=0.5,
                     start=start)
    assert group_members(trial_pids[0]) == []
