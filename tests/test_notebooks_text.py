"""The notebooks' prose against their own outputs, what a reader sees in those outputs, and the frame every
notebook keeps for a workshop.

A number with a unit of measurement typed into prose ("0.2x the CPU", "340 tokens/s", "7.4 s")
drifts as soon as a machine or a library changes, and then the text contradicts the output beside
it. So every such number in a Markdown cell must appear in the notebook's outputs or code (a
setting); measurements in prose come from Markdown built from the result. Quoted reports (lines
starting with ``>``) and code (in backticks) are not prose here. Text typed into a code cell's
strings, or into a module constant a cell prints, is prose too: printing it shows it, but backs
nothing, so its numbers must appear in some other output.

What an output shows is for a reader: no raw floats (``25.182806333305052``, ``1.378793e+07``), no
``NaN``, no path of the machine that built it (its checkout, its virtual environment, its Python
install), no thread address. And the markdown speaks to an attendee: no "seed 004", no "not done".
"""

import ast
import importlib
import io
import re
import sys
import tokenize
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SCENARIO_NOTEBOOKS = [p for p in NOTEBOOKS if not p.name.startswith("00")]
MEASURED = re.compile(r"(?<![\w.\-])(\d+(?:\.\d+)?)\s?(?:x\b|×|%|tokens/s|s\b|ms\b|MiB|KiB|GiB)")
FRAME = ["## What you will learn", "## In your own code", "### Exercise"]
RAW_FLOAT = re.compile(r"(?<![\w.])\d+\.\d{7,}|(?<![\w.])\d\.\d+e[+-]\d\d\b")
MISSING = re.compile(r"\bnan\b|<NA>|&lt;NA&gt;", re.IGNORECASE)
ADDRESS = re.compile(r"\b0x[0-9a-f]{6,}", re.IGNORECASE)
MACHINE_PATHS = sorted({str(ROOT), sys.prefix, sys.base_prefix, "site-packages", "/.venv/", "/.pyenv/", "/tmp/"})
NOT_FOR_ATTENDEES = re.compile(r"\bseed 0\d\d\b|\bnot done\b|\bappendix\b|\bTODO\b", re.IGNORECASE)


def _prose(cell) -> str:
    lines = [line for line in cell.source.splitlines() if not line.lstrip().startswith(">")]
    text = re.sub(r"```.*?```", " ", "\n".join(lines), flags=re.S)
    return re.sub(r"`[^`]*`", " ", text)


def _shown(cell) -> list[str]:
    """The text a reader sees under a code cell: streams, errors, and every text form of a result (no images)."""
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        parts.append(out.get("evalue", ""))
        for kind, value in out.get("data", {}).items():
            if isinstance(value, str) and kind.startswith("text/"):
                parts.append(value)
    return parts


def _outputs_and_code(nb) -> str:
    parts = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            parts.append(cell.source)
            parts.extend(_shown(cell))
    return "\n".join(parts)


def _typed_text(nb) -> list[str]:
    """Prose typed into code: the strings of its cells that hold a space (a setting such as ``"24GiB"``
    holds none), and the text constants of labkit's modules that a cell names (``thread_race.WHY``)."""
    modules, texts = {}, []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("labkit"):
                modules.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
            elif isinstance(node, ast.Import):
                modules.update({a.asname or a.name: a.name for a in node.names if a.name.startswith("labkit")})
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.search(r"\s", node.value):
                texts.append(node.value)
            elif (isinstance(node, ast.Attribute) and node.attr.isupper() and isinstance(node.value, ast.Name)
                  and node.value.id in modules):
                try:
                    value = getattr(importlib.import_module(modules[node.value.id]), node.attr, None)
                except ImportError:
                    continue
                if isinstance(value, str):
                    texts.append(value)
    return texts


def _outputs_and_settings(nb, texts: list[str]) -> str:
    """What backs a number typed into code: the outputs, less the typed texts themselves (printing a
    text shows it and backs nothing), and the code less its strings and comments (its settings)."""
    parts = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        parts.extend(_shown(cell))
        try:
            tokens = list(tokenize.generate_tokens(io.StringIO(cell.source).readline))
        except (tokenize.TokenError, SyntaxError):
            continue
        parts.append(" ".join(tok.string for tok in tokens if tok.type not in (tokenize.STRING, tokenize.COMMENT)))
    shown = "\n".join(parts)
    for text in sorted(set(texts), key=len, reverse=True):
        shown = shown.replace(text, " ")
    return shown


