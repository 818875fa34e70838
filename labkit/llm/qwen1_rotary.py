"""Qwen-1's rotary embedding pattern, rebuilt small, to plug into the real transformers Qwen3 model.

Qwen-1 (``Qwen/Qwen-1_8B-Chat`` and siblings) ships its modeling code as remote code
(``modeling_qwen.py``, class ``RotaryEmbedding``), which cannot be loaded offline. This module
reproduces the part of it that races, written afresh, with the same shared state on the module:

* ``_rotary_pos_emb_cache``: the ``[cos, sin]`` tables; ``None`` until the first request;
* ``_seq_len_cached`` and ``_ntk_alpha_cached``: what the tables were built for. A rebuild happens
  when a longer sequence or another NTK factor is asked for, and it **raises the cached length
  before it assigns the new tables**, so a thread that looks in between skips the rebuild and
  unpacks the old tables (or ``None``: ``TypeError: cannot unpack non-iterable NoneType object``,
  QwenLM/Qwen issue 1303);
* ``_ntk_alpha_cached_list``: Qwen-1's dynamic NTK scaling picks a factor from each prompt's length
  at prefill and leaves it on the module for the decode steps that follow; another thread's
  prefill overwrites it, and the decode runs with the other request's factor: a wrong answer
  with no error at all.

:class:`PerThreadRotary` is the fix: tables for every NTK factor computed once, up front, and
never written again; the factor of the request in flight kept in thread-local storage.
"""

from __future__ import annotations

import math
import threading

import torch
from torch import nn

TRAINED_LENGTH = 32  # Qwen-1's config.seq_length (2048 there): prompts longer than this get NTK scaling


def ntk_alpha(length: int, trained: int = TRAINED_LENGTH) -> float:
    """Qwen-1's dynamic NTK factor for a sequence of ``length`` tokens (1 up to the trained length)."""
    context = math.log(length / trained, 2) + 1
    return float(max(2 ** math.ceil(context) - 1, 1))


