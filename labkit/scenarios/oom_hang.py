"""oom-hang: one rank's KV cache outgrows its memory budget, and the job hangs instead of failing.

Source: ``shared/seeds/003`` — lmdeploy serving InternVL2-76B tensor-parallel on 8 GPUs hung when
memory ran out instead of raising (InternLM/lmdeploy issue 2712).

Two ranks (``torch.distributed`` with gloo, two processes on this machine, loopback only) decode
tensor-parallel style: at every step both compute the next-token logits and ``all_reduce`` them, as
TP ranks sum their partial logits. Each rank sizes its KV cache from its memory budget up front
(transformers' ``StaticCache``, as engines size their cache pool); rank 1 has less memory free, so a
request longer than its cache fails there, inside transformers' cache update.

Why it hangs rather than fails: each rank is a small serving engine whose worker thread runs the
model and catches and logs errors, while the rank's main loop waits for the step's result. Rank 1's
worker logs the error; its main loop waits for a result that never comes; rank 0 waits in
``all_reduce`` for rank 1 forever (gloo's default timeout is 30 minutes). Had rank 1's process died,
gloo would have told rank 0 at once ("Connection closed by peer"): the hang needs the failing rank
alive, as it is in a real engine.
"""

from __future__ import annotations

import logging
import os
import queue
import tempfile
import threading
import time
from datetime import timedelta
from typing import Any, Callable, Mapping

from labkit.core.harness import fork_context
from labkit.core.hazard import UNKNOWN, Hazard
from labkit.core.scenario import Lesson, Metric, Scenario, positive, register
from labkit.llm import upstream
from labkit.llm.models import TINY, model_knobs

PROMPT = 8  # prompt tokens per sequence
BUDGET_KIB = 128  # the tiny model's KV cache for the prompt and half of 48 new tokens, at batch 4
log = logging.getLogger("labkit.oom-hang")


def _hazard(facts: Mapping[str, Any], workers: int) -> Hazard:
    """Unknown, always: whether a rank hands its error on is your code's; doctor can say how long a peer waits."""
    timeout = facts.get("distributed_default_timeout")
    fix = "init_process_group(..., timeout=timedelta(seconds=...)), and workers that hand their errors on"
    if timeout is None:
        return Hazard("oom-hang", UNKNOWN, "torch.distributed is not available", fix)
    return Hazard("oom-hang", UNKNOWN, f"torch.distributed's default collective timeout is {timeout}: a collective whose "
                  "peer failed waits that long unless your code passes timeout=", fix)


oom = register(
    Scenario(
        name="oom-hang",
        summary="a rank's KV cache outgrows its budget; it logs the error and lives, its peer waits in all_reduce forever",
        source="seed 003 (lmdeploy TP=8 hang on out-of-memory): lmdeploy issue 2712",
        notebook="04_tokenizer_deadlocks",
        section=2,
        details="a tensor-parallel rank's KV cache outgrows its budget; it logs the error and lives, its peer waits in "
                "`all_reduce` forever",
        your_model="each rank runs your model, and its config sizes the KV cache: left at its default, rank 1's budget "
                   "is what the prompt and half the new tokens need in your model's cache.",
        lessons=(
            Lesson("OOM that hangs", "a rank logs an error, the job never ends",
                   "the failing rank lives on; its peer waits in a collective",
                   "a collective timeout; errors handed to whoever waits; a KV budget check on every rank"),
        ),
        confirmed_on={"torch": ("2.13", "2.14", "2.15"), "transformers": ("5.23", "5.24")},
        confirmed_setup="gloo, 2 CPU ranks on loopback; transformers' StaticCache",
        knobs=(
            positive("tokens", 48, "new tokens the request asks for", high=1024),
            positive("batch", 4, "sequences in the request", high=256),
            positive("budget_kib", BUDGET_KIB, "rank 1's KV-cache budget in KiB (rank 0 has four times as much); left at "
                     "128 with another model: what the prompt and half the new tokens need in its cache", high=1 << 20),
            positive("collective_timeout_s", 3, "process-group timeout in the collective-timeout variant", high=600),
            *model_knobs("each rank's model; its config sizes the KV cache"),
        ),
        metrics=(
            Metric("tokens_per_s", "tokens/s", True, "new tokens per second"),
            Metric("tokens_generated", "tokens", True, "new tokens per sequence actually generated"),
        ),
        main_fix="budget-check",
        timeout=20.0,  # from the first line: two ranks starting, the decode (a few seconds here)
        quick={},
        hazard=_hazard,
    )
)


class Engine:
    """A serving engine's shape: a worker thread runs the model; the main loop waits for results."""

    def __init__(self, model, cache, propagate: bool):
        self.model, self.cache, self.propagate = model, cache, propagate
        self.cache_argument = upstream.cache_argument(model)
        self.jobs: queue.Queue = queue.Queue()
        self.results: queue.Queue = queue.Queue()
        threading.Thread(target=self._work, name="engine-worker", daemon=True).start()

    def _work(self) -> None:
        import torch

        while True:
            ids = self.jobs.get()
            try:
                with torch.no_grad():
                    out = self.model(input_ids=ids, use_cache=True, **{self.cache_argument: self.cache})
                self.results.put(out.logits[:, -1, :])
            except Exception as exc:  # noqa: BLE001 - the engine logs and carries on, as real ones do
                log.error("engine worker: generation step failed: %s: %s", type(exc).__name__, exc)
                if self.propagate:
                    self.results.put(exc)

    def step(self, ids):
        self.jobs.put(ids)
        result = self.results.get()  # without propagation, a swallowed error leaves this waiting forever
        if isinstance(result, BaseException):
            raise RuntimeError(f"generation step failed: {type(result).__name__}: {result}") from result
        return result


