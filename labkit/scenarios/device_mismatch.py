"""device-mismatch: a model split over two devices by accelerate fails on its 2nd decoding step.

Source: ``shared/seeds/001`` (Qwen3 split over GPUs with accelerate's ``init_empty_weights``,
``get_balanced_memory``, ``infer_auto_device_map``, ``load_checkpoint_and_dispatch``; fixed by
``skip_keys=model._skip_keys_device_placement``); transformers PR 23919 added that attribute, and
PR 28051 shows the error it prevents (``torch.cat`` in the cache update, ``cuda:0 and cuda:1``).

The mechanism: ``dispatch_model`` puts a hook on the top module that moves every input to the main
device and every output back to where the inputs were, the past key/values included unless their
key is skipped. So after step 1 the cache of the layers on the other device is on the main device,
and on step 2 those layers join their new keys to it: two devices in one ``torch.cat``. Each trial
checks where every layer's cache is after each step, and notes the first misplacement: a step that
then fails does so with torch's own error, and a run that completes regardless is ``wrong``.

Which versions do what: accelerate's ``send_to_device`` moves tensors, lists, tuples, dicts and any
object with ``.to()``. Older transformers handed the cache over as per-layer ``(key, value)``
tuples, which it moves; transformers 5 hands over a ``DynamicCache``, which has no ``.to()``, so the
hook leaves it alone and the bug cannot happen through ``generate`` (checked on transformers 5.23,
accelerate 1.15). To reproduce the mechanism on the versions we install, each trial passes the cache
the way older transformers did: as tuples, rebuilt into a ``DynamicCache`` inside the forward
(:func:`legacy_cache_forward`, what transformers 4.36 to 4.4x did with ``from_legacy_cache``).

``load_checkpoint_and_dispatch`` is ``load_checkpoint_in_model`` then ``dispatch_model``; the
trials call the two themselves to name the main device, which it cannot: accelerate treats ``cpu``
in a map as offload (weights kept on the CPU, run on the main device) unless the CPU *is* the main
device. With the ``meta`` device (no GPU), nothing can be read into meta, so the meta rows are read
to the CPU and dispatch puts them on meta.

With ``gpus=N`` (``--set gpus=4``) the trial runs on N virtual GPUs, on any machine
(:mod:`labkit.llm.virtual_gpus`): accelerate plans the map over them (``get_balanced_memory``,
``infer_auto_device_map`` with ``gpu_memory`` each), loads and dispatches into them, and its hooks and
transformers' forward move and join the tensors as on N real GPUs; the failure is the report's, a
``torch.cat`` of ``cuda:i`` and ``cuda:j`` in the cache update. Real: every line of accelerate and
transformers, the hooks, the cache, which tensors meet where, the values (the tokens are checked
against a one-device CPU run). The stand-in: the device check that raises torch's message (CUDA's own
is in its kernels, which a CPU build lacks; the message says so) and the memory count, whose peak per
device is reported next to accelerate's own sizes of the weights the map puts there. No time per step
is reported on virtual GPUs: every op ran on the CPU.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

from labkit.core.errors import BadInput, WrongResult
from labkit.core.harness import metrics_on_failure, same_as_reference
from labkit.core.hazard import EXPOSED, NOT_EXPOSED, UNKNOWN, Hazard
from labkit.core.scenario import Knob, Lesson, Scenario, register
from labkit.llm import upstream
from labkit.llm.decoding import STEP_METRICS
from labkit.llm.devices import PEAK, STAND_IN, checked_pair, devices_knob, gpu_knobs
from labkit.llm.models import TINY, checked_model


def _model_path(path: str) -> str:
    """A checkpoint folder (accelerate loads the checkpoint from its files), or the tiny model."""
    if checked_model(path) != TINY and not Path(path).expanduser().is_dir():
        raise BadInput(f"model {path!r} is not a local folder; give 'tiny' or a saved model's folder")
    return path


def _check(knobs: dict[str, Any]) -> None:
    """The devices, and an edited map against the model's rows, are checked before any trial starts
    (among the virtual GPUs with gpus=N)."""
    if knobs["devices"] != "auto":  # auto always fits, and asking this machine's CUDA here is not wanted
        checked_pair(knobs)
    if knobs["device_map"] != "balanced":
        from labkit.llm.device_maps import empty_model, parse_map
        from labkit.llm.models import tiny_config

        parse_map(knobs["device_map"], empty_model(tiny_config() if knobs["model"] == TINY else knobs["model"]),
                  gpus=knobs["gpus"] or None)


def _hazard(facts: Mapping[str, Any], workers: int) -> Hazard:
    """Exposed where doctor's probe saw accelerate's hook move the cache the installed transformers hands over."""
    fix = "dispatch with skip_keys=model._skip_keys_device_placement, under the cache argument's current name"
    moved = facts.get("dispatch_moves_cache")
    if moved is None:
        return Hazard("device-mismatch", UNKNOWN, "accelerate or transformers could not be asked", fix)
    pair = f"transformers {facts.get('version:transformers')}, accelerate {facts.get('version:accelerate')}"
    if moved:
        return Hazard("device-mismatch", EXPOSED, f"{pair}: accelerate's hook moves the cache generate hands over", fix)
    return Hazard("device-mismatch", NOT_EXPOSED, f"{pair}: the hook leaves a DynamicCache where it is (code that "
                  "hands the cache over as tuples is still exposed)", fix)


mismatch = register(
    Scenario(
        name="device-mismatch",
        summary="a model split over two devices by accelerate fails on step 2: the hook moved the KV cache",
        source="seed 001 (Qwen3 over GPUs with accelerate); transformers PRs 23919, 28051",
        notebook="02_device_mismatches",
        section=1,
        details="a model split over two devices by accelerate (`init_empty_weights`, balanced memory, inferred map, load "
                "and dispatch) fails on the 2nd decoding step: the top hook moved the KV cache to the main device",
        lessons=(
            Lesson("split model, moved cache", "`Expected all tensors to be on the same device` on the **2nd** step",
                   "the dispatch hook moves the KV cache to the main device",
                   "`skip_keys=model._skip_keys_device_placement`, with the cache argument's current name"),
        ),
        confirmed_on={"torch": ("2.11", "2.13", "2.14", "2.15"), "transformers": ("5.17", "5.23", "5.24"), "accelerate": ("1.15",)},
        confirmed_setup="the cache passed as tuples, as transformers < 4.36 did; cpu + meta, and cpu + cuda:0 on an H100",
        knobs=(
            devices_knob("'auto' or 'A,B': A is the main device (embeddings first), B the other",
                         lambda first: first != "meta", "meta cannot be the first (main) device: nothing comes "
                         "back from meta; put it second"),
            Knob("device_map", "balanced", "'balanced' (accelerate plans it) or one device per row: "
                 "embeddings, each layer, norm, head"),
            Knob("tokens", 6, "decoding steps; the failure is on the 2nd", low=2, high=64),
            Knob("model", TINY, "'tiny' or a local checkpoint folder laid out like Llama/Qwen", validate=_model_path),
            *gpu_knobs(),
        ),
        metrics=(*STEP_METRICS, PEAK),
        main_fix="skip-keys",
        timeout=120.0,
        quick={"tokens": 3},
        check=_check,
        hazard=_hazard,
    )
)


def legacy_cache_forward(model) -> None:
    """Make ``model`` take and return its cache as per-layer ``(key, value)`` tuples.

    That is the form transformers used before its Cache classes, and the one accelerate's hooks
    move. Set on the instance before dispatch, so accelerate's hook wraps it. The cache keeps the
    keyword the model's own forward uses (:func:`~labkit.llm.upstream.cache_argument`): that is the key
    ``skip_keys`` names, so with it the fix holds, and with a stale literal it would not.
    """
    import functools

    from transformers import DynamicCache

    inner, name = model.forward, upstream.cache_argument(model)

    @functools.wraps(inner)
    def forward(*args, **kwargs):
        if isinstance(kwargs.get(name), tuple):
            kwargs[name] = DynamicCache(kwargs[name])
        out = inner(*args, **kwargs)
        out[name] = tuple(upstream.cache_tensors(upstream.returned_cache(out, name)))
        return out

    model.forward = forward


def dispatched(checkpoint: str, device_map_spec: str, pair, skip_keys: bool, gpus=None,
               sizes: dict[str, int] | None = None):
    """The accelerate flow of seed 001: empty weights, a planned map, load, dispatch. ``gpus``: the open
    virtual GPUs, over which a balanced map is planned; ``sizes`` is filled, before loading, with
    accelerate's own size of the weights the map puts on each device."""
    from accelerate import dispatch_model, load_checkpoint_in_model

    from labkit.llm.device_maps import quiet, balanced_map, empty_model, parse_map, planned_bytes, virtual_map

    model = empty_model(checkpoint)
    if device_map_spec != "balanced":
        device_map = parse_map(device_map_spec, model, gpus=gpus.n if gpus else None)
    else:
        device_map = virtual_map(model, gpus.n, gpus.capacity) if gpus else balanced_map(model, pair)
    main = device_map[next(m for m in device_map if m.endswith("embed_tokens"))]
    if sizes is not None:
        sizes.update(planned_bytes(model, device_map))
    legacy_cache_forward(model)
    readable = {m: ("cpu" if d == "meta" else d) for m, d in device_map.items()}  # nothing can be read into meta
    load_checkpoint_in_model(model, checkpoint, device_map=readable)
    with quiet("accelerate.big_modeling"):  # "offloaded to the cpu": not so when the CPU is the main device
        model = dispatch_model(model, device_map, main_device=main,
                               skip_keys=upstream.skip_keys(model) if skip_keys else None)
    if "meta" in device_map.values():
        upstream.top_hook(model).io_same_device = False  # the logits stay on meta: there is nothing to bring back
    return model, device_map, main


