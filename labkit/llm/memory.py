"""How much memory a KV cache needs, from the model's config alone (no weights, no GPU); sizes as text.

A serving engine that checks this before generating can shrink or refuse a request on every rank
at once, instead of one rank failing mid-generation while its peers wait for it (``oom-hang``).
"""

from __future__ import annotations

from typing import Any

_ITEMSIZE = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1,
             "int8": 1, "float64": 8}


def kv_cache_bytes(config: Any, batch: int, seq_len: int, dtype: Any = "float16") -> int:
    """Bytes of a full KV cache: keys and values x layers x KV heads x head size x tokens x batch.

    ``config`` is a transformers config (multimodal configs: their ``text_config``); ``seq_len`` is
    prompt plus new tokens; ``dtype`` a torch dtype or its name. Grouped-query attention is counted
    through ``num_key_value_heads``. Not modelled: sliding-window layers (which keep fewer tokens)
    and latent-attention caches such as DeepSeek's MLA.
    """
    text = getattr(config, "text_config", None) or config
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return 2 * text.num_hidden_layers * kv_heads * head_dim * seq_len * batch * _itemsize(dtype)


def cache_held_bytes(cache: Any) -> int:
    """Bytes the keys and values of a real cache hold now: what :func:`kv_cache_bytes` estimates."""
    from labkit.llm.upstream import cache_tensors

    return sum(t.numel() * t.element_size() for pair in cache_tensors(cache) for t in pair)


# The units accelerate's ``max_memory`` takes (``convert_file_size_to_int``): binary with an i, decimal without.
_UNITS = {"GIB": 2**30, "MIB": 2**20, "KIB": 2**10, "GB": 10**9, "MB": 10**6, "KB": 10**3}


def parse_size(text: str | int) -> int:
    """Bytes from ``"24GiB"``, ``"500MB"``, ``"1024"`` or an int, read as accelerate reads ``max_memory``.

    Written here rather than imported: a knob is checked in the parent process, which should not
    import accelerate (and torch) for it; ``tests/test_memory.py`` holds it to accelerate's parser.
    """
    from labkit.core.errors import BadInput

    bad = f"memory {text!r} is not a size; give e.g. 24GiB, 512MiB, 80GB or a number of bytes"
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        raw = str(text).strip()
        unit = next((u for u in _UNITS if raw.upper().endswith(u)), None)
        try:
            value = int(raw) if unit is None else int(float(raw[:-len(unit)]) * _UNITS[unit])
            if unit in ("GB", "MB", "KB") and raw.endswith("b"):
                value //= 8  # "Gb": bits, as accelerate reads them
        except ValueError:
            raise BadInput(bad) from None
    if value <= 0:
        raise BadInput(f"memory {text!r} must be more than 0 bytes")
    return value


def size_text(n: int) -> str:
    """Bytes as torch's memory messages write them: ``20.00 MiB``."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} bytes"


def _itemsize(dtype: Any) -> int:
    if hasattr(dtype, "itemsize"):
        return int(dtype.itemsize)
    name = str(dtype).removeprefix("torch.")
    if name not in _ITEMSIZE:
        from labkit.core.errors import BadInput

        raise BadInput(f"unknown dtype {dtype!r}; allowed: {', '.join(_ITEMSIZE)} or a torch dtype")
    return _ITEMSIZE[name]
