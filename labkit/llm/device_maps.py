"""Device maps over accelerate: the rows a person edits, the balanced map accelerate infers, checks,
and what each GPU of a map holds (:func:`map_memory`).

A row is one part of a Llama-style causal LM (Qwen, Llama, Mistral share the layout): the
embeddings, each decoder layer, the final norm, the head. The rotary embedding module holds no
weights; its outputs feed every layer, so an edited map keeps it with the embeddings.

accelerate's planners take integer GPU ids, "cpu" and "disk" only, so :func:`balanced_map` plans
over two numbered devices of the budgets of the pair and then names them with the pair's devices
(the plan depends on sizes alone); :func:`virtual_map` plans over N virtual GPUs the same way. The
meta device cannot send anything back, so every row after a meta row must be meta too.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Mapping, Sequence

from labkit.llm.devices import DevicePair, check_device
from labkit.core.errors import BadInput
from labkit.llm.upstream import no_split_modules


def rows(model) -> dict[str, str]:
    """Row label -> module name, in the order the forward pass visits them."""
    base_name = getattr(model, "base_model_prefix", "model")
    base = getattr(model, base_name, None)
    parts = ("embed_tokens", "layers", "norm")
    if base is None or not all(hasattr(base, p) for p in parts) or not hasattr(model, "lm_head"):
        raise BadInput(f"{type(model).__name__} is not laid out like Llama/Qwen ({base_name}.embed_tokens, "
                       f".layers, .norm, lm_head); give a device map by module name to accelerate instead")
    out = {"embeddings": f"{base_name}.embed_tokens"}
    out.update({f"layer {i}": f"{base_name}.layers.{i}" for i in range(len(base.layers))})
    out.update({"norm": f"{base_name}.norm", "head": "lm_head"})
    return out


def empty_model(path_or_config):
    """The model's skeleton on the meta device (accelerate's ``init_empty_weights``): no memory, no weights."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

    config = path_or_config if isinstance(path_or_config, PretrainedConfig) else AutoConfig.from_pretrained(path_or_config)
    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config)


def _free_bytes(device: str) -> int:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.mem_get_info(int(device.split(":")[1]))[0]
    import psutil

    return psutil.virtual_memory().available


@contextlib.contextmanager
def quiet(name: str = "accelerate.utils.modeling"):
    """Silence a logger's warnings, e.g. accelerate's 'Device 1 is not available' when the numbers stand for the CPU or meta."""
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _planned(model, budgets: dict[int, int], names: Mapping[int, str]) -> dict[str, str]:
    """accelerate's ``get_balanced_memory`` then ``infer_auto_device_map`` over numbered budgets, named."""
    from accelerate import infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    no_split = no_split_modules(model)
    with quiet():
        balanced = get_balanced_memory(model, max_memory=budgets, no_split_module_classes=no_split)
        planned = infer_auto_device_map(model, max_memory=balanced, no_split_module_classes=no_split)
    return {module: names.get(device, device) for module, device in planned.items()}


def virtual_map(model, gpus: int, capacity: int) -> dict[str, str]:
    """accelerate's balanced plan over ``gpus`` virtual GPUs of ``capacity`` bytes each (``cuda:N`` names).

    accelerate keeps room for the largest layer on the first GPU (for weights it would offload), so
    with a small model the first GPU may be left empty: that is its plan, shown as it is.
    """
    return _planned(model, dict.fromkeys(range(gpus), capacity), {i: f"cuda:{i}" for i in range(gpus)})


def planned_bytes(model, device_map: Mapping[str, str]) -> dict[str, int]:
    """accelerate's own sizes (``compute_module_sizes``) of the modules a map puts on each device:
    what ``infer_auto_device_map`` weighs against ``max_memory``; weights and buffers only."""
    from accelerate.utils import compute_module_sizes

    sizes = compute_module_sizes(model)
    out: dict[str, int] = {}
    for module, device in device_map.items():
        out[device] = out.get(device, 0) + sizes[module]
    return out


def balanced_map(model, pair: DevicePair) -> dict[str, str]:
    """accelerate's ``get_balanced_memory`` then ``infer_auto_device_map`` over the pair."""
    budgets = {0: _free_bytes(pair.first), 1: _free_bytes(pair.first if pair.second == "meta" else pair.second)}
    device_map = _planned(model, budgets, {0: pair.first, 1: pair.second})
    if pair.second == "meta":  # rotary tables computed on meta could not reach the first device's layers
        device_map.update({m: pair.first for m in device_map if m.endswith("rotary_emb")})
    return device_map


