"""ipywidgets panels, one design for every notebook: a scenario's settings as controls, a variant,
Run and Stop, a live plot, and a results table that grows with each run (press Run twice for an A/B
by hand).

A run happens in a background thread of the kernel, so the notebook's other cells stay free while
it runs; the trial itself is an isolated child process (a hang cannot freeze anything), and Stop
kills its whole process group. The plot is an ``ipywidgets.Image`` and the table an ``HTML`` widget:
both can be updated from that thread, which output areas cannot reliably be.
"""

from __future__ import annotations

import html
import threading
import time
from typing import Any, Mapping, Sequence

import ipywidgets as w

from labkit.core import scenario as registry
from labkit.core.errors import BadInput
from labkit.isolation import warm
from labkit.machine.monitor import NO_GPU, has_gpu
from labkit.ui.plots import LivePlot, readable
from labkit.core.runner import run
from labkit.core.trial import WINDOW, Trial

SLIDER_CAP = 16  # counts beyond this make a 2-core laptop crawl; the CLI takes any allowed value
SLIDER_REACH = 4  # a setting that starts above the cap (a vocabulary of 151,936) reaches 4x that, up to its own limit
ERROR_CHARS = 100  # an error in the table: its first words, the whole text on hover and under the table
STYLE = {"description_width": "initial"}


class Stopped(Exception):
    """Raised from a trial's tick when Stop is pressed; the isolation layer then kills the trial."""


class Runner:
    """Run and Stop buttons, a status line, a live plot and a growing results table.

    ``start(scenario, variant, knobs, shown)`` checks the settings (a bad one is a message, not an
    exception), then runs one trial in a background thread; ``shown`` are the settings the table
    lists. ``thread`` is the run in progress, for whoever needs to wait on it (tests).
    """

    def __init__(self, timeout: float | None = None):
        self.timeout = timeout
        self.run_button = w.Button(description="Run", button_style="primary", icon="play")
        self.stop_button = w.Button(description="Stop", button_style="danger", icon="stop", disabled=True)
        self.status = w.HTML()
        self.plot = w.Image(format="png", layout=w.Layout(max_width="900px", display="none"))
        self.plot.observe(lambda _: setattr(self.plot.layout, "display", None), "value")  # shown once drawn
        self.table = w.HTML()
        self.details = w.HTML(layout=w.Layout(max_height="400px", overflow="auto"))  # stacks can be long
        for name in ("run_button", "stop_button", "status", "plot", "table", "details"):
            getattr(self, name).add_class(f"labkit-{name.replace('_', '-')}")  # for the browser test
        self.rows: list[dict[str, Any]] = []
        self.units: dict[str, str] = {}  # each metric's unit, for the table's header
        self.thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.stop_button.on_click(lambda _: self._stop.set())
        self.quiet = "" if has_gpu() else NO_GPU  # said once, in grey, where the status goes
        self.say("")

    @property
    def buttons(self) -> w.HBox:
        return w.HBox([self.run_button, self.stop_button])

    @property
    def outputs(self) -> list[w.Widget]:
        return [self.status, self.plot, self.table, self.details]

    def say(self, text: str, error: bool = False) -> None:
        quiet = f" <span style='color:#888'>({self.quiet})</span>" if self.quiet else ""
        self.status.value = (f"<span style='color:#b00'>{html.escape(text)}</span>" if error else text) + quiet

    def start(self, scenario: str | registry.Scenario, variant: str, knobs: Mapping[str, Any],
              shown: Mapping[str, Any]) -> None:
        if self.thread is not None and self.thread.is_alive():
            return self.say("a run is in progress: wait for it, or press Stop", error=True)
        try:
            scen = registry.get(scenario)
            scen.get_variant(variant)
            scen.knob_values(knobs)  # bad settings get their message before anything starts
        except BadInput as exc:
            return self.say(str(exc), error=True)
        self._stop.clear()
        self.run_button.disabled, self.stop_button.disabled = True, False
        self.say(f"running <b>{html.escape(variant)}</b>...")
        self.thread = threading.Thread(target=self._run, args=(scen, variant, dict(knobs), dict(shown)),
                                       name="labkit-panel-run", daemon=True)
        self.thread.start()

    def _run(self, scen: registry.Scenario, variant: str, knobs: dict[str, Any], shown: dict[str, Any]) -> None:
        live = LivePlot(f"{scen.name} / {variant}", every=1.0, image=self.plot)
        waited, watched = [], []

        def tick(monitor) -> None:
            watched[:] = [monitor]
            if self._stop.is_set():
                if monitor.samples:  # the trial ran: its plot ends where Stop was pressed
                    monitor.mark("stopped", time.monotonic())
                raise Stopped
            if (waiting := warm.starting()) is not None:  # before the trial: its warm process imports
                waited.append(waiting)
                self.say(html.escape(waiting))
            elif waited and monitor.running:
                waited.clear()
                self.say(f"running <b>{html.escape(variant)}</b>...")
            live(monitor)

        try:
            trial = run(scen, variant, knobs=knobs, timeout=self.timeout, on_tick=tick).trials[0]
            self.record(trial, live, {"variant": variant, **shown})
        except Stopped:
            if watched and watched[0].samples:
                live.show(watched[0].to_frame())  # marked: "until Stop was pressed"
            self.rows.append({"run": len(self.rows) + 1, "variant": variant, **shown, "outcome": "stopped",
                              "error": "Stop pressed" + (" while its warm process started: no trial ran" if waited else "")})
            self.table.value = results_html(self.rows, self.units)
            self.say(f"{html.escape(variant)}: stopped; " + ("no trial was started" if waited
                                                             else "the trial's processes were killed"))
        except Exception as exc:  # noqa: BLE001 - a panel shows what went wrong instead of dying silently
            self.say(f"{type(exc).__name__}: {exc}", error=True)
        finally:
            self.run_button.disabled, self.stop_button.disabled = False, True

    def record(self, trial: Trial, live: LivePlot, shown: Mapping[str, Any]) -> None:
        """Show a finished trial: its final plot (its measured window marked; a sentence where it was
        too short to draw), a new table row, its whole error where the table cut it, its stacks if it
        hung, its notes."""
        if trial.samples is not None:
            live.show(trial)
        self.rows.append({"run": len(self.rows) + 1, **shown, "outcome": trial.outcome.value,
                          **{k: v for k, v in trial.metrics.items() if k not in WINDOW}, "error": trial.error or ""})
        self.units.update({m.name: m.unit for m in registry.get(trial.scenario).metrics})
        self.table.value = results_html(self.rows, self.units)
        error = trial.error or ""
        parts = [f"<b>error</b>: {html.escape(error)}"] if cut(error) != error else []  # the table shows its start
        parts += [f"<b>{html.escape(k)}</b>: {html.escape(v)}" for k, v in trial.notes.items()]
        parts += [f"<b>stacks of process {pid}</b><pre>{html.escape(text)}</pre>" for pid, text in trial.stacks.items()]
        self.details.value = "<br>".join(parts)
        took = "" if shown.get("gpus") else f" in {trial.seconds:.1f} s"  # no time from virtual GPUs: it is the CPU's
        self.say(f"{html.escape(shown.get('variant', ''))}: <b>{trial.outcome}</b>{took}")


