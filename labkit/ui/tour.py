"""``labkit tour``: every scenario's broken variant against its main fix, on the embedded model.

The report folder holds one A/B figure and the monitor's view of one trial of each side per
scenario, ``results.json`` (every comparison, every trial), ``report.md`` that ties them together,
and ``report.html``: the same in one self-contained file (figures embedded) for people who would
rather look than read, and who do not run notebooks.
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from labkit.core._json import jsonable
from labkit.core.compare import Comparison, compare
from labkit.ui.doctor import doctor
from labkit.machine.versions import confirmed_text, scenario_standing
from labkit.ui.plots import comparison_figure, monitor_figure, save, too_short
from labkit.core.scenario import all_scenarios, get
from labkit.core.runner import Options, check_repeats


@dataclass
class TourReport:
    folder: Path
    comparisons: list[Comparison]
    table: pd.DataFrame


def tour(
    out: str | Path = "labkit-report", *, repeats: int = 5, quick: bool = False, only: list[str] | None = None,
    timeout: float | None = None, progress: bool = False, start: str | None = None,
) -> TourReport:
    """Compare each scenario's broken variant with its main fix, then the two fixes of its
    ``speed_pair`` where it names them; ``quick`` uses each scenario's
    fast settings (shorter runs that still show the failure); ``only`` names the scenarios to run;
    ``timeout`` replaces each scenario's own (a hung trial lasts that long). ``repeats`` trials a side:
    5 by default, because no test of 3 against 3 can reach 95% (the table then says "too few trials to
    tell" rather than print an interval it cannot back)."""
    check_repeats(repeats)
    Options(timeout, start)  # checked before the first trial, not at the first scenario's
    chosen = [get(name) for name in only] if only else all_scenarios()
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    comparisons, rows, sections, pages = [], [], [], []
    for scen in chosen:
        broken, fix = scen.broken_variant, scen.main_fix
        if broken is None or fix is None:
            continue
        pairs = [(broken, fix), *([scen.speed_pair] if scen.speed_pair else [])]
        results = [compare(scen, a, b, repeats=repeats, knobs=scen.quick if quick else None, timeout=timeout,
                           progress=progress, start=start) for a, b in pairs]
        comparisons += results
        rows += [_row(scen, result) for result in results]
        figures = [save(comparison_figure(result), folder / (f"{scen.name}-ab.png" if i == 0 else
                                                             f"{scen.name}-{result.a.variant}-{result.b.variant}-ab.png")).name
                   for i, result in enumerate(results)]
        said = []  # a trial too short to draw gets a sentence where its figure would be
        for side in (results[0].a, results[0].b):
            trial = side.trials[0]
            if trial.samples is None:
                continue
            if (why := too_short(trial.samples, trial, f"{scen.name} / {side.variant}, trial 0")) is not None:
                said.append(why)
                continue
            fig = monitor_figure(trial, f"{scen.name} / {side.variant}, trial 0")  # its measured window marked
            figures.append(save(fig, folder / f"{scen.name}-{side.variant}-monitor.png").name)
        sections.append(_section(scen, results, figures, said))
        pages.append(_html_section(scen, results, [folder / name for name in figures], said))
    table = pd.DataFrame(rows)
    (folder / "results.json").write_text(json.dumps(jsonable([c.to_dict() for c in comparisons]), indent=2))
    env = doctor()
    (folder / "report.md").write_text(
        "# labkit tour\n\n```\n" + table.to_string(index=False) + "\n```\n\n" + "\n\n".join(sections)
        + "\n\n## Environment\n\n```\n" + str(env) + "\n```\n"
    )
    (folder / "report.html").write_text(HTML_PAGE.format(
        table=table.to_html(index=False, escape=True), sections="\n".join(pages),
        hazards=env.hazards_frame().to_html(index=False, escape=True),
        environment=env.to_frame().to_html(index=False, escape=True)))
    return TourReport(folder, comparisons, table)


def _row(scen, result: Comparison) -> dict[str, str]:
    ratio, low, high = result.interval
    if math.isnan(ratio):  # a side that never finished (hung, raised at step 0) has nothing to divide
        b_over_a = "no ratio"
    else:  # an interval only where the test could reach its level (never "95%" from 3 against 3)
        b_over_a = f"{ratio:.2f} " + ("(too few to tell)" if math.isnan(low) else f"[{low:.2f}, {high:.2f}]")
    return {"scenario": scen.name, "A": f"{result.a.variant}: {result.a.outcome_text()}",
            "B": f"{result.b.variant}: {result.b.outcome_text()}", "metric": result.metric.name,
            "A median": _fmt(result.a_median), "B median": _fmt(result.b_median), "B/A": b_over_a,
            "verdict": tour_verdict(result)}


def tour_verdict(result: Comparison) -> str:
    """Outcomes first: a fix that stops the failure is the answer; speed only when both finish. A fix
    works when its trials end as it expects (``Variant.expect``: "ok", or "raised" for a fast failure)."""
    expect = get(result.scenario).get_variant(result.b.variant).expect
    broken_failed = sum(t.outcome != "ok" for t in result.a.trials)
    fix_failed = sum(t.outcome != expect for t in result.b.trials)
    n = len(result.a.trials)
    if broken_failed and not fix_failed:
        fix_did = f"ok in {n} of {n}" if expect == "ok" else f"{expect} in every trial, as it should"
        return f"fixed: {result.a.variant} failed {broken_failed} of {n} ({result.a.outcome_text()}), {result.b.variant} {fix_did}"
    if fix_failed:
        return f"not fixed: {result.b.variant} failed {fix_failed} of {n} ({result.b.outcome_text()})"
    return result.verdict


def _provenance(scen) -> str:
    """Where the failure was reported, what it was confirmed on (a user's own scenario may say neither),
    and any library this run used outside that."""
    confirmed = "; ".join(filter(None, (confirmed_text(scen), scen.confirmed_setup)))
    outside = [f"{row['library']} {row['installed']}" for row in scenario_standing(scen) if row["verdict"] == "outside"]
    parts = [f"Source: {scen.source}." if scen.source else "", f"Confirmed on: {confirmed}." if confirmed else "",
             f"This run used {', '.join(outside)}: not a release it was confirmed on." if outside else ""]
    return " ".join(filter(None, parts))


def _section(scen, results: list[Comparison], figures: list[str], said: list[str]) -> str:
    lines = [f"## {scen.name}", "", scen.summary, "", _provenance(scen), ""]
    for result in results:
        lines += [f"**{tour_verdict(result)}**", "", f"On {result.metric.name}: {result.verdict}.", ""]
    lines += [f"![{name}]({name})" for name in figures]
    lines += [f"*{text}*" for text in said]
    return "\n".join(lines)


HTML_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>labkit tour</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.9em; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }}
img {{ max-width: 100%; display: block; margin: 1em 0; }}
.verdict {{ font-weight: bold; }}
</style></head><body>
<h1>labkit tour</h1>
<p>Each scenario's broken variant against its main fix, every trial isolated in a child process.</p>
{table}
{sections}
<h2>Hazards on this machine</h2>
<p>Which failure modes this machine and environment are exposed to (<code>labkit doctor</code>).</p>
{hazards}
<h2>Environment</h2>
{environment}
</body></html>
"""


def _html_section(scen, results: list[Comparison], figures: list[Path], said: list[str]) -> str:
    first = results[0]
    notes = first.a.trials[0].notes if first.a.trials else {}
    parts = [f"<section id='{html.escape(scen.name)}'><h2>{html.escape(scen.name)}</h2>",
             f"<p>{html.escape(scen.summary)}</p>",
             f"<p>{html.escape(_provenance(scen))}</p>",
             *(f"<p><b>{html.escape(k)}</b>: {html.escape(v)}</p>" for k, v in notes.items())]
    for result in results:
        parts += [f"<p class='verdict'>{html.escape(tour_verdict(result))}</p>",
                  f"<p>On {html.escape(result.metric.name)}: {html.escape(result.verdict)}.</p>",
                  result.table().to_html(escape=True, na_rep="–", float_format=_fmt)]
    parts += [f"<img alt='{html.escape(path.name)}' src='data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}'>"
              for path in figures]
    parts += [f"<p><i>{html.escape(text)}</i></p>" for text in said]
    return "\n".join(parts) + "</section>"


def _fmt(value: float) -> str:
    """Four significant digits; a dash where a side measured nothing (every trial failed)."""
    return "–" if math.isnan(value) else f"{value:.4g}"
