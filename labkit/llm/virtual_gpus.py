"""Virtual GPUs: ``cuda:0`` ... ``cuda:N-1`` on any machine, on which accelerate's and transformers' own code run.

Why: two seed failures need several GPUs (seed 001: a device map's KV cache moved to the main GPU;
seed 004: a worker thread on the wrong GPU), and so does the question "will my map work on four
GPUs, and how full is each?", which a laptop cannot answer with real CUDA. A CPU build of torch
cannot make a CUDA tensor, so inside :func:`virtual_gpus` labkit stands in for three things, and
for nothing else:

* **The tensor.** A :class:`VirtualTensor` reports ``cuda:k`` and keeps its values in an ordinary
  CPU tensor. Each torch call on it is caught in ``__torch_function__`` (which sees even indexing,
  before torch's C++ device guard would ask for CUDA), computed on the CPU, and its result wrapped
  on the resulting device. Calls that ask for a CUDA device (``device="cuda:1"``, ``.to(0)``,
  ``.cuda()``, the default device of ``torch.set_default_device("cuda")``) make one, through a torch
  function mode that every thread started inside the block gets too.
* **The device check.** CUDA's own is in its kernels, which a CPU build has not got; labkit's
  raises torch's words (``Expected all tensors to be on the same device, but found at least two
  devices, cuda:0 and cuda:1!``) as :class:`VirtualDeviceMismatch`, a ``RuntimeError`` whose
  message says it is labkit's stand-in. It lets through what CUDA lets through: a 0-dim CPU tensor
  (a scalar), copies between devices, CPU indices.
* **The driver.** ``torch.cuda``'s availability, device count, the current device *per thread*
  (``set_device``, ``torch.cuda.device``), ``mem_get_info``, the memory statistics and device
  properties. Each device has a capacity: a tensor that would not fit raises
  :class:`VirtualOutOfMemory` (a ``torch.OutOfMemoryError``) in torch's words, at the op that
  allocates it, naming the device. ``torch.device(0)`` means ``cuda:0``, as on a CUDA build
  (accelerate's planners number GPUs).

Everything else is the libraries' own code: which tensors meet where, when accelerate's hooks move
what, which thread sees which device. Memory is the bytes of the live tensors on each device (views
share their storage's), rounded up to 512 bytes as CUDA's caching allocator rounds each block.

What a virtual GPU cannot show: kernels (their own checks, numerics, errors), streams and their
races, NCCL and anything between processes, the CUDA context, cuBLAS workspaces, memory reserved
but free, fragmentation, and speed: every op runs on the CPU, with a Python call around it, so no
time measured inside is a GPU's, and labkit reports none. It is for inference: no autograd.
Tensors made inside keep their device after the block; ``.cpu()`` makes them ordinary.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from labkit.llm.devices import STAND_IN
from labkit.llm.memory import parse_size, size_text

BLOCK = 512  # CUDA's caching allocator rounds every allocation up to a multiple of this
NAME = "virtual GPU (labkit)"
CAPABILITY = (8, 0)  # reported by get_device_capability: a number libraries may test, nothing behind it
MAX_GPUS = 8


class VirtualDeviceMismatch(RuntimeError):
    """Tensors on two virtual devices met in one op: torch's words, labkit's check."""


class VirtualOutOfMemory(torch.OutOfMemoryError):
    """A virtual GPU's capacity would be exceeded: torch's words, labkit's count."""


@dataclass(frozen=True)
class DeviceMemory:
    """One virtual GPU's memory: what its tensors hold now and at most, against its capacity."""

    device: str
    capacity: int
    allocated: int
    peak: int

    @property
    def peak_share(self) -> float:
        return self.peak / self.capacity


# --- the box: devices, their memory, the per-thread current device --------------------------------

_ACTIVE: "VirtualGPUs | None" = None
_OPEN = threading.Lock()  # one box at a time in a process: torch.cuda is one module


