"""What the operating system gives labkit, behind one seam: a trial's processes and their CPU time,
killing a trial's whole tree, asking a process for its threads' stacks, and how a warm trial starts.

Two routes implement it (the contract: :mod:`labkit.machine.system_base`), chosen at run time by
:func:`current`:

* ``linux`` (:mod:`labkit.machine.system_linux`): ``/proc``, a process group per trial, a signal (USR1) for
  stacks, warm trials forked from a template;
* ``portable`` (:mod:`labkit.machine.system_portable`): psutil for processes and CPU time, the tree
  killed process by process, stacks asked for through a file (no POSIX signal), warm trials from
  pre-started interpreters (no ``os.fork``). macOS and Windows take it.

``LABKIT_PLATFORM=portable`` forces the portable route on Linux, so that the machines labkit is
tested on run it too. Where a reading cannot be had (``/proc`` hidden, a process psutil may not
read), a route answers ``None``: the caller says so once and falls back (a hang then ends at its
timeout), rather than taking "no reading" for "no CPU used".
"""

from __future__ import annotations

import os
import sys
from typing import Any

from labkit.machine.system_base import System, Tree, say_once

__all__ = ["ROUTES", "System", "Tree", "current", "describe", "route_name", "say_once"]
ROUTES = ("linux", "portable")
WARM_STARTS = {"fork": "forked from a warm template", "spares": "pre-started interpreters, one per trial"}


def route_name() -> str:
    """``LABKIT_PLATFORM`` when it names a route, else linux on Linux and portable elsewhere."""
    forced = os.environ.get("LABKIT_PLATFORM", "")
    if forced:
        if forced not in ROUTES:
            from labkit.core.errors import BadInput

            raise BadInput(f"LABKIT_PLATFORM={forced!r} is not allowed; allowed: {', '.join(ROUTES)} (or unset)")
        return forced
    return "linux" if sys.platform.startswith("linux") else "portable"


_routes: dict[str, System] = {}


def current() -> System:
    """The route in use now (read from the environment at each call, so a test may switch it)."""
    name = route_name()
    if name not in _routes:
        if name == "linux":
            from labkit.machine.system_linux import LinuxSystem

            _routes[name] = LinuxSystem()
        else:
            from labkit.machine.system_portable import PortableSystem

            _routes[name] = PortableSystem()
    return _routes[name]


def describe() -> dict[str, Any]:
    """The route, how trials start, and what is unavailable here: for ``labkit doctor``."""
    system = current()
    start = os.environ.get("LABKIT_START", "warm")
    forced = " (forced by LABKIT_PLATFORM)" if os.environ.get("LABKIT_PLATFORM") else ""
    return {
        "platform_route": f"{system.name}{forced}",
        "trial_start": "fresh interpreters (LABKIT_START=fresh)" if start == "fresh" else WARM_STARTS[system.warm],
        "worker_start": system.worker_start_method(),
        "unavailable": "; ".join(system.unavailable()) or "nothing",
    }
