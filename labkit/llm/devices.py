"""Devices this machine really has, the pair of devices a scenario splits over, and a placement check.

The device scenarios need two devices. They take what the machine has and say why
(:func:`device_pair`): two GPUs, or a GPU and the CPU, or, where there is no GPU, the CPU and the
``meta`` device, which exists on every PyTorch build. A meta tensor has a shape and a device but
no data, so a run over ``cpu + meta`` checks where every tensor lives, not what it computes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from labkit.core.errors import BadInput
from labkit.core.scenario import Knob


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def available() -> list[str]:
    """Devices a tensor can be put on here: ``cpu``, each ``cuda:N``, and ``meta`` (every build)."""
    import torch

    return ["cpu", *(f"cuda:{i}" for i in range(torch.cuda.device_count())), "meta"]


def check_device(name: str) -> str:
    """Return ``name`` normalised (``cuda`` -> ``cuda:0``) if it exists here, else :class:`BadInput`."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise BadInput(f"{name!r} is not a device name; allowed here: {', '.join(available())}") from None
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    text = str(device)
    if text not in available():
        raise BadInput(f"device {text!r} does not exist on this machine; allowed here: {', '.join(available())}")
    return text


@dataclass(frozen=True)
class DevicePair:
    """Two devices and why they were chosen. ``first`` is where work starts (a new thread's
    default device, a split model's main device); ``second`` is the other one."""

    first: str
    second: str
    why: str

    @property
    def placement_only(self) -> bool:
        """True when one side is ``meta``: nothing is computed there, only placed."""
        return "meta" in (self.first, self.second)

    def __str__(self) -> str:
        return f"{self.first} + {self.second}"


def device_pair(text: str = "auto") -> DevicePair:
    """``"auto"``: the best pair this machine has; or ``"A,B"``: two devices that exist here."""
    if text == "auto":
        import torch

        gpus = torch.cuda.device_count()
        if gpus >= 2:
            return DevicePair("cuda:0", "cuda:1", "two GPUs: the pair of the reports")
        if gpus == 1:
            return DevicePair("cpu", "cuda:0", "one GPU: the CPU is the other device")
        return DevicePair("cpu", "meta", "no GPU: the meta device, which every PyTorch build has, is the other "
                                         "device; it holds no data, so this run checks placement, not numbers")
    names = [n.strip() for n in str(text).split(",")]
    if len(names) != 2 or not all(names):
        raise BadInput(f"devices must be 'auto' or two devices 'A,B'; got {text!r}; allowed here: {', '.join(available())}")
    first, second = (check_device(n) for n in names)
    if first == second:
        raise BadInput(f"devices must be two different devices, got {first!r} twice; allowed here: {', '.join(available())}")
    return DevicePair(first, second, "chosen by the user")


def devices_knob(help: str, first_ok: Callable[[str], bool], rule: str) -> Knob:
    """The ``devices`` knob of a scenario that runs on two devices: ``"auto"``, or ``"A,B"``
    normalised, with A obeying ``rule`` (the scenario's own constraint on the first device)."""

    def check(text: str) -> str:
        if text == "auto":
            return text
        pair = device_pair(text)
        if not first_ok(pair.first):
            raise BadInput(f"{rule}; got {pair.first!r}")
        return f"{pair.first},{pair.second}"

    return Knob("devices", "auto", help, validate=check)


class DeviceMismatch(RuntimeError):
    """Tensors about to be combined live on different devices (labkit's check, before torch's)."""


def check_same_device(**tensors: Any) -> str | None:
    """Return the device all the named tensors share, or raise :class:`DeviceMismatch` naming each.

    torch's own error names two devices but no tensor, and some meta kernels (the embedding's)
    check no devices at all; this names the culprits before anything is combined. ``None`` values
    and non-tensors are ignored.
    """
    import torch

    where: dict[str, list[str]] = {}
    for name, value in tensors.items():
        if isinstance(value, torch.Tensor):
            where.setdefault(str(value.device), []).append(name)
    if len(where) > 1:
        found = "; ".join(f"{', '.join(names)} on {device}" for device, names in where.items())
        raise DeviceMismatch(f"expected all tensors on one device, found {found}")
    return next(iter(where), None)


def placement_check(model) -> list:
    """Check every module's inputs against its own weights before it runs (forward pre-hooks).

    Returns the hook handles (``for h in handles: h.remove()``). Meant for models placed with
    ``.to()`` or a default device; accelerate's dispatch hooks move inputs *after* these run.
    """
    import torch

    def hook(module, args, kwargs, *, prefix: str):
        named = {f"{prefix}.{n}": t for n, t in module.named_parameters(recurse=False)}
        named.update({f"{prefix} input {i}": a for i, a in enumerate(args) if isinstance(a, torch.Tensor)})
        named.update({f"{prefix} input {k}": v for k, v in kwargs.items() if isinstance(v, torch.Tensor)})
        check_same_device(**named)

    handles = []
    for name, module in model.named_modules():
        if next(module.parameters(recurse=False), None) is not None:
            handles.append(module.register_forward_pre_hook(
                lambda m, a, k, prefix=name or "model": hook(m, a, k, prefix=prefix), with_kwargs=True))
    return handles
