"""Whether a machine and environment are exposed to a failure mode: the verdict a scenario's rule gives.

Each scenario declares its own rule (``Scenario.hazard``), next to the variants that reproduce the
failure; ``labkit doctor`` reads the facts (:mod:`labkit.ui.doctor`) and asks every rule in the
registry. The type lives here, below both, because a scenario module may not import the ui layer.
A rule reads facts, not the live process, so a test can hand it any.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

EXPOSED, NOT_EXPOSED, UNKNOWN = "exposed", "not exposed", "unknown"


@dataclass(frozen=True)
class Hazard:
    failure: str  # the scenario that reproduces it (and which part, where a rule judges two)
    verdict: str
    evidence: str
    fix: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


# ``rule(facts, workers)``: doctor's facts, and the worker processes the user says they run (only
# they know). Several hazards where one failure mode has causes judged apart (thread-storm: the pool
# size, and whether its threads spin while they wait).
Rule = Callable[[Mapping[str, Any], int], Hazard | tuple[Hazard, ...]]


def not_visible(failure: str, why: str, fix: str) -> Rule:
    """A rule for a failure that lives in the user's own code, which no fact shows: always unknown."""

    def rule(facts: Mapping[str, Any], workers: int) -> Hazard:
        return Hazard(failure, UNKNOWN, why, fix)

    return rule
