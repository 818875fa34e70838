"""streamer-hang: streamed generation fails in its worker thread, and the caller waits forever.

Most chat demos and many servers stream the same way: ``model.generate(..., streamer=
TextIteratorStreamer(tokenizer))`` in a worker thread, and the caller iterating the streamer to send
each piece of text on. When ``generate`` raises in the worker, nothing more reaches the streamer's
queue, and a caller that iterates with the default ``timeout=None`` waits in ``Queue.get`` forever.
transformers pull request 22576 added the ``timeout`` argument for exactly that; serving projects
have patched the same hang since.

The failure here is real and happens inside ``generate``: ``do_sample=True`` with
``temperature=0`` (what a UI's temperature slider sends at zero) fails transformers' own check of
the sampling settings with a ``ValueError``. In production it is more often an out-of-memory error
in the middle of a long answer; the caller's side is the same.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

from labkit.core.hazard import not_visible
from labkit.core.scenario import Knob, Lesson, Metric, Scenario, positive, register

PROMPT = "The workshop starts with"

streaming = register(
    Scenario(
        name="streamer-hang",
        summary="generate fails in its worker thread; the caller iterating its TextIteratorStreamer waits forever",
        source="transformers pull request 22576 (TextIteratorStreamer's timeout); every threaded streaming demo",
        notebook="04_tokenizer_deadlocks",
        section=3,
        details="streamed generation (transformers' `TextIteratorStreamer`): `generate` raises in its worker thread (a "
                "real `ValueError`: sampling with `temperature=0`), the caller iterating the stream waits forever",
        lessons=(
            Lesson("stream that never ends", "a chat UI waits forever for the first token",
                   "`generate` raised in its worker thread; the caller waits on the streamer's queue",
                   "the worker ends the stream and hands its error to the caller; `TextIteratorStreamer(timeout=...)`"),
        ),
        confirmed_on={"transformers": ("5.24",)},
        confirmed_setup="TextIteratorStreamer in the caller, generate in a worker thread; CPU",
        knobs=(
            positive("tokens", 16, "new tokens asked for", high=1024),
            Knob("temperature", 0.0, "sampling temperature (0 with sampling on fails inside generate)", low=0.0, high=10.0),
            Knob("timeout_s", 2.0, "the streamer's timeout in the timeout variant, seconds", low=0.1, high=600.0),
        ),
        metrics=(Metric("chars", "chars", True, "characters streamed to the caller"),),
        main_fix="propagate",
        timeout=30.0,
        quick={},
        hazard=not_visible("streamer-hang", "depends on your streaming code (notebook 04)",
                           "the worker ends the stream and hands its error to the caller; a streamer timeout as a backstop"),
    )
)


def _request(knobs: dict) -> tuple[Any, Any, dict]:
    """The embedded model and tokenizer, and the generate arguments of one streamed request."""
    from labkit.llm.models import load

    model, tokenizer = load()
    inputs = tokenizer(PROMPT, return_tensors="pt")
    return model, tokenizer, {**inputs, "max_new_tokens": knobs["tokens"], "do_sample": True,
                              "temperature": knobs["temperature"]}


def _consume(streamer, generate: Callable[[], Any]) -> dict[str, float]:
    """Generate in a worker thread and iterate the stream here, as a chat UI sends each piece on."""
    worker = threading.Thread(target=generate, name="generate", daemon=True)
    worker.start()
    text = "".join(streamer)
    worker.join()
    return {"chars": float(len(text))}


@streaming.variant("broken", broken=True)
def broken(**knobs: Any) -> dict[str, float]:
    """The streamer's default timeout=None: when generate raises in its thread, the caller waits forever."""
    from transformers import TextIteratorStreamer

    model, tokenizer, request = _request(knobs)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
    return _consume(streamer, lambda: model.generate(**request, streamer=streamer))


@streaming.variant("timeout", expect="raised")
def timeout(**knobs: Any) -> dict[str, float]:
    """The streamer's timeout: the caller stops waiting and raises, though not with generate's error."""
    from transformers import TextIteratorStreamer

    model, tokenizer, request = _request(knobs)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, timeout=knobs["timeout_s"])
    try:
        return _consume(streamer, lambda: model.generate(**request, streamer=streamer))
    except queue.Empty:
        raise TimeoutError(f"no text from generate within {knobs['timeout_s']:g} s (the streamer's timeout); "
                           "why it stopped is only in its thread's traceback") from None


@streaming.variant("propagate", expect="raised")
def propagate(**knobs: Any) -> dict[str, float]:
    """The worker ends the stream when generate raises and hands the error over: the caller raises the real one."""
    from transformers import TextIteratorStreamer

    model, tokenizer, request = _request(knobs)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
    failed: list[BaseException] = []

    def generate() -> None:
        try:
            model.generate(**request, streamer=streamer)
        except Exception as exc:  # noqa: BLE001 - handed to the caller below
            failed.append(exc)
            streamer.end()  # the stop signal: the caller's loop ends instead of waiting

    result = _consume(streamer, generate)
    if failed:
        raise failed[0]
    return result
