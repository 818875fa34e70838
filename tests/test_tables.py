"""What a scenario declares once, and what must follow it: the README's tables and the notebooks'
cheat-sheet (`labkit list --markdown`), doctor's rows, its test file and its notebook section.

A new scenario that misses one of them fails here, not in a reader's hands."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest

from labkit.core import scenario as registry
from labkit.ui import tables
from labkit.ui.cli import main
from labkit.ui.hazards import hazards

ROOT = Path(__file__).resolve().parent.parent


def _shipped() -> dict[str, registry.Scenario]:
    """labkit's own scenarios by module name, found by listing the folder (not by what they declare)."""
    found = {}
    for module in pkgutil.iter_modules(importlib.import_module("labkit.scenarios").__path__):
        mod = importlib.import_module(f"labkit.scenarios.{module.name}")
        found.update({module.name: v for v in vars(mod).values() if isinstance(v, registry.Scenario)})
    return found


@pytest.mark.parametrize("name", list(tables.FILES))
def test_the_markdown_tables_are_what_labkit_list_markdown_prints(name, capsys):
    assert main(["list", "--markdown"]) == 0
    printed = capsys.readouterr().out
    text = (ROOT / name).read_text()
    found = tables.regions_in(text)
    assert set(found) == set(tables.FILES[name]), f"{name} should mark the regions {tables.FILES[name]}"
    for region, written in found.items():
        assert written in printed, f"{name}'s {region} table differs from `labkit list --markdown`: run {tables.REGENERATE}"


def test_a_changed_declaration_shows_as_a_stale_table(monkeypatch):
    """The check above compares something that moves: a declaration changed, the README is stale."""
    readme = (ROOT / "README.md").read_text()
    assert tables.rewrite(readme) == readme
    storm = registry.get("thread-storm")
    monkeypatch.setattr(storm, "details", "a storm in other words")
    assert "| `thread-storm` | a storm in other words |" in tables.rewrite(readme)
    monkeypatch.setattr(storm, "lessons", ())
    assert "CPU thread storm" not in tables.markdown()


def test_every_scenario_has_its_test_its_notebook_section_and_its_rows():
    for module, scen in _shipped().items():
        assert (ROOT / "tests" / f"test_{module}.py").exists(), f"{scen.name} has no tests/test_{module}.py"
        source = ROOT / "notebooks" / "src" / f"{scen.notebook}.py"
        assert scen.notebook and source.exists() and (ROOT / "notebooks" / f"{scen.notebook}.ipynb").exists(), scen.name
        text = source.read_text()
        if scen.section:  # its own numbered part: from "## 2. " to the next heading of that level
            start = re.search(rf"^# ## {scen.section}\. ", text, re.M)
            assert start, f"{scen.notebook} has no section '## {scen.section}.' for {scen.name}"
            after = re.search(r"^# ## (?!#)", text[start.end():], re.M)
            text = text[start.start():start.end() + after.start()] if after else text[start.start():]
        assert scen.name in text, f"{scen.name} is not taught where it says ({scen.notebook}, section {scen.section})"
        assert scen.lessons, f"{scen.name} has no row in the cheat-sheet (lessons=)"
        assert scen.broken_variant and scen.source, scen.name


def test_the_order_is_the_teaching_order_whatever_the_import_order():
    shipped = {id(s) for s in _shipped().values()}
    order = [(s.notebook, s.section) for s in registry.all_scenarios() if id(s) in shipped]
    assert order == sorted(order) and len(set(order)) == len(order), "two scenarios claim one notebook section"


def test_doctor_rows_come_from_the_registry_each_named_after_its_scenario():
    """Every rule answers even when no fact could be read, and names the scenario that declares it."""
    rows = hazards({}, workers=1)
    declared = [s.name for s in registry.all_scenarios() if s.hazard is not None]
    assert list(dict.fromkeys(h.failure.split(" (")[0] for h in rows)) == declared  # "thread-storm (waiting)": a part
    assert all(h.verdict in ("exposed", "not exposed", "unknown") and h.evidence and h.fix for h in rows)


def test_a_scenario_of_ones_own_brings_its_hazard_row(monkeypatch):
    from labkit.core.hazard import UNKNOWN, Hazard

    mine = registry.Scenario("my-race", summary="test", notebook="99_mine",
                             hazard=lambda facts, workers: Hazard("my-race", UNKNOWN, f"{workers} workers", "a lock"))
    monkeypatch.setitem(registry._REGISTRY, mine.name, mine)
    assert hazards({}, workers=3)[-1] == Hazard("my-race", UNKNOWN, "3 workers", "a lock")
