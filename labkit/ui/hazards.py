"""Which failure modes this machine and environment are exposed to: doctor's hazards table.

Each scenario declares its own rule (``Scenario.hazard``, in its module next to the variants), so
a new scenario brings its row with it; this only asks every rule in the registry, in the order the
scenarios are taught. The facts come from :func:`~labkit.ui.doctor.doctor`.
"""

from __future__ import annotations

from typing import Any, Mapping

from labkit.core.hazard import Hazard
from labkit.core.scenario import all_scenarios


def hazards(facts: Mapping[str, Any], workers: int = 1) -> list[Hazard]:
    """Every scenario's judgement of ``facts``; ``workers``: the worker processes the user runs."""
    rows: list[Hazard] = []
    for scenario in all_scenarios():
        if scenario.hazard is not None:
            judged = scenario.hazard(facts, workers)
            rows.extend(judged if isinstance(judged, tuple) else (judged,))
    return rows
