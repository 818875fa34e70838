"""thread-device: a model made under a device context in one thread, used from another.

Source: ``shared/seeds/004`` (Outlines: a model made with ``device="cuda"`` in the main thread and a
generator run in another failed with ``Expected all tensors to be on the same device, but found at
least two devices, cuda:0 and cuda:1``; dottxt-ai/outlines issue 679). In PyTorch the default
device (``torch.set_default_device``, the ``with torch.device(...)`` context) and the current CUDA
device (``torch.cuda.set_device``) are all per thread: a new thread starts on the CPU default and
on ``cuda:0``, whatever the thread that started it had set.

Each trial makes the model (and the prompt, in the main thread) under the context, then decodes in
a worker thread whose new tensors follow that thread's own default. On two GPUs the context is
``torch.cuda.set_device(1)`` and ``"cuda"`` means ``cuda:1`` in the main thread and ``cuda:0`` in
the worker: the report's own error. With one GPU the model goes to ``cuda:0`` under
``set_default_device`` and the worker's ids stay on the CPU. With no GPU the model goes to ``meta``;
the embedding's meta kernel checks no devices (CPU ids in, meta out, and all after it is meta), so
:func:`labkit.llm.devices.placement_check` (forward pre-hooks) is what raises there, naming the
tensors: a placement check, labelled as such in each result.

With ``gpus=N`` (``--set gpus=2``) the trial runs on N virtual GPUs on any machine
(:mod:`labkit.llm.virtual_gpus`), and makes the choices it makes on N real ones: with two, the
context is ``torch.cuda.set_device(1)`` and the worker's ``"cuda"`` is ``cuda:0``, the report's own
``cuda:0 and cuda:1``. Real: the model, transformers' forward, the threads, and torch's own per-thread
default device (``set_default_device``, ``with torch.device``). Stand-ins: the current CUDA device
of each thread (``torch.cuda.set_device`` and ``current_device``, kept per thread as the CUDA runtime
keeps it: a new thread starts on device 0), the device check that raises torch's message (the
message says so), and the memory count. No time per step is reported on virtual GPUs.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping

from labkit.core.errors import BadInput
from labkit.core.harness import metrics_on_failure, same_as_reference
from labkit.core.hazard import EXPOSED, NOT_EXPOSED, Hazard
from labkit.core.scenario import Knob, Lesson, Scenario, register
from labkit.llm.decoding import STEP_METRICS
from labkit.llm.devices import PEAK, STAND_IN, checked_pair, devices_knob, gpu_knobs
from labkit.llm.models import model_knobs

CONTEXTS = ("auto", "set_default_device", "torch.device", "cuda.set_device")


def _context(pair, how: str) -> str:
    """The context a trial uses: ``auto`` resolved for the pair, and checked against it."""
    if how == "auto":
        how = "cuda.set_device" if pair.first.startswith("cuda") else "set_default_device"
    if how == "cuda.set_device" and (pair.first, pair.second) != ("cuda:0", "cuda:1"):
        raise BadInput(f"context cuda.set_device needs devices cuda:0,cuda:1 (two GPUs); got {pair.first},{pair.second}")
    return how


def _check(knobs: dict[str, Any]) -> None:
    """A context that cannot work with the pair is refused before any trial starts."""
    if knobs["context"] != "auto" or knobs["devices"] != "auto":  # auto with auto always fits
        _context(checked_pair(knobs), knobs["context"])


def _hazard(facts: Mapping[str, Any], workers: int) -> Hazard:
    """Exposed where several GPUs are visible and nothing narrows them: a new thread's "cuda" is cuda:0."""
    fix = "name the device index everywhere (\"cuda:1\"), or make and use tensors in one thread"
    gpus, visible = facts.get("cuda_devices") or [], facts.get("CUDA_VISIBLE_DEVICES", "(unset)")
    if len(gpus) > 1 and visible == "(unset)":
        return Hazard("thread-device", EXPOSED, f"{len(gpus)} GPUs and CUDA_VISIBLE_DEVICES unset: a bare \"cuda\" is "
                      "cuda:0 in a new thread, whatever the main thread set", fix)
    return Hazard("thread-device", NOT_EXPOSED, f"{len(gpus)} GPU(s) visible to torch (CUDA_VISIBLE_DEVICES={visible})", fix)


threaded = register(
    Scenario(
        name="thread-device",
        summary="the default/current device is per thread: a model made under a context, used from a worker",
        source="seed 004 (Outlines, model made in one thread, generation in another): dottxt-ai/outlines issue 679",
        notebook="02_device_mismatches",
        section=2,
        details="the default/current device is per thread: a model made under a device context in the main thread, "
                "used from a worker",
        your_model="your model is made under the main thread's device context and decoded in a worker. On `meta` (no "
                   "GPU) only a model whose forward never reads a value runs: the Llama family does, GPT-2 does not.",
        lessons=(
            Lesson("device per thread", "`Expected all tensors to be on the same device`, from a worker thread",
                   "the default device and current CUDA device belong to a thread",
                   "name the device index everywhere; make and use tensors in one thread"),
        ),
        confirmed_on={"torch": ("2.11", "2.13", "2.14", "2.15"), "transformers": ("5.17", "5.23", "5.24")},
        confirmed_setup="2-core x86-64 (cpu + meta); an H100 (cpu + cuda:0)",
        knobs=(
            devices_knob("'auto' or 'A,B': A is where a new thread's tensors land, B the context's device",
                         lambda first: first in ("cpu", "cuda:0"), "the first device is where a new thread's "
                         "tensors land: cpu (default device) or cuda:0 (current CUDA device)"),
            Knob("context", "auto", "how the main thread sets its device", choices=CONTEXTS),
            Knob("tokens", 6, "decoding steps", low=1, high=64),
            *model_knobs("made under the main thread's context, decoded in a worker"),
            *gpu_knobs(),
        ),
        metrics=(*STEP_METRICS, PEAK),
        main_fix="explicit-device",
        timeout=90.0,
        quick={"tokens": 3},
        check=_check,
        hazard=_hazard,
    )
)


