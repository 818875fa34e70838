"""The tested set, the confirmed series, and what a result records of the releases it ran on."""

import pytest

from labkit import get
from labkit.machine import versions
from labkit.llm.upstream import installed


def test_the_tested_set_pins_what_the_readme_installs_and_torch():
    tested = versions.tested_set()
    assert tested["torch"].count(".") == 2  # from its comment line: torch is installed by its own command
    for name in ("transformers", "accelerate", "tokenizers", "pytest", "nbval", "jupyterlab"):
        assert name in tested, name


@pytest.mark.parametrize("now, confirmed, verdict", [
    ("5.24.0", ("5.24",), "tested"),
    ("5.23.1", ("5.23", "5.24"), "confirmed"),
    ("5.25.0", ("5.23", "5.24"), "outside"),
    (None, ("5.24",), "not installed"),
])
def test_a_library_is_tested_confirmed_or_outside(monkeypatch, now, confirmed, verdict):
    monkeypatch.setattr(versions, "installed", lambda name: now)
    monkeypatch.setattr(versions, "tested_set", lambda: {"transformers": "5.24.0"})
    assert versions.standing("transformers", confirmed)["verdict"] == verdict


def test_series_drops_the_patch_and_the_local_build():
    assert versions.series("2.13.0+cpu") == "2.13" and versions.series("5.24.0") == "5.24"


def test_each_scenario_names_the_libraries_it_was_confirmed_on():
    rows = versions.scenario_standing(get("device-mismatch"))
    assert [r["library"] for r in rows] == ["torch", "transformers", "accelerate"]
    assert all(r["installed"] == (installed(r["library"]) or "-") for r in rows)
