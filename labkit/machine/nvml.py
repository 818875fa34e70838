"""GPU telemetry through NVML. The only module that imports ``pynvml``.

``pynvml`` comes from the ``nvidia-ml-py`` package (NVIDIA's own bindings; the package *named*
``pynvml`` is a deprecated wrapper). Everything else in labkit asks :func:`open_gpus` and gets
either a working reader or the reason there is none, so a machine without a GPU, a driver or the
package works the same, minus the GPU columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

try:
    import pynvml
except ImportError as exc:  # pragma: no cover - nvidia-ml-py is a declared dependency
    pynvml = None
    _IMPORT_ERROR = f"pynvml is not importable ({exc}); install it with 'pip install nvidia-ml-py'"
else:
    _IMPORT_ERROR = ""


@dataclass(frozen=True)
class GpuSample:
    index: int
    sm_percent: float
    memory_used_bytes: float
    memory_total_bytes: float
    power_w: float | None


class Gpus:
    """Open NVML handles; :meth:`sample` reads every GPU once."""

    def __init__(self, handles: list[Any], names: list[str]):
        self.handles = handles
        self.names = names

    def sample(self) -> list[GpuSample]:
        samples = []
        for index, handle in enumerate(self.handles):
            util = pynvml.nvmlDeviceGetUtilizationRates(handle)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            try:
                power = pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
            except pynvml.NVMLError:
                power = None  # not every board reports power
            samples.append(GpuSample(index, float(util.gpu), float(mem.used), float(mem.total), power))
        return samples

    def close(self) -> None:
        pynvml.nvmlShutdown()


def open_gpus() -> tuple[Gpus | None, str]:
    """Return ``(gpus, "")`` when NVML sees at least one GPU, else ``(None, reason)``."""
    if pynvml is None:
        return None, _IMPORT_ERROR
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return None, f"NVML is not available ({exc}): no NVIDIA driver on this machine"
    count = pynvml.nvmlDeviceGetCount()
    if count == 0:
        pynvml.nvmlShutdown()
        return None, "NVML found no GPU"
    handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    names = [_text(pynvml.nvmlDeviceGetName(h)) for h in handles]
    return Gpus(handles, names), ""


def describe() -> dict[str, Any]:
    """Driver version and GPU names, for ``labkit doctor``."""
    gpus, reason = open_gpus()
    if gpus is None:
        return {"available": False, "reason": reason}
    try:
        return {"available": True, "driver": _text(pynvml.nvmlSystemGetDriverVersion()), "gpus": gpus.names}
    finally:
        gpus.close()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
