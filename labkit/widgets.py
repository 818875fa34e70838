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
    if isinstance(knob.default, str):
        return w.Text(value=value, description=knob.name, placeholder=knob.help, style=style)
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
            _record(trial, live, rows, {"variant": variant.value, **{k: settings[k] for k in controls}},
                    table_area, status)
        except BadInput as exc:
            status.value = f"<span style='color:#b00'>{exc}</span>"
        finally:
            button.disabled = False

    button.on_click(on_run)
    return w.VBox([w.HBox([variant, button]), *controls.values(), status, plot_area, table_area])


def _record(trial, live: LivePlot, rows: list[dict[str, Any]], settings: Mapping[str, Any],
            table_area: w.Output, status: w.HTML) -> None:
    """Show a finished trial: its plot, a new row in the table, its stacks if it hung, its notes."""
    if trial.samples is not None:
        live.show(trial.samples)
    rows.append({"run": len(rows) + 1, **settings, "outcome": trial.outcome,
                 **{k: round(v, 4) for k, v in trial.metrics.items()}, "error": trial.error or ""})
    table_area.clear_output()
    with table_area:
        display(pd.DataFrame(rows).set_index("run"))
        if trial.stacks:
            display(w.HTML("<pre>" + "\n\n".join(trial.stacks.values()) + "</pre>"))
        if trial.notes:
            display(w.HTML("<br>".join(f"<b>{k}</b>: {v}" for k, v in trial.notes.items())))
    status.value = f"{settings.get('variant', '')}: <b>{trial.outcome}</b> in {trial.seconds:.1f} s"


def device_map_panel(model: str = "tiny", tokens: int = 3, timeout: float | None = None) -> w.VBox:
    """The device-mismatch scenario by hand: a device per row, "balanced" from accelerate, skip_keys, Run.

    Leave a row blank or put a row after a meta row on another device to see what an invalid map says.
    """
    from .device_maps import balanced_map, empty_model, rows as map_rows
    from .devices import available, device_pair
    from .models import tiny_config

    skeleton = empty_model(tiny_config() if model == "tiny" else model)
    labels = map_rows(skeleton)
    choices = ["", *available()]
    style = {"description_width": "initial"}
    pickers = {label: w.Dropdown(options=choices, description=label, style=style) for label in labels}
    balanced = w.Button(description="balanced", icon="balance-scale",
                        tooltip="accelerate's get_balanced_memory + infer_auto_device_map over this machine's pair")
    skip = w.Checkbox(value=False, description="skip_keys=model._skip_keys_device_placement", style=style)
    steps = w.IntSlider(value=tokens, min=2, max=16, description="tokens", style=style)
    button = w.Button(description="Run", button_style="primary", icon="play")
    status, plot_area, table_area = w.HTML(), w.Output(), w.Output()
    results: list[dict[str, Any]] = []

    def fill_balanced(_=None):
        device_map = balanced_map(skeleton, device_pair())
        for label, module in labels.items():
            pickers[label].value = device_map[module]

    def on_run(_):
        button.disabled = True
        variant = "skip-keys" if skip.value else "broken"
        try:
            knobs = {"device_map": ",".join(p.value for p in pickers.values()), "tokens": steps.value, "model": model}
            status.value = f"running <b>{variant}</b>..."
            plot_area.clear_output()
            with plot_area:
                live = LivePlot(f"device-mismatch / {variant}", every=1.0)
            trial = run("device-mismatch", variant, knobs=knobs, timeout=timeout, on_tick=live).trials[0]
            _record(trial, live, results, {"variant": variant, "device_map": knobs["device_map"]}, table_area, status)
        except BadInput as exc:
            status.value = f"<span style='color:#b00'>{exc}</span>"
        finally:
            button.disabled = False

    balanced.on_click(fill_balanced)
    button.on_click(on_run)
    fill_balanced()
    return w.VBox([w.HBox([balanced, skip, steps, button]), *pickers.values(), status, plot_area, table_area])

