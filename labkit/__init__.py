"""labkit: LLM inference failure modes under concurrency, each next to its fix, measured.

The public API; everything else is an implementation detail.
"""

from .compare import Comparison, compare, compare_functions, paired_ratio_ci, ratio_ci
from .doctor import doctor
from .errors import BadInput, WrongResult
from .isolate import Isolated, run_isolated
from .monitor import Monitor
from .plots import LivePlot, monitor_figure
from .scenario import Knob, Metric, Scenario, Variant, all_scenarios, get, register
from .sweep import Sweep, sweep
from .trial import Trial, TrialSet, run

__all__ = [
    "BadInput", "Comparison", "Isolated", "Knob", "LivePlot", "Metric", "Monitor", "Scenario", "Sweep", "Trial",
    "TrialSet", "Variant", "WrongResult", "all_scenarios", "compare", "compare_functions", "doctor", "get", "monitor_figure",
    "paired_ratio_ci", "ratio_ci", "register", "run", "run_isolated", "sweep",
]
__version__ = "0.1.0"
