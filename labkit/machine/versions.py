"""Which releases labkit was tested on, which each scenario was confirmed on, and where this install stands.

Two sets, for two questions:

* the **tested set** (``data/constraints.txt``): every package at the release the suite last passed
  with; the README's commands install exactly these (``pip install -c``), so a workshop gets what was
  tested whatever lands on PyPI that week. ``tools/check_versions.py --newest --pin`` rewrites it.
* each scenario's ``confirmed_on``: the release series (``"5.24"``) its failure and fixes were seen
  on. A result on another series may still be right, but it is flagged, so that a changed outcome
  can be traced to a release (every ``--json`` result records the versions it ran on).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labkit.llm.upstream import installed

if TYPE_CHECKING:
    from labkit.core.scenario import Scenario

TRACKED = ("torch", "transformers", "accelerate", "tokenizers")  # what a scenario's outcome depends on
_PIN = re.compile(r"^([\w.\-]+)==([^\s;#]+)")  # name==release
_COMMENTED_PIN = re.compile(r"^#.*tested with ([\w.\-]+)==(\S+)")  # torch's line


def canonical(name: str) -> str:
    """A distribution's name as pip compares it: ``Huggingface_Hub`` -> ``huggingface-hub``."""
    return re.sub(r"[-_.]+", "-", name).lower()


@lru_cache(maxsize=2)
def tested_set(path: Path | None = None) -> dict[str, str]:
    """Package -> release, from the constraints file (default: the one shipped with labkit). torch is
    in it as a comment: it is installed first by its own command, so that a GPU machine keeps its
    CUDA build."""
    from labkit.llm.models import data_dir

    path = path or data_dir() / "constraints.txt"
    if not path.exists():
        return {}
    pins = ((_COMMENTED_PIN if line.startswith("#") else _PIN).match(line.strip())
            for line in path.read_text().splitlines())
    return {canonical(m[1]): m[2] for m in pins if m}


def series(release: str) -> str:
    """``"5.24.0"`` -> ``"5.24"``; ``"2.13.0+cpu"`` -> ``"2.13"``."""
    return ".".join(release.split("+")[0].split(".")[:2])


def running_on(names: tuple[str, ...] = TRACKED) -> dict[str, str | None]:
    """The installed release of each library (None where it is not installed): what a result ran on."""
    return {name: installed(name) for name in names}


def standing(library: str, confirmed: tuple[str, ...] = ()) -> dict[str, Any]:
    """One library against the tested set and the confirmed series: a row of ``labkit doctor``.

    ``verdict`` is ``tested`` (the tested release), ``confirmed`` (another release of a series the
    scenario was seen on), ``outside`` (neither: a changed outcome may come from this release) or
    ``not installed``.
    """
    now, tested = installed(library), tested_set().get(canonical(library))
    if now is None:
        verdict = "not installed"
    elif tested is not None and now.split("+")[0] == tested:
        verdict = "tested"
    else:
        verdict = "confirmed" if series(now) in confirmed else "outside"
    return {"library": library, "installed": now or "-", "tested": tested or "-",
            "confirmed_on": ", ".join(confirmed) or "-", "verdict": verdict}


def scenario_standing(scenario: Scenario) -> list[dict[str, Any]]:
    """A row per library the scenario depends on, flagged where this install is outside what was seen."""
    return [{"scenario": scenario.name, **standing(lib, tuple(confirmed))}
            for lib, confirmed in scenario.confirmed_on.items()]


def confirmed_text(scenario: Scenario) -> str:
    """``"torch 2.13; transformers 5.23, 5.24"``"""
    return "; ".join(f"{lib} {', '.join(seen)}" for lib, seen in scenario.confirmed_on.items())
