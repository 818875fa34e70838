"""The README's scenario tables and the notebooks' cheat-sheet, printed from the scenarios' declarations.

``labkit list --markdown`` prints them; in ``README.md`` and ``notebooks/README.md`` each sits
between its markers, ``<!-- labkit list --markdown: NAME ... -->`` and ``<!-- end -->``, which
:func:`rewrite` replaces (``python tools/write_tables.py``) and ``tests/test_tables.py`` checks.
A new scenario's rows come with its module: its summary, ``details``, broken variant's docstring,
fixes, source, ``your_model`` and ``lessons``. The markdown files are never read at run time.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

from labkit.core.scenario import Lesson, Scenario, all_scenarios

REGENERATE = "python tools/write_tables.py"
END = "<!-- end -->"
_START = re.compile(r"<!-- labkit list --markdown: (?P<name>[a-z-]+)[^\n]*?-->\n")

# The cheat-sheet's last row is no scenario's: labkit's own tool for a hang in the reader's code.
YOUR_OWN_CODE = Lesson("any hang, in your own code", "a cell that never returns", "",
                       "`labkit.watchdog(seconds=...)`: a timeout with every thread's stack")


def _row(*cells: str) -> str:
    """A table row; a ``|`` or a line break in the text would end the cell early."""
    return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ").strip() for c in cells) + " |"


def _table(header: Sequence[str], rows: list[str]) -> str:
    return "\n".join([_row(*header), _row(*["---"] * len(header)), *rows])


def _phrase(sentence: str) -> str:
    """A docstring's first line as a table's phrase: "One shared model." -> "one shared model" (names kept)."""
    return re.sub(r"^[A-Z][a-z]+\b", lambda word: word[0].lower(), sentence.strip()).rstrip(".")


def scenario_table(scenarios: Sequence[Scenario]) -> str:
    """README, "What is in it": one row per scenario; its broken variant told by its docstring."""
    rows = []
    for s in scenarios:
        broken = _phrase(s.variants[s.broken_variant].summary) if s.broken_variant else ""
        rows.append(_row(f"`{s.name}`", s.details or s.summary, broken, ", ".join(f"`{f}`" for f in s.fixes), s.source))
    return _table(("scenario", "the failure", "broken", "fixes", "source"), rows)


def model_table(scenarios: Sequence[Scenario]) -> str:
    """README, "On your own model": what ``--set model=...`` changes, where a scenario says."""
    return _table(("scenario", "what your model changes"),
                  [_row(f"`{s.name}`", s.your_model) for s in scenarios if s.your_model])


def cheat_sheet(scenarios: Sequence[Scenario]) -> str:
    """notebooks/README.md: each scenario's lessons, with the notebook that teaches them."""
    rows = [_row(f"{lesson.failure_mode} ({s.notebook[:2]})", lesson.shows, lesson.mechanism, lesson.fix)
            for s in scenarios for lesson in s.lessons]
    rows.append(_row(YOUR_OWN_CODE.failure_mode, YOUR_OWN_CODE.shows, YOUR_OWN_CODE.mechanism, YOUR_OWN_CODE.fix))
    return _table(("failure mode", "how it shows", "the mechanism", "the fix"), rows)


REGIONS: dict[str, Callable[[Sequence[Scenario]], str]] = {
    "scenarios": scenario_table, "your-model": model_table, "cheat-sheet": cheat_sheet,
}
FILES = {"README.md": ("scenarios", "your-model"), "notebooks/README.md": ("cheat-sheet",)}  # where each region lives


def _shipped() -> list[Scenario]:
    """labkit's own scenarios, in the order they are taught (one defined in a notebook has none)."""
    return [s for s in all_scenarios() if s.notebook]


def region(name: str, scenarios: Sequence[Scenario] | None = None) -> str:
    """Region ``name`` with its markers, as it stands in the markdown file."""
    body = REGIONS[name](_shipped() if scenarios is None else scenarios)
    start = f"<!-- labkit list --markdown: {name} (generated from labkit/scenarios/: edit there, then {REGENERATE}) -->"
    return f"{start}\n\n{body}\n\n{END}"


def markdown() -> str:
    """Every region, as ``labkit list --markdown`` prints them."""
    return "\n\n".join(region(name) for name in REGIONS)


def regions_in(text: str) -> dict[str, str]:
    """The marked regions of a markdown file, markers included, by name."""
    found = {}
    for start in _START.finditer(text):
        end = text.find(END, start.end())
        if end < 0:
            raise ValueError(f"region {start['name']!r} has no {END}")
        found[start["name"]] = text[start.start():end + len(END)]
    return found


def rewrite(text: str) -> str:
    """``text`` with each marked region replaced by what the declarations give now."""
    for name, old in regions_in(text).items():
        text = text.replace(old, region(name))
    return text