def device_context(how: str, device: str):
    """Enter ``how`` for ``device`` in the calling thread; returns the device name to use unqualified."""
    import torch

    if how == "set_default_device":
        torch.set_default_device(device)
        return contextlib.nullcontext()
    if how == "torch.device":
        return torch.device(device)
    torch.cuda.set_device(device)
    return contextlib.nullcontext()


class _Setup(contextlib.ExitStack):
    """What every variant of one trial shares: the devices (virtual GPUs open while it is entered, with
    gpus=N), the context, the prompt, the notes."""

    def __init__(self, knobs: dict[str, Any]):
        super().__init__()
        self.knobs = knobs

    def __enter__(self) -> "_Setup":
        from labkit.llm.virtual_gpus import trial_gpus

        super().__enter__()
        knobs = self.knobs
        self.gpus = self.enter_context(trial_gpus(knobs))
        try:
            self._prepare(knobs)
        except BaseException:
            self.close()  # the virtual GPUs, if open, close with it
            raise
        return self

    def _prepare(self, knobs: dict[str, Any]) -> None:
        from labkit.llm.decoding import corpus_prompt
        from labkit.llm.models import prompt_ids

        self.pair = checked_pair(knobs)
        self.how = _context(self.pair, knobs["context"])
        self.steps = knobs["tokens"]
        self.model, self.trust = knobs["model"], knobs["trust_remote_code"]
        self.prompt, self.feed = corpus_prompt(steps=self.steps, ids=prompt_ids(self.model, trust_remote_code=self.trust))
        # "cuda" unqualified follows the thread's current device; elsewhere the context's default does
        self.unqualified = "cuda" if self.how == "cuda.set_device" else None
        self.notes = {
            "devices": f"{self.pair} ({self.pair.why})",
            "context": self.how,
            "check": "placement: labkit's pre-hooks, since the embedding's meta kernel checks no devices"
            if self.pair.placement_only else "torch's own device checks, and the tokens against a one-thread CPU run",
        }
        if self.gpus is not None:
            self.notes["check"] = (f"a device error is raised by {STAND_IN}; the current CUDA device per thread is "
                                   "labkit's too (as CUDA keeps it: a new thread starts on 0); the tokens against a "
                                   "one-thread CPU run")

    def new_model(self):
        """The model, made where this thread's default device is (its weights copied in)."""
        from labkit.llm.models import fresh

        return fresh(self.model, trust_remote_code=self.trust)

    def under_context(self):
        """Model and prompt made under the context, in the calling thread: what the outlines report's main thread did."""
        import torch

        with device_context(self.how, self.pair.second):
            model = self.new_model().to(self.unqualified) if self.unqualified else self.new_model()
            return model, torch.tensor([self.prompt], device=self.unqualified)

    def decode_in_worker(self, work) -> dict[str, Any]:
        """Run ``work() -> (model, ids)`` and the decode in one worker thread; check the tokens."""
        import torch

        from labkit.llm.decoding import decode_by_hand

        def in_worker():
            model, ids = work()
            return _decode(model, ids, self.steps, self.feed, self.pair.placement_only)

        with metrics_on_failure(self.notes), ThreadPoolExecutor(1, thread_name_prefix="generator") as pool:
            tokens, metrics = pool.submit(in_worker).result()
        if self.gpus is not None:
            del metrics["ms_per_step"]  # every op ran on the CPU: no GPU's time
            metrics.update(self.gpus.peaks())
        metrics = {**metrics, **self.notes}
        if not self.pair.placement_only:
            # named "cpu": this (main) thread's default device may be the context's by now
            reference = decode_by_hand(self.new_model().to("cpu"), torch.tensor([self.prompt], device="cpu"), self.steps)
            same_as_reference(tokens, reference, metrics, how="worker", reference_how="one-thread CPU run")
        return metrics


def _decode(model, prompt_ids, steps: int, feed, placement_only: bool) -> tuple[list[int], dict[str, float]]:
    """Decode with the placement check on where torch checks nothing (meta)."""
    from labkit.llm.decoding import measured_decode
    from labkit.llm.devices import placement_check

    handles = placement_check(model) if placement_only else []
    try:
        return measured_decode(model, prompt_ids, steps, feed)
    finally:
        for h in handles:
            h.remove()


@threaded.variant("broken", broken=True)
def broken(**knobs: Any) -> dict[str, Any]:
    """Model made under the main thread's device context; the worker's ids land on its own default device."""
    import torch

    with _Setup(knobs) as setup:
        with metrics_on_failure(setup.notes):
            model, _ = setup.under_context()  # in this, the main thread
        # in the worker: this thread's own default device, not the main thread's
        return setup.decode_in_worker(lambda: (model, torch.tensor([setup.prompt], device=setup.unqualified)))


@threaded.variant("explicit-device")
def explicit_device(**knobs: Any) -> dict[str, Any]:
    """Name the device index everywhere (model.to("cuda:1"), tensors with device="cuda:1"): no context needed."""
    import torch

    with _Setup(knobs) as setup:
        where = setup.pair.second
        return setup.decode_in_worker(lambda: (setup.new_model().to(where), torch.tensor([setup.prompt], device=where)))


@threaded.variant("same-thread")
def same_thread(**knobs: Any) -> dict[str, Any]:
    """Enter the context, make the model and its inputs, and generate, all in the worker thread."""
    with _Setup(knobs) as setup:
        return setup.decode_in_worker(setup.under_context)
