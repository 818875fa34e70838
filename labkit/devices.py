"""Devices this machine really has, and a clear error for one it does not."""

from __future__ import annotations

import os

from .errors import BadInput


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