class VirtualGPUs:
    """N virtual GPUs of ``capacity`` bytes each; a ``with`` block (see :func:`virtual_gpus`)."""

    def __init__(self, n: int, capacity: int):
        from labkit.core.errors import BadInput

        if not 1 <= int(n) <= MAX_GPUS:
            raise BadInput(f"virtual GPUs: n={n!r} is out of range; allowed: 1 <= n <= {MAX_GPUS}")
        self.n, self.capacity = int(n), int(capacity)
        self._allocated = [0] * self.n
        self._peak = [0] * self.n
        self._storages: dict[tuple[int, int], list[int]] = {}  # (device, storage address) -> [bytes, wrappers]
        self._refs: set[weakref.ref] = set()
        self._lock = threading.RLock()  # a wrapper's release may run inside a count (garbage collection)
        self._thread_device = threading.local()
        self._undo: list[Callable[[], None]] = []
        self._owner: threading.Thread | None = None

    # memory -------------------------------------------------------------------------------------
    def memory(self) -> tuple[DeviceMemory, ...]:
        """Each device's capacity, bytes held now, and peak since the start (or the last reset)."""
        with self._lock:
            return tuple(DeviceMemory(f"cuda:{i}", self.capacity, self._allocated[i], self._peak[i])
                         for i in range(self.n))

    def peaks(self) -> dict[str, float]:
        """The trial metrics: each device's peak in MiB (``peak_mib_cuda0``...) and the fullest one's."""
        held = self.memory()
        out = {f"peak_mib_{m.device.replace(':', '')}": m.peak / 2**20 for m in held}
        out["peak_gpu_mib"] = max(m.peak for m in held) / 2**20
        return out

    def reset_peaks(self) -> None:
        with self._lock:
            self._peak = list(self._allocated)

    def _track(self, tensor: "VirtualTensor") -> None:
        """Count the storage of a new wrapper on its device, or raise out-of-memory as CUDA would."""
        storage = tensor._inner.untyped_storage()
        key = (tensor._index, storage.data_ptr())
        with self._lock:
            entry = self._storages.get(key)
            if entry is None:
                size = -(-storage.nbytes() // BLOCK) * BLOCK
                i = tensor._index
                if self._allocated[i] + size > self.capacity:
                    raise VirtualOutOfMemory(self._oom_text(i, size))
                entry = self._storages[key] = [size, 0]
                self._allocated[i] += size
                self._peak[i] = max(self._peak[i], self._allocated[i])
            entry[1] += 1
            self._refs.add(weakref.ref(tensor, lambda ref, key=key: self._release(ref, key)))

    def _release(self, ref: weakref.ref, key: tuple[int, int]) -> None:
        with self._lock:
            self._refs.discard(ref)
            entry = self._storages[key]
            entry[1] -= 1
            if entry[1] == 0:
                del self._storages[key]
                self._allocated[key[0]] -= entry[0]

    def _oom_text(self, i: int, size: int) -> str:
        free = self.capacity - self._allocated[i]
        return (f"CUDA out of memory. Tried to allocate {size_text(size)}. GPU {i} has a total capacity of "
                f"{size_text(self.capacity)} of which {size_text(free)} is free. Of the allocated memory "
                f"{size_text(self._allocated[i])} is allocated by PyTorch. (a virtual GPU: labkit counts the bytes "
                "of its live tensors, standing in for CUDA's allocator)")

    # devices ------------------------------------------------------------------------------------
    def index(self, device: Any) -> int | None:
        """The virtual index a device argument names, or None for the CPU, meta and other devices."""
        if isinstance(device, bool):
            return None
        if isinstance(device, int):
            index = device
        else:
            device = _REAL_DEVICE(device)
            if device.type != "cuda":
                return None
            index = self.current() if device.index is None else device.index
        if not 0 <= index < self.n:
            raise RuntimeError(f"CUDA error: invalid device ordinal (cuda:{index}; {self.n} {NAME}s here: "
                               f"cuda:0 to cuda:{self.n - 1})")
        return index

    def current(self) -> int:
        """This thread's current device: 0 in a thread that has set none, as on CUDA."""
        return getattr(self._thread_device, "index", 0)

    def _exchange(self, index: int) -> int:
        previous = self.current()
        if index >= 0:
            self._thread_device.index = self.index(index)
        return previous

    # entering and leaving -----------------------------------------------------------------------
    def __enter__(self) -> "VirtualGPUs":
        global _ACTIVE
        if not _OPEN.acquire(blocking=False):
            from labkit.core.errors import BadInput

            raise BadInput("virtual GPUs are already open in this process; close that block first")
        try:
            self._owner = threading.current_thread()
            _ACTIVE = self
            self._patch_driver()
            self._patch_threads()
            self._enter_mode()
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if threading.current_thread() is not self._owner:
            raise RuntimeError("virtual GPUs must be closed in the thread that opened them")
        self._restore()

    def _restore(self) -> None:
        global _ACTIVE
        while self._undo:
            self._undo.pop()()
        _ACTIVE = None
        _OPEN.release()

    def _set(self, owner: Any, name: str, value: Any) -> None:
        """Replace ``owner.name`` until the block ends."""
        old = getattr(owner, name)
        setattr(owner, name, value)
        self._undo.append(lambda: setattr(owner, name, old))

    def _patch_driver(self) -> None:
        import torch.cuda.memory as cuda_memory

        props = _Properties(NAME, self.capacity, *CAPABILITY)

        def idx(device: Any = None) -> int:
            index = self.current() if device is None else self.index(device)
            if index is None:
                raise ValueError(f"Expected a cuda device, but got: {device}")
            return index

        def stat(kind: str) -> Callable[..., int]:
            def read(device: Any = None) -> int:
                with self._lock:
                    return (self._allocated if kind == "now" else self._peak)[idx(device)]
            return read

        def reset(device: Any = None) -> None:
            with self._lock:
                i = idx(device)
                self._peak[i] = self._allocated[i]

        def mem_get_info(device: Any = None) -> tuple[int, int]:
            with self._lock:
                return self.capacity - self._allocated[idx(device)], self.capacity

        def memory_stats(device: Any = None) -> dict[str, int]:
            now, peak = stat("now")(device), stat("peak")(device)
            return {"allocated_bytes.all.current": now, "allocated_bytes.all.peak": peak,
                    "reserved_bytes.all.current": now, "reserved_bytes.all.peak": peak}

        def set_device(device: Any) -> None:
            self._thread_device.index = idx(device)

        driver = {
            "is_available": lambda: True, "device_count": lambda: self.n, "init": lambda: None,
            "current_device": self.current, "set_device": set_device,
            "_exchange_device": self._exchange, "_maybe_exchange_device": self._exchange,
            "synchronize": lambda device=None: None, "empty_cache": lambda: None,
            "get_device_properties": lambda device=None: (idx(device), props)[1],
            "get_device_name": lambda device=None: (idx(device), NAME)[1],
            "get_device_capability": lambda device=None: (idx(device), CAPABILITY)[1],
            "is_bf16_supported": lambda including_emulation=True: True,
            "mem_get_info": mem_get_info, "memory_stats": memory_stats,
            "memory_allocated": stat("now"), "max_memory_allocated": stat("peak"),
            "memory_reserved": stat("now"), "max_memory_reserved": stat("peak"),
            "reset_peak_memory_stats": reset, "reset_max_memory_allocated": reset,
        }
        for name, fn in driver.items():
            self._set(torch.cuda, name, fn)
            if hasattr(cuda_memory, name):
                self._set(cuda_memory, name, fn)
        self._set(torch, "device", _Device)

    def _patch_threads(self) -> None:
        """Every thread started inside the block runs in the factory mode (torch's mode stack is per
        thread), entered before its target and left after it: a mode left on a finished thread's
        stack aborts the interpreter at exit."""
        original = threading.Thread._bootstrap_inner
        box = self

        def bootstrap(thread: threading.Thread) -> None:
            if _ACTIVE is not box:
                return original(thread)
            with _Factories():
                return original(thread)

        self._set(threading.Thread, "_bootstrap_inner", bootstrap)

    def _enter_mode(self) -> None:
        mode = _Factories()
        mode.__enter__()
        default = getattr(torch._GLOBAL_DEVICE_CONTEXT, "device_context", None)

        def leave() -> None:
            now = getattr(torch._GLOBAL_DEVICE_CONTEXT, "device_context", None)
            if now is not default and now is not None and now.device.type == "cuda":
                torch.set_default_device(default.device if default is not None else None)  # a virtual default ends here
            mode.__exit__(None, None, None)

        self._undo.append(leave)


def trial_gpus(knobs: Mapping[str, Any]) -> VirtualGPUs | contextlib.nullcontext:
    """Inside a trial: the virtual GPUs its ``gpus`` and ``gpu_memory`` knobs ask for, or (gpus=0) nothing."""
    return virtual_gpus(knobs["gpus"], knobs["gpu_memory"]) if knobs.get("gpus") else contextlib.nullcontext()


def virtual_gpus(n: int = 2, memory: str | int = "24GiB") -> VirtualGPUs:
    """``n`` virtual CUDA devices of ``memory`` each, inside a ``with`` block; torch as it was after it.

    ``with labkit.virtual_gpus(4, memory="24GiB") as gpus:`` then your own model and device map:
    accelerate's planning and hooks and transformers' forward and ``generate`` run unchanged, devices
    meet where they would on four GPUs (labkit's check raises torch's error), and ``gpus.memory()``
    says how full each device got. Open it in the thread that will close it, one at a time, and
    start your worker threads inside it (threads started earlier cannot make CUDA tensors).
    """
    return VirtualGPUs(n, parse_size(memory))


@dataclass(frozen=True)
class _Properties:
    """What ``torch.cuda.get_device_properties`` answers about a virtual GPU."""

    name: str
    total_memory: int
    major: int
    minor: int
    multi_processor_count: int = 0
    is_integrated: bool = False


_REAL_DEVICE = torch.device


class _DeviceType(type):
    """``torch.device`` inside the block: an integer means ``cuda:N``, as on a CUDA build."""

    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, _REAL_DEVICE)

    def __subclasscheck__(cls, sub: type) -> bool:
        return issubclass(sub, _REAL_DEVICE)

    def __call__(cls, *args: Any, **kwargs: Any) -> torch.device:
        if len(args) == 1 and not kwargs and isinstance(args[0], int) and not isinstance(args[0], bool):
            return _REAL_DEVICE("cuda", args[0])
        return _REAL_DEVICE(*args, **kwargs)


