"""The saved notebooks are what their sources build: an edit to notebooks/src/ without a rebuild fails here."""

import importlib.util
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "notebooks" / "src").glob("*.py"))


def _builder():
    spec = importlib.util.spec_from_file_location("build_notebooks", ROOT / "tools" / "build_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("source", SOURCES, ids=[s.stem for s in SOURCES])
def test_the_saved_notebook_has_its_source_s_cells(source):
    built = _builder().parse(source.read_text())
    saved = nbformat.read(ROOT / "notebooks" / f"{source.stem}.ipynb", as_version=4)
    cells = lambda nb: [(c.cell_type, c.source) for c in nb.cells]  # noqa: E731
    assert cells(saved) == cells(built), f"rebuild it: python tools/build_notebooks.py {source.stem[:2]}"
    assert all(c.get("execution_count") for c in saved.cells if c.cell_type == "code"), "saved without its outputs"