def _rank(rank: int, store: str, knobs: dict, serve: Callable, results) -> None:
    import torch.distributed as dist

    try:
        results.put((rank, "ok", serve(rank, store, knobs)))
    except Exception as exc:  # noqa: BLE001 - reported to the trial process
        results.put((rank, "raised", f"rank {rank}: {type(exc).__name__}: {exc}"))
    finally:  # after the report: leaving the group closes the peer's connection, and its error would come first
        if dist.is_initialized():
            dist.destroy_process_group()


def _join(rank: int, store: str, knobs: dict, timeout: timedelta | None = None):
    """Join the two-rank gloo group and build this rank's model; return it and the tokens its budget caches."""
    import torch
    import torch.distributed as dist

    from labkit.llm.memory import kv_cache_bytes
    from labkit.llm.models import fresh

    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            **({"timeout": timeout} if timeout else {}))  # default: 30 minutes
    model = fresh(knobs["model"], trust_remote_code=knobs["trust_remote_code"])
    budget = budget_bytes(knobs, model.config) * (1 if rank == 1 else 4)
    return model, budget // kv_cache_bytes(model.config, knobs["batch"], 1, torch.float32)


def budget_bytes(knobs: dict, config) -> int:
    """Rank 1's KV-cache budget: ``budget_kib``, or for another model left at the default, what the prompt
    and half the new tokens need in that model's cache (which is what 128 KiB is for the tiny model)."""
    from labkit.llm.memory import kv_cache_bytes

    if knobs["model"] == TINY or knobs["budget_kib"] != BUDGET_KIB:
        return knobs["budget_kib"] * 1024
    return kv_cache_bytes(config, knobs["batch"], PROMPT + knobs["tokens"] // 2, "float32")


def _decode(engine: Engine, batch: int, tokens: int) -> dict[str, float]:
    """Prefill, then one step per token, the ranks summing their logits after each (tensor parallelism)."""
    import torch
    import torch.distributed as dist

    ids = torch.randint(0, 1000, (batch, PROMPT), generator=torch.Generator().manual_seed(0))
    t0 = time.monotonic()
    logits = engine.step(ids)
    for step in range(tokens):
        dist.all_reduce(logits)
        if step == tokens - 1:
            break
        logits = engine.step(logits.argmax(-1, keepdim=True))
    return {"tokens_per_s": batch * tokens / (time.monotonic() - t0), "tokens_generated": float(tokens)}


def _static_cache(model, tokens: int):
    from transformers import StaticCache

    return StaticCache(config=model.config, max_cache_len=tokens)


def _ranks(knobs: dict, serve: Callable[[int, str, dict], dict[str, float]]) -> dict[str, float]:
    """Fork two ranks that each run ``serve``; the first rank that fails ends the trial, with its reason."""
    import torch.distributed  # noqa: F401 - imported once here rather than in each forked rank

    ctx = fork_context()  # this process has run no threads or collectives yet
    results = ctx.SimpleQueue()
    with tempfile.TemporaryDirectory(prefix="labkit-gloo-") as tmp:
        ranks = [ctx.Process(target=_rank, args=(r, os.path.join(tmp, "store"), knobs, serve, results), name=f"rank-{r}")
                 for r in (0, 1)]
        for p in ranks:
            p.start()
        answers = {}
        while len(answers) < len(ranks):
            rank, status, value = results.get()  # broken: no rank ever answers
            if status == "raised":
                raise RuntimeError(value)
            answers[rank] = value
        for p in ranks:
            p.join()
    return answers[0]


def _broken_rank(rank: int, store: str, knobs: dict) -> dict[str, float]:
    model, fits = _join(rank, store, knobs)
    engine = Engine(model, _static_cache(model, fits), propagate=False)
    return _decode(engine, knobs["batch"], knobs["tokens"])


@oom.variant("broken", broken=True)
def broken(**knobs: Any) -> dict[str, float]:
    """Rank 1's engine logs the failed step and waits; rank 0 waits in all_reduce: nothing ends."""
    return _ranks(knobs, _broken_rank)


def _budget_check_rank(rank: int, store: str, knobs: dict) -> dict[str, float]:
    import torch
    import torch.distributed as dist

    model, fits = _join(rank, store, knobs)
    # Every rank asks the same question before starting and takes the smallest answer, so they
    # shrink the request together (or refuse it together) instead of one failing alone.
    smallest = torch.tensor([fits])
    dist.all_reduce(smallest, op=dist.ReduceOp.MIN)
    tokens = min(knobs["tokens"], int(smallest) - PROMPT + 1)  # the last new token is never cached
    if tokens < 1:
        raise RuntimeError(f"refused: the prompt alone needs more KV cache than {int(smallest)} tokens")
    engine = Engine(model, _static_cache(model, fits), propagate=False)
    return _decode(engine, knobs["batch"], tokens)


@oom.variant("budget-check")
def budget_check(**knobs: Any) -> dict[str, float]:
    """Estimate the KV cache from the config first; every rank shrinks the request to what all can hold."""
    return _ranks(knobs, _budget_check_rank)


def _collective_timeout_rank(rank: int, store: str, knobs: dict) -> dict[str, float]:
    model, fits = _join(rank, store, knobs, timeout=timedelta(seconds=knobs["collective_timeout_s"]))
    engine = Engine(model, _static_cache(model, fits), propagate=True)  # the worker's error reaches the loop
    return _decode(engine, knobs["batch"], knobs["tokens"])


@oom.variant("collective-timeout", expect="raised")
def collective_timeout(**knobs: Any) -> dict[str, float]:
    """A process-group timeout, and the engine passes the worker's error to its main loop: it raises."""
    return _ranks(knobs, _collective_timeout_rank)