class _Device(metaclass=_DeviceType):
    pass


# --- the tensor ------------------------------------------------------------------------------------

# Read from the wrapper itself: what a tensor says of itself without its values.
_METADATA = frozenset({
    "device", "dtype", "shape", "layout", "requires_grad", "is_cuda", "is_cpu", "is_meta", "is_leaf", "grad",
    "grad_fn", "ndim", "is_sparse", "is_sparse_csr", "is_quantized", "is_nested", "is_mkldnn", "is_xpu", "is_mps",
    "names", "output_nr", "_version", "itemsize", "nbytes", "is_floating_point", "is_complex", "dim", "size",
    "stride", "numel", "element_size", "get_device", "requires_grad_", "__len__", "_is_view",
})
# Allowed to take tensors on several devices, as on CUDA; the result lives where the first one does.
_CROSSING_NAMES = frozenset({"copy_", "__getitem__", "__setitem__", "index_put_"})


def _name(func: Callable) -> str:
    """``device`` for ``Tensor.device.__get__``, else the function's own name."""
    name = getattr(func, "__name__", "")
    if name in ("__get__", "__set__"):
        return getattr(getattr(func, "__self__", None), "__name__", name)
    return name


class VirtualTensor(torch.Tensor):
    """A tensor on a virtual ``cuda:k``: its values in a CPU tensor, every op computed there."""

    _inner: torch.Tensor
    _box: VirtualGPUs
    _index: int

    @staticmethod
    def __new__(cls, inner: torch.Tensor, index: int, box: VirtualGPUs) -> "VirtualTensor":
        wrapper = torch.Tensor._make_wrapper_subclass(
            cls, inner.shape, strides=inner.stride(), storage_offset=inner.storage_offset(), dtype=inner.dtype,
            layout=inner.layout, device=_REAL_DEVICE("cuda", index), requires_grad=False)
        wrapper._inner, wrapper._index, wrapper._box = inner, index, box
        box._track(wrapper)
        return wrapper

    def __repr__(self, **kwargs: Any) -> str:  # noqa: D105 - torch's repr, with the virtual device
        text = repr(self._inner)
        return f"{text[:-1]}, device='{self.device}')" if text.endswith(")") else text

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _name(func)
        if func is torch.Tensor.__repr__:
            return args[0].__repr__()
        if name in _METADATA or func is torch.Tensor.requires_grad.__set__:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        special = _SPECIAL.get(func)
        if special is not None:
            return special(*args, **kwargs)
        return _compute(func, args, kwargs)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        """What reaches torch's dispatcher (a few C++ paths): the same unwrap, check, compute, wrap."""
        return _compute(func, args, kwargs or {})


