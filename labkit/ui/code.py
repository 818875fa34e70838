"""The code a variant runs, and what a fix changes: so a notebook shows the failing lines, not a call.

A variant's code is its own function plus the functions of its module that it calls directly (the
scenario's helpers: ``_serve`` of the tokenizer deadlock, ``_broken_rank`` of the OOM hang). A fix's
difference is a unified diff of that code against the broken variant's: helpers both sides share
cancel out, so what is left is the line or two the fix changes.
"""

from __future__ import annotations

import ast
import difflib
import html
import inspect
import textwrap
from dataclasses import dataclass
from typing import Callable

from labkit.core import scenario as registry
from labkit.core.errors import BadInput


@dataclass(frozen=True)
class Code:
    """Source text that renders as a highlighted block in a notebook and as plain text elsewhere."""

    title: str
    text: str
    language: str = "python"  # or "diff"

    def __str__(self) -> str:
        return self.text

    def _repr_markdown_(self) -> str:
        return f"**{self.title}**\n\n```{self.language}\n{self.text}\n```"

    def _repr_html_(self) -> str:
        """The block as JupyterLab should show it: a notebook's output area wraps ``<pre>`` anywhere
        (``word-break: break-all``), which cuts identifiers mid-word ("Calla/ble"); here each line stays
        whole and a long one scrolls. Colours are inline, so they survive an untrusted notebook's
        sanitizer (front ends that prefer Markdown get :meth:`_repr_markdown_`)."""
        return (f"<p><b>{html.escape(self.title)}</b></p>"
                f"<pre style='{PRE_STYLE}'>{_highlighted(self.text, self.language)}</pre>")


# One line per line: no wrapping, so no identifier is ever split; a long line scrolls instead.
PRE_STYLE = ("white-space:pre;word-break:normal;overflow-wrap:normal;overflow-x:auto;padding:6px 8px;"
             "background-color:#f7f7f7;color:#1f1f1f;line-height:1.35")


def _highlighted(text: str, language: str) -> str:
    """``text`` as HTML spans with inline colours (Pygments, which IPython brings), or escaped as it is."""
    try:
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import DiffLexer, PythonLexer
    except ImportError:
        return html.escape(text)
    lexer = DiffLexer() if language == "diff" else PythonLexer()
    return highlight(text, lexer, HtmlFormatter(noclasses=True, nowrap=True, style="default")).rstrip("\n")


def _source(fn: Callable) -> str:
    return textwrap.dedent(inspect.getsource(fn)).rstrip() + "\n"


def _helpers(fn: Callable) -> list[Callable]:
    """Functions of ``fn``'s module that ``fn`` calls by name, in the order of their first call."""
    module = inspect.getmodule(fn)
    called = [node.func.id for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(fn))))
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)]
    found = [getattr(module, name, None) for name in dict.fromkeys(called)]
    return [f for f in found if inspect.isfunction(f) and f.__module__ == fn.__module__ and f is not fn]


def variant_code(scenario: str | registry.Scenario, variant: str, *, helpers: bool = True,
                 first: tuple[Callable, ...] = ()) -> Code:
    """A variant's function and (``helpers``) the module's functions it calls directly, as one block
    (the helpers also in ``first`` come first, in that order: what a diff lines up)."""
    scen = registry.get(scenario)
    fn = scen.get_variant(variant).fn
    called = _helpers(fn) if helpers else []
    ordered = [f for f in first if f in called] + [f for f in called if f not in first]
    text = "\n\n".join(_source(f) for f in [fn, *ordered])
    return Code(f"{scen.name} / {variant}", text)


def variant_diff(scenario: str | registry.Scenario, variant: str, against: str | None = None) -> Code:
    """What ``variant`` changes, as a unified diff against ``against`` (the broken variant by default)."""
    scen = registry.get(scenario)
    base = against or scen.broken_variant
    shared = tuple(_helpers(scen.get_variant(base).fn))
    before, after = variant_code(scen, base).text, variant_code(scen, variant, first=shared).text
    lines = difflib.unified_diff(before.splitlines(), after.splitlines(), base, variant, n=1, lineterm="")
    return Code(f"{scen.name}: {variant} against {base}", "\n".join(lines), "diff")


def show_code(obj: Callable | type, *, between: tuple[str, str] | None = None) -> Code:
    """Any function's or class's source, rendered like a variant's (the rotary module of a race);
    ``between``: only the lines from the first that holds ``between[0]`` to the last before the next
    that holds ``between[1]`` (one part of a long library function)."""
    text = _source(obj)
    if between is not None:
        lines = text.splitlines()
        first = next((i for i, line in enumerate(lines) if between[0] in line), None)
        if first is None:
            raise BadInput(f"{between[0]!r} is not in the source of {obj.__qualname__}")
        end = next((i for i in range(first + 1, len(lines)) if between[1] in lines[i]), len(lines))
        text = textwrap.dedent("\n".join(lines[first:end])).rstrip() + "\n"
    return Code(f"{obj.__module__}.{obj.__qualname__}", text)
