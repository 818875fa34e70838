"""Device maps over accelerate: the rows a person edits, the balanced map accelerate infers, checks.

A row is one part of a Llama-style causal LM (Qwen, Llama, Mistral share the layout): the
embeddings, each decoder layer, the final norm, the head. The rotary embedding module holds no
weights; its outputs feed every layer, so an edited map keeps it with the embeddings.

accelerate's planners take integer GPU ids, "cpu" and "disk" only, so :func:`balanced_map` plans
over two numbered devices of the budgets of the pair and then names them with the pair's devices
(the plan depends on sizes alone). The meta device cannot send anything back, so every row after a
meta row must be meta too.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Mapping

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


def balanced_map(model, pair: DevicePair) -> dict[str, str]:
    """accelerate's ``get_balanced_memory`` then ``infer_auto_device_map`` over the pair."""
    from accelerate import infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    budgets = {0: _free_bytes(pair.first), 1: _free_bytes(pair.first if pair.second == "meta" else pair.second)}
    no_split = no_split_modules(model)
    with quiet():
        balanced = get_balanced_memory(model, max_memory=budgets, no_split_module_classes=no_split)
        planned = infer_auto_device_map(model, max_memory=balanced, no_split_module_classes=no_split)
    names = {0: pair.first, 1: pair.second}
    device_map = {module: names.get(device, device) for module, device in planned.items()}
    if pair.second == "meta":  # rotary tables computed on meta could not reach the first device's layers
        device_map.update({m: pair.first for m in device_map if m.endswith("rotary_emb")})
    return device_map


def parse_map(spec: str | Mapping[str, str], model) -> dict[str, str]:
    """A map from ``"cpu,cpu,meta,..."`` (one device per row, in order) or ``{row: device}``."""
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
        device = spec[label] = check_device(spec[label])
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