def _is_method(func: Callable) -> bool:
    return getattr(torch.Tensor, _name(func), None) is func or getattr(func, "__objclass__", None) is torch._C.TensorBase


def _devices(flat: list[Any]) -> list[torch.device]:
    """The devices of the tensors among ``flat``, in order, without CPU scalars (CUDA ops take those)."""
    seen: list[torch.device] = []
    for x in flat:
        if isinstance(x, VirtualTensor):
            device = _REAL_DEVICE("cuda", x._index)
        elif isinstance(x, torch.Tensor) and not (x.device.type == "cpu" and x.dim() == 0):
            device = x.device
        else:
            continue
        if device not in seen:
            seen.append(device)
    return seen


def _mismatch(devices: list[torch.device]) -> VirtualDeviceMismatch:
    return VirtualDeviceMismatch(f"Expected all tensors to be on the same device, but found at least two devices, "
                                 f"{devices[0]} and {devices[1]}! ({STAND_IN})")


def _unwrap(x: Any) -> Any:
    return x._inner if isinstance(x, VirtualTensor) else x


def _wrap(result: Any, index: int | None, box: VirtualGPUs, inputs: list[Any]) -> Any:
    """Put the plain tensors of ``result`` on virtual ``index``; an input handed back is that input."""
    if index is None:
        return result
    by_inner = {id(x._inner): x for x in inputs if isinstance(x, VirtualTensor)}
    host = {x.untyped_storage().data_ptr() for x in inputs
            if isinstance(x, torch.Tensor) and not isinstance(x, VirtualTensor) and x.device.type == "cpu"}

    def one(x: Any) -> Any:
        if not isinstance(x, torch.Tensor) or isinstance(x, VirtualTensor):
            return x
        if id(x) in by_inner and by_inner[id(x)]._index == index:
            return by_inner[id(x)]  # an in-place op returns its own argument
        if x.device.type != "cpu":
            return x
        if host and x.untyped_storage().data_ptr() in host:
            x = x.clone()  # a GPU tensor never shares memory with a host one
        return VirtualTensor(x, index, box)

    return tree_map(one, result)


