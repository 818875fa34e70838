"""The user's own function as a variant of :func:`~labkit.core.compare.compare_functions`: setup, then the timed call.

Its own module, importing only the standard library, because it is unpickled in every trial's child
before the trial's first line: importing :mod:`labkit.core.compare` there (pandas) cost 0.27 s of
start-up a trial, against 0.02 s for the rest of a warm start.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping

CALL = "call_s"  # what every trial measures: seconds the call took, setup excluded


@dataclass(frozen=True)
class Call:
    """``fn(setup(), *args, **kwargs)``, with only the call itself timed (``call_s``).

    Runs in the trial's child process. ``setup``'s value is passed first to the function, so a model
    loaded or a client opened there is used by the call but its making is not measured. Either may
    be ``async def``: both then run in one event loop (a client opened in setup stays usable).
    """

    fn: Callable[..., Any]
    setup: Callable[[], Any] | None = None
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self) -> dict[str, Any]:
        if _is_async(self.fn) or _is_async(self.setup):
            return asyncio.run(self._run_async())
        args = (self.setup(), *self.args) if self.setup is not None else self.args
        began = time.perf_counter()
        out = self.fn(*args, **self.kwargs)
        if inspect.isawaitable(out):  # a plain function that returned a coroutine: awaited, and timed
            out = asyncio.run(_awaited(out))
        return measured(out, time.perf_counter() - began)

    async def _run_async(self) -> dict[str, Any]:
        args = self.args
        if self.setup is not None:
            state = self.setup()
            args = (await state if inspect.isawaitable(state) else state, *self.args)
        began = time.perf_counter()
        out = self.fn(*args, **self.kwargs)
        if inspect.isawaitable(out):
            out = await out
        return measured(out, time.perf_counter() - began)


def _is_async(fn: Callable[..., Any] | None) -> bool:
    return fn is not None and (inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None)))


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def measured(out: Any, seconds: float) -> dict[str, Any]:
    """The call's seconds, with the numbers (metrics) and text (notes) the function returned, if a mapping."""
    kept = {k: v for k, v in out.items() if isinstance(v, (int, float, str))} if isinstance(out, Mapping) else {}
    return {**kept, CALL: seconds}
