"""compile-threads: a ``torch.compile`` setting made in the main thread does not reach the serving threads.

Source: pytorch issue 186537 (2026, open): since torch 2.12 (pull request 173568) dynamo's config is
per thread. ``torch._dynamo.config`` keeps what a user sets in a ``ContextVar``, and a new thread
starts from the defaults. A server that raises ``recompile_limit`` in its main thread, as the
recompilation guide says to when requests come in many shapes, and runs the compiled step from a
thread pool gets the default limit of 8 in every worker. Past 8 shapes, ``fullgraph=True`` raises
``FailOnRecompileLimitHit``; without ``fullgraph`` the step silently runs uncompiled from then on.
Same family as ``thread-device``: a per-thread setting, set in the wrong thread.

The compiled step is a server's sampling step (temperature softmax, a draw over the vocabulary),
compiled with ``dynamic=False`` (what CUDA graphs need), and fed the batch sizes a dynamic batching
server produces: 1, 2, ... up to ``shapes``. The backend is dynamo's eager one (no code generation,
so a trial takes a second on a CPU), counting the graphs it is handed and the calls that run them.
"""

from __future__ import annotations

import contextvars
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Mapping

from labkit.core.errors import WrongResult
from labkit.core.harness import metrics_on_failure
from labkit.core.hazard import EXPOSED, NOT_EXPOSED, UNKNOWN, Hazard
from labkit.core.scenario import Knob, Lesson, Metric, Scenario, positive, register


def _hazard(facts: Mapping[str, Any], workers: int) -> Hazard:
    """Exposed where doctor's probe saw a dynamo setting made in one thread missing in another."""
    fix = "set torch._dynamo.config in each serving thread, or run its work in contextvars.copy_context()"
    per_thread, torch = facts.get("dynamo_config_per_thread"), f"torch {facts.get('version:torch')}"
    if per_thread is None:
        return Hazard("compile-threads", UNKNOWN, f"{torch}: dynamo could not be asked", fix)
    if per_thread:
        return Hazard("compile-threads", EXPOSED, f"{torch}: a torch._dynamo.config setting made in one thread is the "
                      "default in another (probed): a limit raised in the main thread does not reach a thread pool", fix)
    return Hazard("compile-threads", NOT_EXPOSED, f"{torch}: dynamo's config is shared by every thread (probed)", fix)


compiled = register(
    Scenario(
        name="compile-threads",
        summary="torch.compile's recompile limit, raised in the main thread, is the default 8 in a serving thread",
        source="pytorch issue 186537 (dynamo config per thread since torch 2.12, pull request 173568)",
        notebook="02_device_mismatches",
        section=3,
        details="`torch._dynamo.config.recompile_limit` raised in the main thread is the default 8 in a serving thread "
                "(dynamo's config is per thread since torch 2.12): past 8 batch sizes, `fullgraph=True` raises "
                "`FailOnRecompileLimitHit`, without it the step runs uncompiled",
        lessons=(
            Lesson("compile setting lost in a thread",
                   "a compiled server recompiles, then raises `FailOnRecompileLimitHit` or slows down",
                   "`torch._dynamo.config` is per thread (torch 2.12+): the limit set in the main thread is the default "
                   "in the pool",
                   "set it in each serving thread or run in `contextvars.copy_context()`; mark dynamic dimensions"),
        ),
        confirmed_on={"torch": ("2.13", "2.14", "2.15")},
        confirmed_setup="dynamo's eager backend, CPU; the config is per thread from torch 2.12",
        knobs=(
            positive("shapes", 12, "batch sizes served, 1 to shapes: one graph each with dynamic=False", high=64),
            positive("limit", 64, "recompile_limit the main thread sets (torch's default: 8)", high=1024),
            Knob("fullgraph", True, "compile with fullgraph=True: past the limit it raises; without, it runs uncompiled"),
            positive("vocab", 4096, "vocabulary size sampled over", high=300_000),
        ),
        metrics=(
            Metric("shapes_uncompiled", "shapes", False, "batch sizes that ran without a compiled graph"),
            Metric("graphs", "graphs", True, "graphs dynamo compiled"),
        ),
        main_fix="copy-context",
        timeout=60.0,
        hazard=_hazard,
    )
)


def sample(logits):
    """The step a server compiles: temperature softmax and one draw per sequence."""
    import torch

    return torch.multinomial(torch.softmax(logits / 0.8, dim=-1), 1)


class CountingBackend:
    """dynamo's eager backend (the graph run as traced), counting graphs and the calls that run one."""

    def __init__(self):
        self.graphs = 0
        self.calls = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1

        def run(*args):
            self.calls += 1
            return graph_module.forward(*args)

        return run


def _serve(knobs: dict, *, dynamic: bool | None = False, mark_dynamic: bool = False, carry_context: bool = False,
           initializer: Callable[[], None] | None = None) -> dict[str, Any]:
    """Set the limit in this (the main) thread, compile, and serve every batch size from a pool thread."""
    import torch
    import torch._dynamo

    torch.set_num_threads(1)
    torch.manual_seed(0)
    torch._dynamo.config.recompile_limit = knobs["limit"]  # in the main thread, as the guide says
    backend = CountingBackend()
    step = torch.compile(sample, backend=backend, dynamic=dynamic, fullgraph=knobs["fullgraph"])

    metrics: dict[str, Any] = {}

    def serve_all() -> None:
        seen = torch._dynamo.config.recompile_limit  # what this thread's compiler will use
        metrics["limit"] = f"the main thread set {knobs['limit']}; the serving thread has {seen}"
        for batch in range(1, knobs["shapes"] + 1):
            logits = torch.randn(batch, knobs["vocab"])
            if mark_dynamic:
                torch._dynamo.mark_dynamic(logits, 0)
            step(logits)

    # taken here, in the main thread, after the limit was set: the pool thread runs the work inside it
    run = contextvars.copy_context().run if carry_context else (lambda fn: fn())
    with metrics_on_failure(metrics), ThreadPoolExecutor(1, initializer=initializer, thread_name_prefix="server") as pool:
        try:
            pool.submit(run, serve_all).result()
        finally:
            metrics.update(graphs=float(backend.graphs), shapes_uncompiled=float(knobs["shapes"] - backend.calls))
    if metrics["shapes_uncompiled"]:
        raise WrongResult(f"{metrics['shapes_uncompiled']:.0f} of {knobs['shapes']} batch sizes ran uncompiled "
                          f"({metrics['limit']})", metrics)
    return metrics


@compiled.variant("broken", broken=True)
def broken(**knobs: Any) -> dict[str, Any]:
    """The limit set in the main thread; the compiled step run from a pool thread, which has the default."""
    return _serve(knobs)


@compiled.variant("thread-config")
def thread_config(**knobs: Any) -> dict[str, Any]:
    """Each pool thread sets the limit itself when it starts (the pool's initializer)."""
    import torch._dynamo

    def set_limit() -> None:
        torch._dynamo.config.recompile_limit = knobs["limit"]

    return _serve(knobs, initializer=set_limit)


@compiled.variant("copy-context")
def copy_context(**knobs: Any) -> dict[str, Any]:
    """The work runs in a copy of the main thread's context, taken after the limit was set."""
    return _serve(knobs, carry_context=True)


@compiled.variant("mark-dynamic")
def mark_dynamic(**knobs: Any) -> dict[str, Any]:
    """The batch dimension marked dynamic: one graph serves every batch size, so no limit is reached."""
    return _serve(knobs, dynamic=None, mark_dynamic=True)