def _compute(func: Callable, args: tuple, kwargs: dict, *, index: int | None = None,
             box: VirtualGPUs | None = None) -> Any:
    """Check the devices, compute on the CPU, wrap the result on its device."""
    flat, spec = tree_flatten((args, kwargs))
    box = box or next((x._box for x in flat if isinstance(x, VirtualTensor)), None) or _ACTIVE
    devices = _devices(flat)
    name = (_name(func) if callable(func) else "").split(".")[0]  # an aten overload's name is "copy_.default"
    if len(devices) > 1 and name not in _CROSSING_NAMES:
        raise _mismatch(devices)
    first = args[0] if args else None
    if "device" in kwargs and kwargs["device"] is not None and box is not None:
        index = box.index(kwargs["device"])
        kwargs = {**kwargs, "device": "cpu"} if index is not None else kwargs
        flat, spec = tree_flatten((args, kwargs))
    elif index is None and isinstance(first, torch.Tensor) and (name in _CROSSING_NAMES or name.endswith("_")):
        # written to or indexed: the result is (a part of) the first tensor, where it lives
        index = first._index if isinstance(first, VirtualTensor) else None
        if index is None and name == "__getitem__" and len(devices) > 1:
            raise IndexError(f"indices should be either on cpu or on the same device as the indexed tensor "
                             f"({first.device}) ({STAND_IN})")
    elif index is None:
        index = next((x._index for x in flat if isinstance(x, VirtualTensor)), None)
    plain_args, plain_kwargs = tree_unflatten([_unwrap(x) for x in flat], spec)
    result = func(*plain_args, **plain_kwargs)
    return _wrap(result, index, box, flat) if box is not None else result


def _moved(tensor: torch.Tensor, index: int | None, box: VirtualGPUs, dtype: torch.dtype | None,
           copy: bool, target: Any = None) -> torch.Tensor:
    """``tensor`` on virtual ``index`` (None: on ``target``, off the virtual GPUs), as ``.to`` moves it."""
    source = tensor._index if isinstance(tensor, VirtualTensor) else None
    inner = _unwrap(tensor)
    if index is None:  # to the CPU or meta: a new host tensor
        return inner.to(device=target, dtype=dtype, copy=True) if target is not None else inner.to(dtype=dtype, copy=True)
    if source == index:
        same = inner.to(dtype=dtype, copy=copy)
        return tensor if same is inner else VirtualTensor(same, index, box)
    return VirtualTensor(inner.to(device="cpu", dtype=dtype, copy=True), index, box)