def _tables(dim: int, base: float, alpha: float, length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    scaled = base * alpha ** (dim / (dim - 2))
    inv_freq = 1.0 / scaled ** (torch.arange(0, dim, 2, device=device).float() / dim)
    freqs = torch.outer(torch.arange(length, device=device).float(), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


class LazySharedRotary(nn.Module):
    """Qwen-1's pattern: one cache on the module, rebuilt on demand by whichever thread needs it."""

    def __init__(self, dim: int, base: float = 10000.0):
        super().__init__()
        self.dim, self.base = dim, base
        self._rotary_pos_emb_cache: list[torch.Tensor] | None = None
        self._seq_len_cached = 0
        self._ntk_alpha_cached = 1.0
        self._ntk_alpha_cached_list = [1.0]

    def update_rotary_pos_emb_cache(self, seqlen: int, alpha: float, device) -> None:
        if seqlen > self._seq_len_cached or alpha != self._ntk_alpha_cached:
            self._seq_len_cached = max(2 * seqlen, 16)  # raised here...
            self._ntk_alpha_cached = alpha
            cos, sin = _tables(self.dim, self.base, alpha, self._seq_len_cached, device)
            self._rotary_pos_emb_cache = [cos, sin]  # ...the tables assigned only now

    def alphas(self, position_ids: torch.Tensor) -> list[float]:
        if position_ids.shape[1] > 1:  # a prefill: one factor per sequence, from its true length
            self._ntk_alpha_cached_list = [ntk_alpha(int(row[-1]) + 1) for row in position_ids]
        return self._ntk_alpha_cached_list  # a decode step: whatever the last prefill left here

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seqlen = int(position_ids.max()) + 1
        cos_rows, sin_rows = [], []
        for row, alpha in zip(position_ids, self.alphas(position_ids)):
            self.update_rotary_pos_emb_cache(seqlen, alpha, x.device)
            cos, sin = self._rotary_pos_emb_cache
            cos_rows.append(cos[row])
            sin_rows.append(sin[row])
        return torch.stack(cos_rows).to(x.dtype), torch.stack(sin_rows).to(x.dtype)


class PerThreadRotary(LazySharedRotary):
    """The fix: read-only tables built once for every factor, the request's factor per thread."""

    def __init__(self, dim: int, base: float = 10000.0, max_length: int = 1024, device=None):
        super().__init__(dim, base)
        factors = sorted({ntk_alpha(n) for n in range(1, max_length + 1)})
        self._tables = {a: _tables(dim, base, a, max_length, device) for a in factors}
        self._local = threading.local()

    def alphas(self, position_ids: torch.Tensor) -> list[float]:
        if position_ids.shape[1] > 1:
            self._local.alphas = [ntk_alpha(int(row[-1]) + 1) for row in position_ids]
        return self._local.alphas

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [(self._tables[a][0][row], self._tables[a][1][row]) for row, a in zip(position_ids, self.alphas(position_ids))]
        cos = torch.stack([c for c, _ in pairs]).to(x.device, x.dtype)
        sin = torch.stack([s for _, s in pairs]).to(x.device, x.dtype)
        return cos, sin


class TracedRotary(LazySharedRotary):
    """Qwen-1's pattern, unchanged, with every rebuild and read of its shared state logged by thread.

    Two kinds of row are evidence. A read whose tables hold fewer rows than it ``needs``, or none,
    landed inside another thread's rebuild, between the length being raised and the tables being
    assigned: the ``TypeError`` and ``IndexError``. A read whose ``factor used`` (from the list the
    last prefill of any thread left on the module) is not the ``request's factor`` (from its own
    prompt's length) computes this request's positions with another request's scaling: a wrong answer,
    with no error. ``factor says`` is the module's cached factor, which, like ``length says``, is set
    when a rebuild starts, so it may run ahead of the tables held: shown, not counted as evidence.
    """

    def __init__(self, dim: int, base: float = 10000.0):
        super().__init__(dim, base)
        self.log: list[dict] = []  # list.append is atomic: the log itself does not race
        self._own = threading.local()

    def alphas(self, position_ids: torch.Tensor) -> list[float]:
        if position_ids.shape[1] > 1:  # what this request's prefill computes for itself, kept per thread
            self._own.factor = ntk_alpha(int(position_ids[0, -1]) + 1)
        return super().alphas(position_ids)

    def _note(self, event: str, needs: int, alpha: float) -> None:
        tables = self._rotary_pos_emb_cache
        self.log.append({"thread": threading.current_thread().name, "event": event, "needs": needs,
                         "length says": self._seq_len_cached, "tables hold": None if tables is None else len(tables[0]),
                         "request's factor": getattr(self._own, "factor", None), "factor used": alpha,
                         "factor says": self._ntk_alpha_cached})

    def update_rotary_pos_emb_cache(self, seqlen: int, alpha: float, device) -> None:
        if seqlen > self._seq_len_cached or alpha != self._ntk_alpha_cached:
            self._note("rebuild starts", seqlen, alpha)
            super().update_rotary_pos_emb_cache(seqlen, alpha, device)
            self._note("tables assigned", seqlen, alpha)
        self._note("reads tables", seqlen, alpha)


def not_installable(model: nn.Module) -> str | None:
    """Why these modules cannot stand in for ``model``'s rotary embedding, or None where they can: the
    Llama family (Llama, Qwen2/3, Mistral...) keeps one ``rotary_emb`` on its base model, called with the
    positions and returning full-width ``(cos, sin)``; other architectures have no such module to swap."""
    config = model.config
    base = getattr(model, "base_model", None)
    if not isinstance(getattr(base, "rotary_emb", None), nn.Module):
        return f"{config.model_type} has no shared rotary module (base_model.rotary_emb)"
    partial = (getattr(config, "rope_parameters", None) or {}).get("partial_rotary_factor",
                                                                   getattr(config, "partial_rotary_factor", 1.0))
    if partial != 1.0:
        return f"{config.model_type} rotates only part of each head (partial_rotary_factor={partial})"
    return None


def install(model: nn.Module, rotary: type[LazySharedRotary] = LazySharedRotary, **kwargs) -> LazySharedRotary:
    """Swap the model's rotary embedding for one of these; every layer then uses it (see :func:`not_installable`)."""
    why_not = not_installable(model)
    if why_not is not None:
        raise ValueError(f"cannot install Qwen-1's rotary stand-in: {why_not}")
    config = model.config
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    base = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", getattr(config, "rope_theta", 10000.0))
    module = rotary(dim, float(base), **kwargs)
    model.base_model.rotary_emb = module
    return module
