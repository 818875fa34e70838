"""Functions that the compare tests run in isolated trials.

A module of their own, importing only the standard library: a trial's child imports the module a
function lives in, and importing the test module there (pytest, numpy, pandas) cost 0.3 s a trial.
"""

import asyncio
import random
import threading
import time


def slow():
    return {"speed": 100 + random.random()}


def fast():
    return {"speed": 200 + random.random()}


def constant():
    return {"speed": 1.0}


def constant_too():
    return {"speed": 1.0}


def twice_as_fast():
    return {"speed": 2.0}


def naps():
    time.sleep(0.2)


def naps_too():
    time.sleep(0.2)


def waits():
    threading.Event().wait(3.5)


def never_returns():
    threading.Event().wait()


def load():
    time.sleep(0.5)
    return "model"


async def async_load():
    await asyncio.sleep(0.5)
    return "client"


def scaled_nap(state, seconds, times=1):
    time.sleep(seconds * times)
    return {"got": state}


async def async_nap(state, seconds, times=1):
    await asyncio.sleep(seconds * times)
    return {"got": state}


def stamp(k=1):
    return {"at": time.time()}


def measures_a_window(before=0.4, measured=0.6):
    """Busy ``before`` seconds (its set-up), then ``measured`` seconds that it measures, and the window it
    measured in seconds from its first line (``measured_start_s``, ``measured_end_s``), as a scenario
    that times part of its run reports it for the figures."""
    entered = time.monotonic()
    while time.monotonic() < entered + before:
        pass
    start = time.monotonic()
    while time.monotonic() < start + measured:
        pass
    end = time.monotonic()
    return {"items_per_s": 1.0 / (end - start), "measured_start_s": start - entered, "measured_end_s": end - entered}


def waits_for_good_after_importing_labkit():
    """A spawned worker's body, as a scenario's is (its code is labkit's): import labkit, then wait on a
    lock this thread holds already."""
    import labkit  # noqa: F401

    lock = threading.Lock()
    lock.acquire()
    lock.acquire()
