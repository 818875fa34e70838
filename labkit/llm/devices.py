"""Devices this machine really has (or N virtual GPUs), the pair a scenario splits over, a placement check.

The device scenarios need two devices. They take what the machine has and say why
(:func:`device_pair`): two GPUs, or a GPU and the CPU, or, where there is no GPU, the CPU and the
``meta`` device, which exists on every PyTorch build. A meta tensor has a shape and a device but
no data, so a run over ``cpu + meta`` checks where every tensor lives, not what it computes.

With ``gpus=N`` (:func:`gpu_knobs`) a scenario runs on N virtual GPUs instead, on any machine
(:mod:`labkit.llm.virtual_gpus`): the same choices are made as on a box with N real GPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from labkit.core.errors import BadInput
from labkit.core.scenario import Knob, Metric

# Said with every device error on virtual GPUs, wherever it is shown: the check is not CUDA's.
STAND_IN = "labkit's virtual GPUs, a stand-in for CUDA's own device check"


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def available(gpus: int | None = None) -> list[str]:
    """Devices a tensor can be put on: ``cpu``, each ``cuda:N`` (this machine's, or ``gpus`` virtual
    ones), and ``meta`` (every build)."""
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count()
    return ["cpu", *(f"cuda:{i}" for i in range(gpus)), "meta"]


def _where(gpus: int | None) -> str:
    return f"with {gpus} virtual GPUs" if gpus else "on this machine"


def check_device(name: str, gpus: int | None = None) -> str:
    """Return ``name`` normalised (``cuda`` -> ``cuda:0``) if it exists here (or among ``gpus``
    virtual GPUs), else :class:`BadInput`."""
    import torch

    allowed = ", ".join(available(gpus))
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise BadInput(f"{name!r} is not a device name; allowed here: {allowed}") from None
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    text = str(device)
    if text not in available(gpus):
        raise BadInput(f"device {text!r} does not exist {_where(gpus)}; allowed here: {allowed}")
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


def device_pair(text: str = "auto", gpus: int | None = None) -> DevicePair:
    """``"auto"``: the best pair this machine has (or ``gpus`` virtual GPUs give); or ``"A,B"``:
    two devices that exist there."""
    if text == "auto":
        if gpus is None:
            import torch

            count, virtual = torch.cuda.device_count(), ""
        else:
            plural = "s" if gpus > 1 else ""
            count, virtual = gpus, f"; {gpus} virtual GPU{plural}, labkit's stand-in for CUDA (labkit.virtual_gpus)"
        if count >= 2:
            return DevicePair("cuda:0", "cuda:1", "two GPUs: the pair of the reports" + virtual)
        if count == 1:
            return DevicePair("cpu", "cuda:0", "one GPU: the CPU is the other device" + virtual)
        return DevicePair("cpu", "meta", "no GPU: the meta device, which every PyTorch build has, is the other "
                                         "device; it holds no data, so this run checks placement, not numbers")
    names = [n.strip() for n in str(text).split(",")]
    allowed = ", ".join(available(gpus))
    if len(names) != 2 or not all(names):
        raise BadInput(f"devices must be 'auto' or two devices 'A,B'; got {text!r}; allowed here: {allowed}")
    first, second = (check_device(n, gpus) for n in names)
    if first == second:
        raise BadInput(f"devices must be two different devices, got {first!r} twice; allowed here: {allowed}")
    return DevicePair(first, second, "chosen by the user" + (f" among {gpus} virtual GPUs" if gpus else ""))


def devices_knob(help: str, first_ok: Callable[[str], bool], rule: str) -> Knob:
    """The ``devices`` knob of a scenario that runs on two devices: ``"auto"``, or ``"A,B"``
    normalised, with A obeying ``rule`` (the scenario's own constraint on the first device).

    Alone it checks the form; whether the devices exist depends on the ``gpus`` knob too, so the
    scenario's own check calls :func:`checked_pair`."""

    def check(text: str) -> str:
        if text == "auto":
            return text
        names = [n.strip() for n in str(text).split(",")]
        if len(names) != 2 or not all(names):
            raise BadInput(f"devices must be 'auto' or two devices 'A,B'; got {text!r}")
        first = names[0] if names[0] != "cuda" else "cuda:0"
        if not first_ok(first):
            raise BadInput(f"{rule}; got {first!r}")
        return ",".join(names)

    return Knob("devices", "auto", help, validate=check)


def checked_pair(knobs: Mapping[str, Any]) -> DevicePair:
    """The pair the ``devices`` knob names, among this machine's devices or the ``gpus`` virtual ones."""
    return device_pair(knobs["devices"], knobs.get("gpus") or None)


PEAK = Metric("peak_gpu_mib", "MiB", False, "with gpus=N: the fullest virtual GPU's peak (each one's: peak_mib_cudaK)")


def gpu_knobs() -> tuple[Knob, Knob]:
    """``gpus`` and ``gpu_memory``: N virtual GPUs on any machine (a real GPU present or not)."""
    from labkit.llm.memory import parse_size

    def memory(text: str) -> str:
        parse_size(text)
        return text

    return (
        Knob("gpus", 0, "N virtual GPUs (cuda:0..N-1) on any machine, even one with real GPUs: accelerate's "
             "and transformers' own code runs on them; 0: this machine's own devices (the devices knob)",
             low=0, high=8),
        Knob("gpu_memory", "24GiB", "each virtual GPU's capacity (with gpus=N): a tensor that would not fit "
             "raises CUDA's out-of-memory error on that device", validate=memory),
    )


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
