"""Build ``notebooks/NAME.ipynb`` from ``notebooks/src/NAME.py`` and execute it, outputs saved.

    python tools/build_notebooks.py            # every notebook
    python tools/build_notebooks.py 03         # those whose name starts with 03

The sources use the percent format: a line ``# %%`` starts a code cell, ``# %% [markdown]`` a
markdown cell whose lines start with ``# ``, and ``# %% solution`` a code cell whose source is folded
(an exercise's worked solution: its output shows, its code when the reader unfolds it). Executing
here saves each cell's output, which is what ``pytest --nbval-lax`` compares for cells marked
``# NBVAL_CHECK_OUTPUT``. Needs ``nbclient``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def parse(text: str) -> nbformat.NotebookNode:
    cells, kind, lines = [], None, []

    def flush():
        body = "\n".join(lines).strip("\n")
        if kind == "markdown":
            cells.append(nbformat.v4.new_markdown_cell("\n".join(l[2:] if l.startswith("# ") else l.lstrip("#") for l in body.splitlines())))
        elif kind in ("code", "solution") and body:
            cells.append(nbformat.v4.new_code_cell(body))
            if kind == "solution":
                cells[-1].metadata.update(jupyter={"source_hidden": True}, tags=["solution"])

    for line in text.splitlines():
        if line.startswith("# %%"):
            flush()
            kind = "markdown" if "[markdown]" in line else "solution" if line.split()[2:3] == ["solution"] else "code"
            lines = []
        else:
            lines.append(line)
    flush()
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def build(source: Path) -> Path:
    nb = parse(source.read_text())
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    target = NOTEBOOKS / f"{source.stem}.ipynb"
    nbformat.write(nb, target)
    return target


if __name__ == "__main__":
    prefixes = sys.argv[1:] or [""]
    for src in sorted((NOTEBOOKS / "src").glob("*.py")):
        if any(src.stem.startswith(p) for p in prefixes):
            print(f"built {build(src)}")
