"""The notebooks' prose against their own outputs, and the frame every notebook keeps for a workshop.

A number with a unit of measurement typed into prose ("0.2x the CPU", "340 tokens/s", "7.4 s")
drifts as soon as a machine or a library changes, and then the text contradicts the output beside
it. So every such number in a Markdown cell must appear in the notebook's outputs or code (a
setting); measurements in prose come from Markdown built from the result. Quoted reports (lines
starting with ``>``) and code (in backticks) are not prose here.
"""

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
MEASURED = re.compile(r"(?<![\w.\-])(\d+(?:\.\d+)?)\s?(?:x\b|×|%|tokens/s|s\b|ms\b|MiB|KiB|GiB)")
FRAME = ["## What you will learn", "## In your own code", "### Exercise"]


def _prose(cell) -> str:
    lines = [line for line in cell.source.splitlines() if not line.lstrip().startswith(">")]
    text = re.sub(r"```.*?```", " ", "\n".join(lines), flags=re.S)
    return re.sub(r"`[^`]*`", " ", text)


def _outputs_and_code(nb) -> str:
    parts = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        parts.append(cell.source)
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            for value in out.get("data", {}).values():
                parts.append(value if isinstance(value, str) else "")
    return "\n".join(parts)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_measured_number_in_the_prose_is_in_the_outputs(path):
    nb = nbformat.read(path, as_version=4)
    shown = _outputs_and_code(nb)
    typed = {m.group(0) for cell in nb.cells if cell.cell_type == "markdown" for m in MEASURED.finditer(_prose(cell))}
    missing = sorted(t for t in typed if not re.search(rf"(?<![\d.]){re.escape(MEASURED.match(t).group(1))}(?![\d])", shown))
    assert not missing, f"{path.name}: prose names {missing}, which no output or code of it shows"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_notebook_keeps_the_workshop_frame_and_no_path_outside_the_repository(path):
    nb = nbformat.read(path, as_version=4)
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert all(heading in markdown for heading in FRAME), f"{path.name} lacks one of {FRAME}"
    assert "<details>" in markdown, f"{path.name}: an exercise without a folded solution"
    assert "shared/" not in markdown and "../" not in markdown, f"{path.name} points outside the repository"


def test_the_check_catches_a_typed_number_with_no_output_behind_it():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("one-thread used about 0.2x the CPU"),
                                         nbformat.v4.new_code_cell("print(0.12)")])
    typed = [m.group(1) for m in MEASURED.finditer(_prose(nb.cells[0]))]
    assert typed == ["0.2"] and "0.2" not in re.findall(r"\d+\.\d+", _outputs_and_code(nb))
