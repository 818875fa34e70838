"""Every name labkit borrows from transformers and accelerate that a release may change, in one place.

labkit reproduces failures on the libraries' own code paths, so it has to call a few things that
are not a stable public API: the keyword under which a model's forward takes its KV cache, the
private ``_skip_keys_device_placement`` and ``_no_split_modules`` lists, accelerate's ``_hf_hook``.
transformers 5.24 showed why this module exists: it renamed the forward's ``past_key_values`` to
``cache`` (the old name warns until 5.40), and a literal ``past_key_values=`` in labkit quietly
stopped matching ``skip_keys``, so the device-mismatch fix failed like the broken variant.

So nothing here is a literal name guessed in advance: the cache keyword is the one the model itself
lists in ``_skip_keys_device_placement`` and its forward accepts; everything else is read from the
object, and where it is missing the error names the installed versions and what was looked for
(:class:`UpstreamChanged`). ``tests/test_upstream.py`` checks each against the installed libraries,
so a release that moves one fails there first, by name.
"""

from __future__ import annotations

import inspect
from importlib.metadata import PackageNotFoundError, version
from typing import Any


class UpstreamChanged(RuntimeError):
    """A name labkit reads from transformers or accelerate is not where it was."""

    def __init__(self, what: str):
        super().__init__(f"{what} (installed: {installed_text()}; see labkit doctor for the tested set)")


def installed(name: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def installed_text(names: tuple[str, ...] = ("transformers", "accelerate")) -> str:
    return ", ".join(f"{n} {installed(n) or 'not installed'}" for n in names)


def skip_keys(model) -> list[str]:
    """The forward arguments transformers says a device hook must not move (the KV cache)."""
    keys = getattr(model, "_skip_keys_device_placement", None)
    if keys is None:
        raise UpstreamChanged(f"{type(model).__name__} has no _skip_keys_device_placement")
    return [keys] if isinstance(keys, str) else sorted(keys)


def cache_argument(model) -> str:
    """The keyword under which ``model``'s forward takes (and its output returns) the KV cache.

    ``past_key_values`` before transformers 5.24, ``cache`` from 5.24 on. Read from the model:
    the key in its ``_skip_keys_device_placement`` that its forward's signature accepts (the
    signature is followed through wrappers such as accelerate's hooks).
    """
    params = inspect.signature(model.forward).parameters
    names = [key for key in skip_keys(model) if key in params]
    if len(names) != 1:
        raise UpstreamChanged(f"{type(model).__name__}.forward takes none or several of its skip keys "
                              f"{skip_keys(model)} (it takes {', '.join(params)})")
    return names[0]


def returned_cache(output, model_or_name) -> Any:
    """The cache in a forward's or ``generate``'s output: the field named like the forward's argument.

    Give the model, or in a loop the name :func:`cache_argument` returned for it once.
    """
    name = model_or_name if isinstance(model_or_name, str) else cache_argument(model_or_name)
    if name not in output:
        raise UpstreamChanged(f"{type(output).__name__} has no {name!r} field (it has {', '.join(output)})")
    return output[name]


def no_split_modules(model) -> list[str]:
    """The module classes accelerate must keep whole on one device when it plans a map."""
    modules = getattr(model, "_no_split_modules", None)
    if modules is None:
        raise UpstreamChanged(f"{type(model).__name__} has no _no_split_modules")
    return list(modules)


def top_hook(model):
    """The hook ``accelerate.dispatch_model`` put on the whole model (moves inputs and outputs)."""
    hook = getattr(model, "_hf_hook", None)
    if hook is None or not hasattr(hook, "io_same_device"):
        raise UpstreamChanged(f"{type(model).__name__} has no accelerate top hook with io_same_device")
    return hook


def cache_tensors(cache) -> list[tuple[Any, Any]]:
    """Each layer's ``(keys, values)`` in a transformers cache or a legacy tuple of tuples.

    ``DynamicCache.layers[i].keys`` since transformers 4.56 (``key_cache[i]`` before).
    """
    if isinstance(cache, (tuple, list)):
        return [(k, v) for k, v, *_ in cache]
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    if hasattr(cache, "key_cache"):
        return list(zip(cache.key_cache, cache.value_cache))
    raise UpstreamChanged(f"{type(cache).__name__} has neither .layers nor .key_cache")
