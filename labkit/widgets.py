"""ipywidgets panels: a scenario's knobs as controls, a variant selector, Run, a live plot, and a
results table that grows with each run (press Run twice for an A/B by hand).

A run happens in the button's callback: the kernel is busy for exactly the trial's duration,
which is bounded by the trial's timeout (isolated in a child process, so a hang cannot freeze it).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import ipywidgets as w
import pandas as pd
from IPython.display import display

from . import scenario as registry
from .errors import BadInput
from .plots import LivePlot
from .trial import run

SLIDER_CAP = 16  # counts beyond this make a 2-core laptop crawl; the CLI takes any allowed value


def _control(knob: registry.Knob, value: Any, bounds: tuple[float, float] | None) -> w.Widget:
    style = {"description_width": "initial"}
    if knob.choices is not None:
        return w.Dropdown(options=list(knob.choices), value=value, description=knob.name, style=style)
    low, high = bounds or (knob.low if knob.low is not None else 0, knob.high if knob.high is not None else 100)
    if isinstance(knob.default, int):
        high = min(high, max(SLIDER_CAP, value)) if bounds is None else high
        return w.IntSlider(value=value, min=low, max=high, description=knob.name, style=style)
    return w.FloatSlider(value=value, min=low, max=high, step=(high - low) / 100, description=knob.name, style=style)


def panel(
    scenario: str | registry.Scenario,
    knobs: Sequence[str] | None = None,
    *,
    values: Mapping[str, Any] | None = None,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    variants: Sequence[str] | None = None,
    timeout: float | None = None,
) -> w.VBox:
    """A panel for ``scenario``: controls for ``knobs`` (default: all), starting at ``values``."""
    scen = registry.get(scenario)
    start = scen.knob_values(values)
    chosen = [k for k in scen.knobs if knobs is None or k.name in knobs]
    controls = {k.name: _control(k, start[k.name], (bounds or {}).get(k.name)) for k in chosen}
    variant = w.Dropdown(options=list(variants or scen.variants), description="variant")
    button = w.Button(description="Run", button_style="primary", icon="play")
    status = w.HTML()
    plot_area, table_area = w.Output(), w.Output()
    rows: list[dict[str, Any]] = []

    def on_run(_):
        button.disabled = True
        try:
            settings = {**start, **{name: c.value for name, c in controls.items()}}
            scen.knob_values(settings)  # bad settings get their message before anything starts
            status.value = f"running <b>{variant.value}</b>..."
            plot_area.clear_output()
            with plot_area:
                live = LivePlot(f"{scen.name} / {variant.value}", every=1.0)
            trial = run(scen, variant.value, knobs=settings, timeout=timeout, on_tick=live).trials[0]
            if trial.samples is not None:
                live.show(trial.samples)
            rows.append({"run": len(rows) + 1, "variant": variant.value, **{k: settings[k] for k in controls},
                         "outcome": trial.outcome, **{k: round(v, 4) for k, v in trial.metrics.items()},
                         "error": trial.error or ""})
            table_area.clear_output()
            with table_area:
                display(pd.DataFrame(rows).set_index("run"))
                if trial.stacks:
                    display(w.HTML("<pre>" + "\n\n".join(trial.stacks.values()) + "</pre>"))
            status.value = f"{variant.value}: <b>{trial.outcome}</b> in {trial.seconds:.1f} s"
        except BadInput as exc:
            status.value = f"<span style='color:#b00'>{exc}</span>"
        finally:
            button.disabled = False

    button.on_click(on_run)
    return w.VBox([w.HBox([variant, button]), *controls.values(), status, plot_area, table_area])
