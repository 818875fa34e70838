"""The watchdog: a hang in the caller's own code becomes WatchdogTimeout, with stacks; no kernel dies."""

import faulthandler
import signal
import subprocess
import sys
import threading
import time

import pytest

from labkit import BadInput, WatchdogTimeout, watchdog


@pytest.fixture(autouse=True)
def a_failing_watchdog_ends_the_suite_with_stacks():
    """These tests block pytest's own threads: if the watchdog ever missed, the suite would wait forever."""
    faulthandler.dump_traceback_later(60, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


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


IGNORED_SIGINT = """
import signal, threading
from labkit import watchdog, WatchdogTimeout
lock = threading.Lock()
lock.acquire()
try:
    with watchdog(seconds=0.5):
        lock.acquire()
except WatchdogTimeout:
    print("WatchdogTimeout; SIGINT ignored again:", signal.getsignal(signal.SIGINT) == signal.SIG_IGN)
"""


def test_it_fires_where_sigint_is_ignored_as_in_a_shells_background_job():
    """``cmd &`` starts with SIGINT ignored: the watchdog's interrupt was lost there and the block hung."""
    done = subprocess.run([sys.executable, "-c", IGNORED_SIGINT], capture_output=True, text=True, timeout=30,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert done.stdout.strip() == "WatchdogTimeout; SIGINT ignored again: True", done.stderr
