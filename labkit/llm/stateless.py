"""Modules whose forward writes their own state, made safe to share: nothing a call writes is seen
by another call. transformers' dynamic RoPE is one such module: ``dynamic_rope_update`` rewrites the
rotary module's ``inv_freq`` from each call's sequence length and keeps it for the calls after."""

from __future__ import annotations

import copy

from torch import nn


class Stateless(nn.Module):
    """Every call runs on a fresh copy of ``module``: no thread sees another's state, and no request
    sees what an earlier one left (a per-thread copy would still carry one request's state into the
    thread's next). For a rotary module the copy is a few small tensors."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.original = module  # never called, so never written: copying it from any thread is safe

    def forward(self, *args, **kwargs):
        return copy.deepcopy(self.original)(*args, **kwargs)