def where_the_cache_goes(model, device_map: dict[str, str], main: str, prompt) -> dict[str, list[str]]:
    """Run step 1, then ask the top hook what it would hand to step 2: each layer's cache device.

    The mechanism without the failure: the hook's move is computed, not run as a forward, so a
    move that fails (nothing can be copied out of meta) says so instead of raising.
    """
    import torch

    name = upstream.cache_argument(model)
    layers = [m for m in device_map if ".layers." in m]
    with torch.no_grad():
        past = upstream.returned_cache(model(input_ids=prompt.to(main), use_cache=True), name)
    where = {"map says": [device_map[m] for m in layers],
             "cache after step 1": [str(k.device) for k, _ in upstream.cache_tensors(past)]}
    try:
        _, kwargs = upstream.top_hook(model).pre_forward(model, input_ids=prompt[:, -1:].to(main), **{name: past})
        where["handed to step 2"] = [str(k.device) for k, _ in upstream.cache_tensors(kwargs[name])]
    except Exception as exc:  # noqa: BLE001 - the failed move is the answer
        where["handed to step 2"] = [f"(move failed: {type(exc).__name__})"] * len(layers)
    return where


def _execution_device(device: str, main: str) -> str:
    """Where a row runs: its own device, except CPU rows when the main device is not the CPU (offload)."""
    return main if device == "cpu" and main != "cpu" else device