def _missing(typed: set[str], shown: str) -> list[str]:
    return sorted(t for t in typed if not re.search(rf"(?<![\d.]){re.escape(MEASURED.match(t).group(1))}(?![\d])", shown))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_measured_number_in_the_prose_is_in_the_outputs(path):
    nb = nbformat.read(path, as_version=4)
    shown = _outputs_and_code(nb)
    typed = {m.group(0) for cell in nb.cells if cell.cell_type == "markdown" for m in MEASURED.finditer(_prose(cell))}
    missing = _missing(typed, shown)
    assert not missing, f"{path.name}: prose names {missing}, which no output or code of it shows"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_measured_number_typed_into_code_is_in_another_output(path):
    nb = nbformat.read(path, as_version=4)
    texts = _typed_text(nb)
    missing = _missing({m.group(0) for text in texts for m in MEASURED.finditer(text)}, _outputs_and_settings(nb, texts))
    assert not missing, f"{path.name}: code types {missing} into text, which no other output of it shows"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_outputs_show_no_raw_float_nan_machine_path_or_address(path):
    nb = nbformat.read(path, as_version=4)
    found = []
    for i, cell in enumerate(nb.cells):
        for text in _shown(cell) if cell.cell_type == "code" else []:
            found += [(i, "raw float", m.group(0)) for m in RAW_FLOAT.finditer(text)]
            found += [(i, "missing value", m.group(0)) for m in MISSING.finditer(text)]
            found += [(i, "address", m.group(0)) for m in ADDRESS.finditer(text)]
            found += [(i, "machine path", p) for p in MACHINE_PATHS if p in text]
    assert not found, f"{path.name}: (cell, what, text) {sorted(set(found))[:12]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_the_markdown_speaks_to_an_attendee(path):
    nb = nbformat.read(path, as_version=4)
    found = [(i, m.group(0)) for i, cell in enumerate(nb.cells) if cell.cell_type == "markdown"
             for m in NOT_FOR_ATTENDEES.finditer(cell.source)]
    assert not found, f"{path.name}: (cell, words) {found}: say what it is (the report, the scenario), or leave it out"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_notebook_keeps_the_workshop_frame_and_no_path_outside_the_repository(path):
    nb = nbformat.read(path, as_version=4)
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert all(heading in markdown for heading in FRAME), f"{path.name} lacks one of {FRAME}"
    assert "<details>" in markdown, f"{path.name}: an exercise without a folded solution"
    assert "shared/" not in markdown and "../" not in markdown, f"{path.name} points outside the repository"


@pytest.mark.parametrize("path", SCENARIO_NOTEBOOKS, ids=[p.stem for p in SCENARIO_NOTEBOOKS])
def test_every_scenario_notebook_has_the_learner_write_code_that_a_check_judges(path):
    """An exercise where the learner writes the fix: a ``my_`` function to edit, a check that runs it
    through ``try_variant``, and a folded worked solution whose saved check holds (nbval checks it)."""
    cells = nbformat.read(path, as_version=4).cells
    heading = next((i for i, c in enumerate(cells) if c.cell_type == "markdown" and "### Exercise: write" in c.source), None)
    assert heading is not None, f"{path.name}: no '### Exercise: write ...' in which the learner writes code"
    after = [c for c in cells[heading:] if c.cell_type == "code"]
    mine = next((c for c in after if re.search(r"^def my_\w+\(", c.source, re.M)), None)
    assert mine is not None, f"{path.name}: no cell with the learner's `def my_...(` after the exercise"
    name = re.search(r"^def (my_\w+)\(", mine.source, re.M).group(1)
    assert any("try_variant(" in c.source and name in c.source for c in after), f"{path.name}: nothing checks {name}"
    solutions = [c for c in after if c.metadata.get("jupyter", {}).get("source_hidden") and "try_variant(" in c.source]
    assert solutions, f"{path.name}: no folded solution run through try_variant"
    for cell in solutions:
        assert "# NBVAL_CHECK_OUTPUT" in cell.source, f"{path.name}: nbval does not check the solution's verdict"
        assert "".join(_shown(cell)).startswith("holds:"), f"{path.name}: the saved solution does not hold: {_shown(cell)}"


def test_the_check_catches_a_typed_number_with_no_output_behind_it():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("one-thread used about 0.2x the CPU"),
                                         nbformat.v4.new_code_cell("print(0.12)")])
    typed = [m.group(1) for m in MEASURED.finditer(_prose(nb.cells[0]))]
    assert typed == ["0.2"] and "0.2" not in re.findall(r"\d+\.\d+", _outputs_and_code(nb))


def test_the_check_catches_a_timing_typed_into_code_or_a_printed_constant():
    printed = nbformat.v4.new_code_cell('print("the generate took 0.09 s here")')
    printed.outputs = [nbformat.v4.new_output("stream", name="stdout", text="the generate took 0.09 s here\n")]
    constant = nbformat.v4.new_code_cell("from labkit.scenarios import thread_race\nprint(thread_race.PATTERNS)")
    nb = nbformat.v4.new_notebook(cells=[printed, constant])
    assert _typed_text(nb)[0] == "the generate took 0.09 s here"
    assert _missing({"0.09 s"}, _outputs_and_settings(nb, _typed_text(nb))) == ["0.09 s"]


def test_the_checks_catch_what_a_reader_should_not_meet():
    assert RAW_FLOAT.search("wall_s 2.6468541") and RAW_FLOAT.search("1.378793e+07") and not RAW_FLOAT.search("2.647 s")
    assert MISSING.search("56.0  NaN") and MISSING.search("<NA>") and not MISSING.search("nanoseconds")
    assert ADDRESS.search("Thread 0x00007f1e3abeab80") and not ADDRESS.search("0x12")
    assert NOT_FOR_ATTENDEES.search("reproduces seed 004 word for word") and NOT_FOR_ATTENDEES.search("Appendix, not done")