def parse_map(spec: str | Mapping[str, str], model, gpus: int | None = None) -> dict[str, str]:
    """A map from ``"cpu,cpu,meta,..."`` (one device per row, in order) or ``{row: device}``, its
    devices among this machine's (or ``gpus`` virtual GPUs)."""
    labels = rows(model)
    if isinstance(spec, str):
        devices = [d.strip() for d in spec.split(",")]
        if len(devices) != len(labels):
            raise BadInput(f"device_map needs {len(labels)} devices, one per row ({', '.join(labels)}), "
                           f"got {len(devices)}")
        spec = dict(zip(labels, devices))
    spec = dict(spec)
    missing = [label for label in labels if not spec.get(label)]
    if missing:
        raise BadInput(f"no device for {', '.join(missing)}; every row needs one ({', '.join(labels)})")
    unknown = sorted(set(spec) - set(labels))
    if unknown:
        raise BadInput(f"unknown row {unknown[0]!r}; rows: {', '.join(labels)}")
    first_meta = None
    for label in labels:
        device = spec[label] = check_device(spec[label], gpus)
        if device == "meta":
            first_meta = first_meta or label
        elif first_meta:
            raise BadInput(f"{label} is on {device} after {first_meta} on meta; nothing comes back from meta, "
                           "so every row after a meta row must be meta")
    device_map = {labels[label]: spec[label] for label in labels}
    base = labels["embeddings"].rsplit(".", 1)[0]
    if hasattr(getattr(model, model.base_model_prefix, None), "rotary_emb"):
        device_map[f"{base}.rotary_emb"] = device_map[labels["embeddings"]]
    return device_map


def map_text(device_map: Mapping[str, str], model) -> str:
    """The map as one device per row, the form ``--set device_map=...`` takes."""
    return ",".join(device_map[module] for module in rows(model).values())


def describe(device_map: Mapping[str, str], model) -> str:
    """``"embeddings, layer 0: cpu; layer 1-3, norm, head: meta"``: runs of rows per device."""
    runs: list[tuple[str, list[str]]] = []
    for label, module in rows(model).items():
        device = device_map[module]
        if runs and runs[-1][0] == device:
            runs[-1][1].append(label)
        else:
            runs.append((device, [label]))
    return "; ".join(f"{', '.join(labels)}: {device}" for device, labels in runs)


@dataclass(frozen=True)
class MapMemory:
    """One GPU of a dispatched map: accelerate's size of the weights it put there, and what the GPU then
    held. The two differ by what accelerate's plan leaves out: activations (the logits above all), the
    KV cache, inputs, and the allocator's rounding of every tensor up to 512 bytes."""

    device: str
    planned: int  # accelerate's compute_module_sizes of the modules mapped here: what infer_auto_device_map weighs
    loaded: int  # held once the checkpoint is loaded and dispatched
    peak: int  # most held at once, loading and generate included
    kv_cache: int  # the bytes of the KV cache of the layers here, after generate


def map_memory(checkpoint: str, device_map: str = "balanced", *, gpus: int = 4, memory: str | int = "24GiB",
               prompt: Sequence[int] = tuple(range(5, 17)), new_tokens: int = 8,
               real: bool = False) -> tuple[MapMemory, ...]:
    """Plan (``"balanced"``: accelerate's plan; or one device per row), load, dispatch and ``generate``
    a checkpoint on ``gpus`` virtual GPUs of ``memory`` each, or (``real``) on this machine's GPUs, and
    read each GPU's memory through ``torch.cuda``'s own statistics: the same code for both, so a GPU
    session can set the virtual numbers against the real ones."""
    import torch
    from accelerate import dispatch_model, load_checkpoint_in_model

    from labkit.llm.upstream import cache_tensors, returned_cache, skip_keys
    from labkit.llm.virtual_gpus import virtual_gpus

    with contextlib.nullcontext() if real else virtual_gpus(gpus, memory):
        n = torch.cuda.device_count()
        model = empty_model(checkpoint)
        if device_map == "balanced":
            budgets = {i: torch.cuda.mem_get_info(i)[0] for i in range(n)}
            plan = _planned(model, budgets, {i: f"cuda:{i}" for i in range(n)})
        else:
            plan = parse_map(device_map, model, gpus=n)
        planned = planned_bytes(model, plan)
        base = []
        for i in range(n):
            torch.cuda.reset_peak_memory_stats(i)
            base.append(torch.cuda.memory_allocated(i))  # what was there before (a real GPU may hold more)
        load_checkpoint_in_model(model, checkpoint, device_map=plan)
        with quiet("accelerate.big_modeling"):
            model = dispatch_model(model, plan, skip_keys=skip_keys(model))
        loaded = [torch.cuda.memory_allocated(i) - base[i] for i in range(n)]
        ids = torch.tensor([list(prompt)], device=plan[rows(model)["embeddings"]])
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                 return_dict_in_generate=True, pad_token_id=model.config.pad_token_id)
        peak = [torch.cuda.max_memory_allocated(i) - base[i] for i in range(n)]
        cache: dict[str, int] = {}
        for keys, values in cache_tensors(returned_cache(out, model)):
            held = sum(t.numel() * t.element_size() for t in (keys, values))
            cache[str(keys.device)] = cache.get(str(keys.device), 0) + held
        del model, out
    return tuple(MapMemory(f"cuda:{i}", planned.get(f"cuda:{i}", 0), loaded[i], peak[i], cache.get(f"cuda:{i}", 0))
                 for i in range(n))
