"""labkit: LLM inference failure modes under concurrency, each next to its fix, measured.

The package, by folder:

* ``core/``: the framework. Scenarios, variants and knobs; trials and their results; the one
  runner under ``run``, ``compare`` and ``sweep``; A/B statistics; what variants share; your own
  function tried as a variant (``try_variant``, the notebooks' exercises).
* ``isolation/``: one process per trial (forked from a warm template, or a fresh interpreter),
  timeouts and stillness, stacks of a hang, nothing left behind.
* ``machine/``: what the machine is and does: the CPU/GPU monitor, NVML, the releases installed.
* ``llm/``: the model side: the tiny model, devices and device maps, virtual GPUs, decoding by hand, KV-cache
  sizes, the names borrowed from transformers and accelerate, the Qwen-1 rotary stand-in, a module
  that keeps no state between calls.
* ``scenarios/``: one module per failure mode, its broken variant and its fixes; found by listing
  the folder.
* ``ui/``: figures and live plots, widget panels, a variant's code and a fix's diff, ``doctor``,
  the tour's report, the command line.

The public API below is loaded lazily (PEP 562): every isolated trial imports this package to find
its scenario, and should not pay for pandas and matplotlib when it only needs torch. The imports
under ``TYPE_CHECKING`` say the same to editors and type checkers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from labkit.core.compare import Comparison, compare, compare_functions, paired_ratio_ci, ratio_ci
    from labkit.core.errors import BadInput, WrongResult
    from labkit.core.exercise import Attempt, try_variant
    from labkit.core.runner import run
    from labkit.core.scenario import Knob, Metric, Scenario, Variant, all_scenarios, get, register
    from labkit.core.sweep import Sweep, sweep
    from labkit.core.trial import Outcome, Trial, TrialSet, variants_table
    from labkit.isolation.isolated import Isolated, run_isolated
    from labkit.isolation.watchdog import WatchdogTimeout, watchdog
    from labkit.llm.devices import DeviceMismatch, check_same_device, device_pair
    from labkit.llm.memory import cache_held_bytes, kv_cache_bytes
    from labkit.llm.models import save_random, save_tiny, tiny_model
    from labkit.llm.thread_safety import ThreadSafety, check_thread_safety
    from labkit.llm.virtual_gpus import virtual_gpus
    from labkit.ui.code import Code, show_code, variant_code, variant_diff
    from labkit.ui.doctor import doctor
    from labkit.machine.monitor import Monitor
    from labkit.ui.plots import LivePlot, comparison_figure, monitor_figure, sweep_figure, variants_figure
    from labkit.ui.widgets import device_map_panel, panel

_WHERE = {
    "Comparison": "core.compare", "compare": "core.compare", "compare_functions": "core.compare",
    "paired_ratio_ci": "core.compare", "ratio_ci": "core.compare",
    "BadInput": "core.errors", "WrongResult": "core.errors",
    "Attempt": "core.exercise", "try_variant": "core.exercise",
    "run": "core.runner",
    "Knob": "core.scenario", "Metric": "core.scenario", "Scenario": "core.scenario", "Variant": "core.scenario",
    "all_scenarios": "core.scenario", "get": "core.scenario", "register": "core.scenario",
    "Sweep": "core.sweep", "sweep": "core.sweep",
    "Outcome": "core.trial", "Trial": "core.trial", "TrialSet": "core.trial", "variants_table": "core.trial",
    "Isolated": "isolation.isolated", "run_isolated": "isolation.isolated",
    "WatchdogTimeout": "isolation.watchdog", "watchdog": "isolation.watchdog",
    "DeviceMismatch": "llm.devices", "check_same_device": "llm.devices", "device_pair": "llm.devices",
    "cache_held_bytes": "llm.memory", "kv_cache_bytes": "llm.memory",
    "save_random": "llm.models", "save_tiny": "llm.models", "tiny_model": "llm.models",
    "ThreadSafety": "llm.thread_safety", "check_thread_safety": "llm.thread_safety",
    "virtual_gpus": "llm.virtual_gpus",
    "Code": "ui.code", "show_code": "ui.code", "variant_code": "ui.code", "variant_diff": "ui.code",
    "doctor": "ui.doctor",
    "Monitor": "machine.monitor",
    "LivePlot": "ui.plots", "comparison_figure": "ui.plots", "monitor_figure": "ui.plots", "sweep_figure": "ui.plots",
    "variants_figure": "ui.plots",
    "device_map_panel": "ui.widgets", "panel": "ui.widgets",
}
__all__ = sorted(_WHERE)


# A process that a trial spawned (a new interpreter) answers stack requests once it imports labkit, as
# the trial does: labkit.isolation.descendants. Elsewhere it reads one variable and does nothing.
importlib.import_module("labkit.isolation.descendants").join_trial()


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'labkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"labkit.{_WHERE[name]}"), name)
    globals()[name] = value  # once found, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
