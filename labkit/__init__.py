"""labkit: LLM inference failure modes under concurrency, each next to its fix, measured.

The public API, loaded lazily (PEP 562): every isolated trial is a fresh interpreter that imports
this package to find its scenario, and should not pay for pandas and matplotlib (about a second)
when it only needs torch. No module is named after a function it exports (hence ``ab.py``,
``environment.py``, ``sweeps.py``): importing such a module would replace the function with it.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_WHERE = {
    "Comparison": "ab", "compare": "ab", "compare_functions": "ab", "paired_ratio_ci": "ab", "ratio_ci": "ab",
    "doctor": "environment",
    "BadInput": "errors", "WrongResult": "errors",
    "Isolated": "isolate", "run_isolated": "isolate",
    "cache_held_bytes": "memory", "kv_cache_bytes": "memory",
    "Monitor": "monitor",
    "LivePlot": "plots", "monitor_figure": "plots",
    "Knob": "scenario", "Metric": "scenario", "Scenario": "scenario", "Variant": "scenario",
    "all_scenarios": "scenario", "get": "scenario", "register": "scenario",
    "Sweep": "sweeps", "sweep": "sweeps",
    "Trial": "trial", "TrialSet": "trial", "run": "trial",
    "WatchdogTimeout": "timeouts", "watchdog": "timeouts",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'labkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value  # once found, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
