"""The watchdog: a hang in the caller's own code becomes WatchdogTimeout, with stacks; no kernel dies."""

import threading
import time

import pytest

from labkit import BadInput, WatchdogTimeout, watchdog


def wait_for_a_lock_nobody_releases():
    lock = threading.Lock()
    lock.acquire()
    lock.acquire()


def test_a_blocked_lock_acquire_becomes_an_error_with_stacks():
    started = time.monotonic()
    with pytest.raises(WatchdogTimeout) as caught:
        with watchdog(seconds=0.5):
            wait_for_a_lock_nobody_releases()
    assert time.monotonic() - started < 3
    assert "wait_for_a_lock_nobody_releases" in caught.value.stacks
    assert "MainThread" in caught.value.stacks


def test_a_busy_loop_is_stopped_too():
    with pytest.raises(WatchdogTimeout):
        with watchdog(seconds=0.3):
            while True:
                pass


def test_a_block_that_finishes_in_time_is_left_alone():
    with watchdog(seconds=5) as dog:
        total = sum(range(1000))
    assert total == 499500 and dog.stacks == ""
    time.sleep(0.1)  # no stray interrupt arrives afterwards


def test_as_a_decorator_and_in_a_worker_thread():
    @watchdog(seconds=0.3)
    def spins():
        while True:
            pass

    caught = []

    def worker():
        try:
            spins()
        except WatchdogTimeout as exc:
            caught.append(exc)

    t = threading.Thread(target=worker)
    t.start()
    t.join(timeout=5)
    assert not t.is_alive() and len(caught) == 1


def test_seconds_must_be_positive():
    with pytest.raises(BadInput, match="seconds must be positive"):
        watchdog(seconds=0)