def results_html(rows: list[dict[str, Any]], units: Mapping[str, str] | None = None) -> str:
    """The runs as a table that fits the panel: settings, outcome, metrics, error (a reader's
    order, whichever row brought a column first). Numbers as a reader wants them (whole numbers as
    integers, three significant digits, a dash where a run has none), each metric's unit under its
    name, names that wrap only after an underscore, and errors cut at a word with an ellipsis (the whole
    text on hover, and under the table for the latest run)."""
    units = units or {}
    columns = [c for c in dict.fromkeys(k for row in rows for k in row) if c != "error"] + ["error"]
    head = "".join(_header(c, units.get(c, "")) for c in columns)
    body = "".join("<tr>" + "".join(_cell(c, row.get(c)) for c in columns) + "</tr>" for row in rows)
    return (f"<div style='max-width:100%;overflow-x:auto'><table style='{TABLE_STYLE}'>"
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")


TABLE_STYLE = "border-collapse:collapse;font-size:85%;line-height:1.3;width:100%"  # the error takes what is left
_PAD = "padding:2px 4px;vertical-align:top"


def _breakable(text: str, after: str) -> str:
    """``text`` escaped, free to wrap after each character of ``after`` (a device map after its commas)."""
    escaped = html.escape(text)
    for char in after:
        escaped = escaped.replace(char, f"{char}<wbr>")
    return escaped


def _header(name: str, unit: str) -> str:
    said = f"<br><span style='font-weight:normal;color:#777'>{html.escape(unit)}</span>" if unit else ""
    align = "left" if name in ("variant", "outcome", "error") else "right"
    words = []  # wraps after an underscore, never before a word of one or two letters ("wall_s", "per_s")
    for word in name.split("_"):
        if words and len(word) <= 2:
            words[-1] += f"_{word}"
        else:
            words.append(word)
    named = "_<wbr>".join(html.escape(word) for word in words)
    return f"<th style='{_PAD};text-align:{align};border-bottom:1px solid #999'>{named}{said}</th>"


def _cell(name: str, value: Any) -> str:
    if name == "error":
        text = str(value or "")
        shown = html.escape(cut(text)) if text else "–"
        return (f"<td style='{_PAD};min-width:9em;white-space:normal' "
                f"title='{html.escape(text, quote=True)}'>{shown}</td>")
    if isinstance(value, str):
        colour = ";color:#b00" if name == "outcome" and value not in ("ok", "stopped") else ""
        wraps = "normal" if any(c in value for c in ",/") else "nowrap"  # a device map wraps after its commas
        return f"<td style='{_PAD};text-align:left;white-space:{wraps}{colour}'>{_breakable(value, ',/')}</td>"
    return f"<td style='{_PAD};text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums'>{readable(value)}</td>"


def cut(text: str, limit: int = ERROR_CHARS) -> str:
    """``text``'s first line, at most ``limit`` characters, cut after a whole word with an ellipsis where
    anything was left out (a traceback's first line is the exception and its message)."""
    whole = text.strip()
    line = whole.split("\n")[0]
    if len(line) > limit:
        head = line[:limit + 1]
        line = head.rsplit(" ", 1)[0] if " " in head else line[:limit]
    elif line == whole:
        return line
    return line.rstrip(" ,;:") + "…"


def _control(knob: registry.Knob, value: Any, bounds: tuple[float, float] | None) -> w.Widget:
    style = STYLE
    if knob.choices is not None:
        return w.Dropdown(options=list(knob.choices), value=value, description=knob.name, style=style)
    if isinstance(knob.default, bool):
        return w.Checkbox(value=value, description=knob.name, indent=False)
    if isinstance(knob.default, str):
        return w.Text(value=value, description=knob.name, placeholder=knob.help, style=style)
    low, high = bounds or (knob.low if knob.low is not None else 0, knob.high if knob.high is not None else 100)
    if isinstance(knob.default, int):
        reach = SLIDER_CAP if value <= SLIDER_CAP else SLIDER_REACH * value
        high = min(high, reach) if bounds is None else high
        return w.IntSlider(value=value, min=low, max=high, description=knob.name, style=style, readout_format=",d")
    return w.FloatSlider(value=value, min=low, max=high, step=(high - low) / 100, description=knob.name, style=style)


class Panel(w.VBox):
    """The controls and a :class:`Runner`'s outputs, plus a static fallback: a front end that cannot
    show widgets (GitHub, nbviewer, a JupyterLab without ipywidgets) shows what the panel is and the
    call that does the same without it, instead of ``VBox(children=...)``."""

    def __init__(self, runner: Runner, rows: list[w.Widget], about: str, call: str, controls: Mapping[str, w.Widget]):
        super().__init__([*rows, *runner.outputs])
        self.add_class("labkit-panel")
        self.runner, self.about, self.call = runner, about, call
        self.controls = dict(controls)  # by name (a knob, a map row): for scripts and tests, whatever the layout

    def _repr_mimebundle_(self, **kwargs):
        bundle = super()._repr_mimebundle_(**kwargs)  # JupyterLab prefers the widget view to HTML
        needs = "its controls need a front end with ipywidgets (JupyterLab, Notebook 7, VS Code); without one"
        bundle["text/plain"] = f"labkit panel: {self.about}; {needs}: {self.call}"
        bundle["text/html"] = (f"<p><b>labkit panel</b>: {html.escape(self.about)}.</p>"
                               f"<p>{needs}:</p><pre>{html.escape(self.call)}</pre>")
        return bundle


def panel(
    scenario: str | registry.Scenario,
    knobs: Sequence[str] | None = None,
    *,
    values: Mapping[str, Any] | None = None,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    variants: Sequence[str] | None = None,
    timeout: float | None = None,
) -> Panel:
    """A panel for ``scenario``: controls for ``knobs`` (default: all), starting at the scenario's quick
    settings (short runs that still fail, kind to a 2-core laptop) updated with ``values``."""
    scen = registry.get(scenario)
    asked = {**scen.quick, **(values or {})}
    start = scen.knob_values(asked)
    chosen = [k for k in scen.knobs if knobs is None or k.name in knobs]
    controls = {k.name: _control(k, start[k.name], (bounds or {}).get(k.name)) for k in chosen}
    variant = w.Dropdown(options=list(variants or scen.variants), description="variant")
    runner = Runner(timeout)

    def shown() -> dict[str, Any]:
        return {name: c.value for name, c in controls.items()}

    def on_run(_):
        now = shown()
        runner.start(scen, variant.value, {**start, **now}, now)

    runner.run_button.on_click(on_run)
    about = (f"{scen.name}, {scen.summary}; settings: {', '.join(controls) or 'none'}; "
             f"variants: {', '.join(variant.options)}")
    call = f"labkit.run({scen.name!r}, {variant.value!r}, knobs={ {**asked, **shown()}!r})"  # what Run runs
    return Panel(runner, [w.HBox([variant, runner.buttons]), *controls.values()], about, call,
                 {"variant": variant, **controls})


def device_map_panel(model: str = "tiny", tokens: int = 3, timeout: float | None = None, gpus: int = 0,
                     gpu_memory: str = "24GiB") -> Panel:
    """The device-mismatch scenario by hand: a device per row, "balanced" from accelerate, skip_keys, Run.

    ``gpus`` (the GPUs dropdown): this machine's devices (0), or 1 to 8 virtual GPUs of ``gpu_memory``
    each, on any machine (``labkit.virtual_gpus``). Leave a row blank or put a row after a meta row on
    another device to see what an invalid map says.
    """
    from labkit.llm.device_maps import balanced_map, empty_model, rows as map_rows, virtual_map
    from labkit.llm.devices import available, device_pair
    from labkit.llm.memory import parse_size
    from labkit.llm.models import tiny_config

    skeleton = empty_model(tiny_config() if model == "tiny" else model)
    labels = map_rows(skeleton)
    virtual = [(f"{n} virtual GPU{'s' if n > 1 else ''}", n) for n in range(1, 9)]
    machine = w.Dropdown(options=[("this machine", 0), *virtual], value=gpus, description="GPUs", style=STYLE)
    capacity = w.Text(value=gpu_memory, description="gpu_memory", style=STYLE, layout=w.Layout(width="180px"),
                      tooltip="each virtual GPU's capacity: a tensor that would not fit raises CUDA's out-of-memory error")

    def options() -> list[str]:
        return ["", *available(machine.value or None)]

    pickers = {label: w.Dropdown(options=options(), description=label, style=STYLE) for label in labels}
    balanced = w.Button(description="balanced", icon="balance-scale",
                        tooltip="accelerate's get_balanced_memory + infer_auto_device_map over this machine's pair, "
                                "or over the virtual GPUs")
    skip = w.Checkbox(value=False, description="skip_keys", indent=False, layout=w.Layout(width="auto"),
                      tooltip="dispatch with skip_keys=model._skip_keys_device_placement (the fix)")
    steps = w.IntSlider(value=tokens, min=2, max=16, description="tokens", style=STYLE)
    runner = Runner(timeout)

    def chosen_map() -> str:
        return ",".join(p.value for p in pickers.values())

    def knobs() -> dict[str, Any]:
        chosen = {"device_map": chosen_map(), "tokens": steps.value, "model": model}
        return {**chosen, "gpus": machine.value, "gpu_memory": capacity.value} if machine.value else chosen

    def fill_balanced(_=None):
        try:
            device_map = (virtual_map(skeleton, machine.value, parse_size(capacity.value)) if machine.value
                          else balanced_map(skeleton, device_pair()))
        except BadInput as exc:
            return runner.say(str(exc), error=True)
        for label, module in labels.items():
            pickers[label].value = device_map[module]

    def on_machine(_):
        for picker in pickers.values():
            picker.options = options()
        fill_balanced()

    def on_run(_):
        chosen = knobs()
        runner.start("device-mismatch", "skip-keys" if skip.value else "broken", chosen,
                     {"gpus": machine.value, "device_map": chosen["device_map"]})

    balanced.on_click(fill_balanced)
    machine.observe(on_machine, "value")
    runner.run_button.on_click(on_run)
    fill_balanced()
    about = (f"device-mismatch by hand: this machine's devices or 1 to 8 virtual GPUs, a device for each of "
             f"{', '.join(labels)}, accelerate's balanced plan, skip_keys")
    call = f"labkit.run('device-mismatch', 'broken', knobs={knobs()!r})"
    return Panel(runner, [w.HBox([machine, capacity, balanced]), w.HBox([skip, steps, runner.buttons]), *pickers.values()],
                 about, call, {"gpus": machine, "gpu_memory": capacity, "balanced": balanced, "skip_keys": skip,
                               "tokens": steps, **pickers})