def check_cache_placement(past, device_map: dict[str, str], main: str) -> None:
    """Raise WrongResult unless every layer's cached keys and values sit where the map runs that layer."""
    layers = sorted((m for m in device_map if ".layers." in m), key=lambda m: int(m.rsplit(".", 1)[1]))
    for i, (module, (keys, values)) in enumerate(zip(layers, upstream.cache_tensors(past))):
        want = _execution_device(device_map[module], main)
        if str(keys.device) != want or str(values.device) != want:
            raise WrongResult(f"layer {i}'s cache is on {keys.device}, but the map runs layer {i} on {want}")


def _devices_note(knobs: dict[str, Any], pair, gpus) -> str:
    if gpus is not None:
        from labkit.llm.memory import size_text

        return (f"{gpus.n} virtual GPUs of {size_text(gpus.capacity)} each (cuda:0..{gpus.n - 1}: labkit's stand-in for "
                "CUDA's device check and memory; accelerate's and transformers' own code)")
    return f"{pair} ({pair.why})" if knobs["device_map"] == "balanced" else "a map given row by row"


def memory_notes(gpus, planned: dict[str, int]) -> dict[str, Any]:
    """Each virtual GPU's peak (a metric each) next to accelerate's own size of the weights the map put there."""
    from labkit.llm.memory import size_text

    memory = "; ".join(f"{m.device} peak {size_text(m.peak)} (accelerate's size of its weights: "
                       f"{size_text(planned.get(m.device, 0))})" for m in gpus.memory())
    return {**gpus.peaks(), "memory": memory}