def _target(box: VirtualGPUs, tensor: torch.Tensor, args: tuple, kwargs: dict):
    """What ``tensor.to(*args, **kwargs)`` asks for: (virtual index or None, device, dtype, copy)."""
    args = tuple(_REAL_DEVICE("cuda", a) if isinstance(a, int) and not isinstance(a, bool) else a for a in args)
    if isinstance(kwargs.get("device"), int):
        kwargs = {**kwargs, "device": _REAL_DEVICE("cuda", kwargs["device"])}
    copy = kwargs.pop("copy", False)
    with torch._C.DisableTorchFunctionSubclass():
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
    if device is None:
        index = tensor._index if isinstance(tensor, VirtualTensor) else None
        return index, (None if index is not None else tensor.device), dtype, copy
    return box.index(device), device, dtype, copy


def _to(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    box = self._box if isinstance(self, VirtualTensor) else _ACTIVE
    index, device, dtype, copy = _target(box, self, args, dict(kwargs))
    if index is None and not isinstance(self, VirtualTensor):
        with torch._C.DisableTorchFunctionSubclass():
            return torch.Tensor.to(self, *args, **kwargs)
    return _moved(self, index, box, dtype, copy, device)


def _cuda(self: torch.Tensor, device: Any = None, non_blocking: bool = False, **_: Any) -> torch.Tensor:
    box = self._box if isinstance(self, VirtualTensor) else _ACTIVE
    index = box.index("cuda" if device is None else device)
    return _moved(self, index, box, None, False)


def _cpu(self: "VirtualTensor", *_: Any, **__: Any) -> torch.Tensor:
    return self._inner.clone()


def _numpy(self: "VirtualTensor", *_: Any, **__: Any) -> Any:
    raise TypeError(f"can't convert {self.device} device type tensor to numpy. Use Tensor.cpu() to copy the "
                    "tensor to host memory first.")


def _data_ptr(self: "VirtualTensor") -> int:
    return self._inner.data_ptr()


_SPECIAL: dict[Callable, Callable[..., Any]] = {
    torch.Tensor.to: _to, torch.Tensor.cuda: _cuda, torch.Tensor.cpu: _cpu, torch.Tensor.numpy: _numpy,
    torch.Tensor.__array__: _numpy,
    torch.Tensor.data_ptr: _data_ptr, torch.Tensor.untyped_storage: lambda self: self._inner.untyped_storage(),
    # nn.Module.to would swap a virtual tensor's data into a CPU parameter in place; it must replace it
    torch._has_compatible_shallow_copy_type: lambda a, b: type(a) is type(b) and not isinstance(a, VirtualTensor),
}


class _Factories(TorchFunctionMode):
    """Calls that ask for a CUDA device, made in a thread of the block: a virtual tensor, not CUDA's error."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        box = _ACTIVE
        if box is None or any(issubclass(t, VirtualTensor) for t in types):
            return func(*args, **kwargs)  # closed, or the tensor class takes it from here
        name = _name(func)
        if kwargs.get("pin_memory"):  # page-locked host memory is CUDA's driver's; ordinary memory stands in
            kwargs = {**kwargs, "pin_memory": False}
        if func is torch.Tensor.pin_memory:
            return args[0].clone()
        if name in ("to", "cuda") and _is_method(func) and args and isinstance(args[0], torch.Tensor):
            index = _target(box, args[0], args[1:], dict(kwargs))[0] if name == "to" else -1
            if index is None:
                return func(*args, **kwargs)
            return _to(*args, **kwargs) if name == "to" else _cuda(*args, **kwargs)
        device = kwargs.get("device")
        if device is None and func in _device_constructors():
            device = _default_device()
        if device is None or box.index(device) is None:
            return func(*args, **kwargs)
        return _compute(func, args, {**kwargs, "device": device}, box=box)


def _device_constructors() -> set:
    from torch.utils._device import _device_constructors as constructors

    return constructors()


def _default_device() -> torch.device | None:
    """The device a ``torch.set_default_device`` or ``with torch.device(...)`` below this mode injects."""
    from torch.overrides import _get_current_function_mode_stack
    from torch.utils._device import DeviceContext

    return next((m.device for m in reversed(_get_current_function_mode_stack()) if isinstance(m, DeviceContext)), None)
