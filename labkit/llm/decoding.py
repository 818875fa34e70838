"""Greedy decoding one forward call per token, the cache handed back in by hand.

This is what ``generate`` does inside, spelled out: the device scenarios need to see each step
(the failure of seed 001 is on the 2nd), to hand the cache over in the form they choose, and, on
the ``meta`` device where logits hold no numbers, to feed the next ids themselves.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from labkit.core.harness import metrics_on_failure
from labkit.core.scenario import Metric

STEP_METRICS = (  # what the device scenarios measure
    Metric("steps_completed", "steps", True, "decoding steps that finished"),
    Metric("ms_per_step", "ms", False, "wall-clock milliseconds per decoding step"),
)


def decode_by_hand(
    model,
    ids,
    steps: int,
    feed: Sequence[int] = (),
    on_step: Callable[[int, Any], None] | None = None,
) -> list[int]:
    """Return ``steps`` new token ids for the prompt ``ids`` (shape ``[1, n]``).

    Each next id is the argmax of the logits, or ``feed[step]`` where the logits are on ``meta``.
    New ids are made on the prompt's device, as a caller's own loop would make them.
    ``on_step(step, cache)`` runs after every step (1-based).
    """
    import torch

    from labkit.llm.upstream import cache_argument, returned_cache

    past, new, cache = None, [], cache_argument(model)
    with torch.no_grad():
        for step in range(steps):
            out = model(input_ids=ids, use_cache=True, **{cache: past})
            past, logits = returned_cache(out, cache), out.logits[0, -1]
            token = feed[step] if logits.device.type == "meta" else int(logits.argmax())
            new.append(token)
            if on_step is not None:
                on_step(step + 1, past)
            ids = torch.tensor([[token]], device=ids.device)
    return new


def measured_decode(
    model,
    ids,
    steps: int,
    feed: Sequence[int] = (),
    on_step: Callable[[int, Any], None] | None = None,
) -> tuple[list[int], dict[str, float]]:
    """:func:`decode_by_hand` measured in :data:`STEP_METRICS`.

    A step that raises (or whose ``on_step`` raises) leaves ``steps_completed`` in the exception's
    ``metrics``, which the isolated trial keeps with its ``raised`` or ``wrong`` outcome.
    """
    done = {"steps_completed": 0.0}

    def count(step: int, past) -> None:
        if on_step is not None:
            on_step(step, past)
        done["steps_completed"] = float(step)

    t0 = time.perf_counter()
    with metrics_on_failure(done):
        tokens = decode_by_hand(model, ids, steps, feed, count)
    return tokens, {**done, "ms_per_step": 1e3 * (time.perf_counter() - t0) / steps}


def corpus_prompt(length: int = 12, steps: int = 0, ids: Sequence[int] | None = None) -> tuple[list[int], list[int]]:
    """A prompt cut from the corpus and the ``steps`` ids that follow it there (to feed on meta);
    ``ids``: the corpus as another model's tokenizer encodes it."""
    from labkit.llm.models import corpus_ids

    ids = list(corpus_ids() if ids is None else ids)
    return ids[:length], ids[length:length + steps]