@contextlib.contextmanager
def _noting_memory(gpus, notes: dict[str, Any], planned: dict[str, int]) -> Iterator[None]:
    """On virtual GPUs, each device's peak joins the notes when the block ends, failed or not."""
    try:
        yield
    finally:
        if gpus is not None:
            notes.update(memory_notes(gpus, planned))


def _trial(knobs: dict[str, Any], skip_keys: bool) -> dict[str, Any]:
    import torch

    from labkit.llm.decoding import corpus_prompt, decode_by_hand, measured_decode
    from labkit.llm.device_maps import describe
    from labkit.llm.models import save_tiny
    from labkit.llm.virtual_gpus import trial_gpus

    steps = knobs["tokens"]
    prompt, feed = corpus_prompt(steps=steps)
    with tempfile.TemporaryDirectory(prefix="labkit-checkpoint-") as tmp, trial_gpus(knobs) as gpus:
        pair = checked_pair(knobs)
        checkpoint = str(save_tiny(tmp)) if knobs["model"] == TINY else knobs["model"]
        notes: dict[str, Any] = {"devices": _devices_note(knobs, pair, gpus)}
        planned: dict[str, int] = {}
        with metrics_on_failure(notes), _noting_memory(gpus, notes, planned):
            model, device_map, main = dispatched(checkpoint, knobs["device_map"], pair, skip_keys, gpus, planned)
            placement_only = "meta" in device_map.values()
            notes["map"] = describe(device_map, model)
            notes["check"] = ("placement: every cache tensor where the map runs its layer (meta holds no numbers)"
                              if placement_only else "placement, and the tokens against a one-device run")
            if gpus is not None:
                notes["check"] += (f"; a device error is raised by {STAND_IN}; which tensors meet where is "
                                   "accelerate's and transformers' own doing")

            def watch(step: int, past) -> None:
                """Note the first misplaced cache, and go on: the next step fails as it would unwatched."""
                if "misplaced" not in notes:
                    try:
                        check_cache_placement(past, device_map, main)
                    except WrongResult as exc:
                        notes["misplaced"] = f"after step {step}, {exc}"

            tokens, metrics = measured_decode(model, torch.tensor([prompt], device=main), steps, feed, watch)
        if gpus is not None:
            del metrics["ms_per_step"]  # every op ran on the CPU: no GPU's time
        metrics = {**metrics, **notes}
        if "misplaced" in notes:  # every step ran although a cache was in the wrong place
            raise WrongResult(notes["misplaced"], metrics)
        if not placement_only:
            from transformers import AutoModelForCausalLM

            reference = decode_by_hand(AutoModelForCausalLM.from_pretrained(checkpoint).eval(),
                                       torch.tensor([prompt]), steps)
            same_as_reference(tokens, reference, metrics, how="split run", reference_how="one-device run")
    return metrics


@mismatch.variant("broken", broken=True)
def broken(**knobs: Any) -> dict[str, Any]:
    """Dispatch without skip_keys: the top hook moves the KV cache to the main device every step."""
    return _trial(knobs, skip_keys=False)


@mismatch.variant("skip-keys")
def skip_keys(**knobs: Any) -> dict[str, Any]:
    """Dispatch with skip_keys=model._skip_keys_device_placement: each layer's cache stays where it was made."""
    return _trial(knobs, skip_keys=True)
