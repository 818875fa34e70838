"""thread-storm: every worker brings a full intra-op pool, and the cores spend their time spinning.

Source: ``shared/seeds/002`` — ExLlamaV2's batched generation pegged every CPU core at 100% while
the model ran on the GPU (exllamav2 issue 508, torch 2.3.1, Qwen2-72B's 152k vocabulary):
PyTorch's OpenMP pool parallelised small CPU work such as sampling, and ``torch.set_num_threads(1)``
made generation about 20% faster. Related: pytorch issue 80777 (small CPU ops at 3000% CPU).

Each worker runs a real generation loop on the embedded Qwen3 model with a Qwen-sized vocabulary:
a transformers forward with a KV cache, then sampling on the CPU (temperature softmax, optional
top-p sort, multinomial draw) over every logit. W workers each with the default torch pool (one
thread per core) put W x cores threads on the cores. What makes it a storm rather than mere
oversubscription is libgomp's wait policy: a thread that finishes its share of a parallel region
spins for a while waiting for the next one, and when the team fits the cores (the default) it
spins hard. Those spinning threads steal the cores the other workers need.

Worker processes are forked from the trial process right after its imports and one draw of the
model's weights (NumPy alone: no torch op has run, so no OpenMP pool exists; other Python threads are
checked), so each worker starts clean and cheaply, and builds its model from the shared draw; a
spawned worker would pay the imports again. The ``tokenizer-deadlock`` scenario shows why that check
matters. On the portable route (macOS, Windows) they are spawned: each imports (and draws) for
itself before the barrier, and only the generation after it is measured.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Mapping

import psutil

from labkit.machine import system
from labkit.core.harness import fork_context, together
from labkit.core.hazard import EXPOSED, NOT_EXPOSED, UNKNOWN, Hazard
from labkit.core.scenario import Knob, Lesson, Metric, Scenario, positive, register
from labkit.core.errors import BadInput
from labkit.llm.devices import usable_cores
from labkit.llm.models import QWEN_VOCAB, TINY, model_knobs

DEFAULT_THREADS = psutil.cpu_count(logical=False) or os.cpu_count() or 1  # torch's own default

def _check(knobs: dict[str, Any]) -> None:
    if knobs["model"] != TINY and knobs["vocab"] != QWEN_VOCAB:
        raise BadInput("set model (its config gives the vocabulary) or vocab, not both")


def _hazard(facts: Mapping[str, Any], workers: int) -> tuple[Hazard, ...]:
    """Two rows: a storm takes more compute threads than cores, and threads that spin while they wait."""
    return _pool(facts, workers), _spinning(facts)


def _pool(facts: Mapping[str, Any], workers: int) -> Hazard:
    threads, cores = facts.get("torch_intra_op_threads"), facts.get("usable_cores")
    fix = "torch.set_num_threads(cores // workers) in each worker process (or OMP_NUM_THREADS before torch loads)"
    if not threads or not cores:
        return Hazard("thread-storm", UNKNOWN, "torch's pool size could not be read", fix)
    said = f"torch's pool {threads} threads x {workers} worker process{'es' if workers > 1 else ''} on {cores} usable cores"
    if threads * workers > cores:
        return Hazard("thread-storm", EXPOSED, f"{said}: {threads * workers} compute threads", fix)
    hint = "" if workers > 1 else " (say how many worker processes you run: --workers N)"
    return Hazard("thread-storm", NOT_EXPOSED, f"{said}: they fit{hint}", fix)


def _spinning(facts: Mapping[str, Any]) -> Hazard:
    fix = "OMP_WAIT_POLICY=PASSIVE where workers x threads exceed the cores"
    pools = [p.get("prefix", "") for p in facts.get("native_pools") or []]
    policy = facts.get("OMP_WAIT_POLICY", "(unset)")
    if not any("gomp" in p for p in pools):
        return Hazard("thread-storm (waiting)", NOT_EXPOSED, f"no libgomp pool loaded ({', '.join(pools) or 'none seen'})", fix)
    if policy == "(unset)":
        return Hazard("thread-storm (waiting)", EXPOSED,
                      "libgomp with OMP_WAIT_POLICY unset: its waiting threads spin, which is what turns "
                      "oversubscription into a storm", fix)
    return Hazard("thread-storm (waiting)", NOT_EXPOSED, f"libgomp with OMP_WAIT_POLICY={policy}", fix)


storm = register(
    Scenario(
        name="thread-storm",
        summary="CPU oversubscription: W workers x a full intra-op pool each, sampling over a 152k vocabulary",
        source="seed 002 (ExLlamaV2 CPU at 100%): exllamav2 issue 508; pytorch issue 80777",
        notebook="03_cpu_thread_storms",
        your_model="the workers sample over your model's vocabulary (from its config); the forward stays the tiny "
                   "model's, since the storm is in the sampling.",
        lessons=(
            Lesson("CPU thread storm", "every core busy, generation slower",
                   "each worker process keeps a thread per core, and OpenMP threads spin while they wait",
                   "`torch.set_num_threads(1)` per worker; `OMP_WAIT_POLICY=PASSIVE`; one bounded pool"),
        ),
        confirmed_on={"torch": ("2.11", "2.13", "2.14", "2.15"), "transformers": ("5.17", "5.23", "5.24")},
        confirmed_setup="sampling on the CPU, OpenMP (libgomp); 2-core x86-64, and the 16-core host of an H100",
        knobs=(
            positive("workers", 4, "concurrent workers (processes, or threads with workers_as=threads)", high=64),
            positive("threads", DEFAULT_THREADS, "intra-op threads per worker in the broken variant (torch default: one per core)", high=64),
            Knob("workers_as", "processes", "how workers run", choices=("processes", "threads")),
            Knob("vocab", QWEN_VOCAB, "vocabulary size sampled over (Qwen: 151,936)", low=1024, high=300_000),
            positive("batch", 4, "sequences per worker", high=64),
            positive("tokens", 16, "new tokens per sequence", high=1024),
            Knob("top_p", 1.0, "nucleus sampling threshold; below 1 adds a full sort of the vocabulary", low=0.05, high=1.0),
            *model_knobs("whose vocabulary the workers sample over (the forward stays the tiny model's: the storm "
                         "is in the sampling on the CPU)"),
        ),
        metrics=(
            Metric("tokens_per_s", "tokens/s", True, "generated tokens of all workers per wall-clock second"),
            Metric("cpu_s_per_token", "CPU s/token", False, "CPU seconds of every worker per generated token"),
            Metric("os_threads", "threads", False, "OS threads alive in the workers at the end"),
            Metric("ctx_involuntary", "switches", False, "involuntary context switches in the workers"),
            Metric("threads_per_core", "ratio", False, "compute threads asked for per core"),
        ),
        main_fix="one-thread",
        timeout=180.0,
        quick={"tokens": 1},  # one decode step a sequence: every step spins, so one shows the storm
        check=_check,
        hazard=_hazard,
    )
)


def sample(logits, generator, temperature: float = 0.8, top_p: float = 1.0):
    """Temperature (and optional top-p) sampling on the CPU, as transformers' warpers do it."""
    import torch

    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p >= 1.0:
        return torch.multinomial(probs, 1, generator=generator)
    sorted_probs, order = torch.sort(probs, descending=True)
    keep = sorted_probs.cumsum(-1) - sorted_probs < top_p
    return order.gather(-1, torch.multinomial(sorted_probs * keep, 1, generator=generator))


def generation_loop(model, *, batch: int, tokens: int, top_p: float, seed: int, sampler: Callable = sample) -> int:
    """Prefill a random prompt, then ``tokens`` decode steps: forward, then sample every logit."""
    import torch

    from labkit.llm.upstream import cache_argument, returned_cache

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 1000, (batch, 8), generator=gen)
    cache = cache_argument(model)
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
        for _ in range(tokens):
            nxt = sampler(out.logits[:, -1, :], gen, top_p=top_p)
            out = model(input_ids=nxt, use_cache=True, **{cache: returned_cache(out, cache)})
    return batch * tokens


def _counters() -> tuple[float, float, int | None]:
    """(monotonic wall, process CPU seconds, involuntary switches or None) of this process, all threads."""
    return time.monotonic(), time.process_time(), system.current().own_involuntary_switches()


def _measured(work: Callable[[], int]) -> dict[str, float | None]:
    t0, c0, s0 = _counters()
    done = work()
    t1, c1, s1 = _counters()
    return {"start": t0, "end": t1, "cpu_s": c1 - c0, "ctx": None if s0 is None or s1 is None else s1 - s0,
            "threads": system.current().own_threads(), "tokens": done}


def _total(stats: list[dict], key: str, metric: str) -> dict[str, float]:
    """``{metric: the workers' sum of key}``, or nothing where a worker could not read it (no /proc, say)."""
    values = [s[key] for s in stats]
    return {} if None in values else {metric: sum(values)}


def _process_worker(index: int, knobs: dict, setup: bytes, barrier, results, weights: dict | None = None) -> None:
    import cloudpickle

    from labkit.llm.models import tiny_model

    region = cloudpickle.loads(setup)()  # sets this worker's thread pools; returns a context factory for the hot loop
    model = tiny_model(vocab_size=knobs["vocab"], weights=weights)
    barrier.wait()  # start together, so the wall clock covers one shared busy period
    with region():
        stats = _measured(lambda: generation_loop(model, batch=knobs["batch"], tokens=knobs["tokens"], top_p=knobs["top_p"], seed=index))
    results.put(stats)


def _in_processes(knobs: dict, setup: Callable[[], Any]) -> list[dict[str, float]]:
    from labkit.llm.models import tiny_weights

    ctx = fork_context()  # see the module docstring: nothing but imports has run yet
    # Forked workers share one draw of the weights (NumPy only: still no torch op before the fork); a
    # spawned worker draws its own rather than receive 80 MB through a pipe.
    weights = tiny_weights(knobs["vocab"]) if ctx.get_start_method() == "fork" else None
    barrier, results = ctx.Barrier(knobs["workers"]), ctx.SimpleQueue()
    import cloudpickle  # a variant's set-up is a closure: by value, so that a spawned worker gets it too

    setup_by_value = cloudpickle.dumps(setup)
    procs = [ctx.Process(target=_process_worker, args=(i, knobs, setup_by_value, barrier, results, weights))
             for i in range(knobs["workers"])]
    for p in procs:
        p.start()
    stats = [results.get() for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"worker {p.pid} exited with code {p.exitcode}")
    return stats


def _in_threads(knobs: dict, setup: Callable[[], Any], sampler: Callable = sample) -> list[dict[str, float]]:
    from labkit.llm.models import tiny_model

    region = setup()
    model = tiny_model(vocab_size=knobs["vocab"])

    def worker(index: int) -> int:
        with region():  # inside the thread: OpenMP's thread count is a per-thread setting
            return generation_loop(model, batch=knobs["batch"], tokens=knobs["tokens"], top_p=knobs["top_p"], seed=index, sampler=sampler)

    def all_workers() -> int:
        done, errors, _ = together(knobs["workers"], worker)
        if any(errors):
            raise next(e for e in errors if e)
        return sum(done)

    return [_measured(all_workers)]


def _storm(knobs: dict, setup: Callable[[], Any], intra_op: int | None, as_threads: bool = False,
           sampler: Callable = sample) -> dict[str, float]:
    """Run the workers, then turn their raw counters into the scenario's metrics, and the generation's
    window (seconds from here, microseconds after the trial's first line), which the plots mark."""
    entered = time.monotonic()
    notes = {}
    if knobs["model"] != TINY:
        from labkit.llm.models import config_of

        knobs = {**knobs, "vocab": config_of(knobs["model"], trust_remote_code=knobs["trust_remote_code"]).vocab_size}
        notes["vocab"] = f"{knobs['vocab']:,}, from the config of {knobs['model']}"
    if as_threads or knobs["workers_as"] == "threads":
        stats = _in_threads(knobs, setup, sampler)
    else:
        stats = _in_processes(knobs, setup)
    tokens = sum(s["tokens"] for s in stats)
    expected = knobs["workers"] * knobs["batch"] * knobs["tokens"]
    if tokens != expected:
        raise RuntimeError(f"generated {tokens} tokens, expected {expected}")
    start, end = min(s["start"] for s in stats), max(s["end"] for s in stats)
    wall = end - start
    cpu = sum(s["cpu_s"] for s in stats)
    cores = usable_cores()
    return {
        "tokens_per_s": tokens / wall,
        "cpu_s_per_token": cpu / tokens,
        **_total(stats, "threads", "os_threads"),
        **_total(stats, "ctx", "ctx_involuntary"),
        **({} if intra_op is None else {"threads_per_core": knobs["workers"] * intra_op / cores}),
        "wall_s": wall,
        "measured_start_s": start - entered,
        "measured_end_s": end - entered,
        **notes,
    }


def _torch_threads(n: int) -> Callable[[], Callable[[], Any]]:
    """A worker set-up that sizes torch's pool and adds nothing around the hot loop."""

    def setup():
        import contextlib

        import torch

        torch.set_num_threads(n)
        return contextlib.nullcontext

    return setup


def with_setup(setup: Callable[[], Callable[[], Any]]) -> Callable[..., dict[str, float]]:
    """The storm's own workers with your set-up in each, as a variant function (notebook 03's exercise
    hands one to :func:`labkit.try_variant`). ``setup`` runs first in each worker process and returns the
    context its generation runs in, as ``_torch_threads`` does; the threads it asks for are its own
    business, so no ``threads_per_core`` is reported."""

    def workers(**knobs: Any) -> dict[str, float]:
        return _storm(knobs, setup, None)

    return workers


@storm.variant("broken", broken=True)
def broken(**knobs: Any) -> dict[str, float]:
    """Defaults: every worker keeps a full intra-op pool (``threads`` each, one per core by default)."""
    return _storm(knobs, _torch_threads(knobs["threads"]), knobs["threads"])


@storm.variant("one-thread")
def one_thread(**knobs: Any) -> dict[str, float]:
    """``torch.set_num_threads(1)`` in each worker: parallelism comes from the workers alone."""
    return _storm(knobs, _torch_threads(1), 1)


@storm.variant("threadpool-limits")
def threadpool_limits(**knobs: Any) -> dict[str, float]:
    """threadpoolctl's ``threadpool_limits(1)`` around the hot loop, torch's pool left at its default."""

    def setup():
        # torch's pool is left at its default here on purpose: torch links MKL statically, where
        # threadpoolctl cannot see it, and an explicit torch.set_num_threads(n) would pin MKL's
        # own count at n whatever threadpoolctl says (measured: about a fifth of the gain lost).
        from threadpoolctl import threadpool_limits as limits

        return lambda: limits(limits=1)

    return _storm(knobs, setup, 1)


@storm.variant("bounded-pool")
def bounded_pool(**knobs: Any) -> dict[str, float]:
    """Workers as threads in one process, sampling through one shared pool of at most one thread per core."""
    cores = usable_cores()
    pool = ThreadPoolExecutor(max_workers=min(cores, knobs["workers"]), thread_name_prefix="sampler")

    def pooled(logits, generator, top_p):
        return pool.submit(sample, logits, generator, top_p=top_p).result()

    try:
        return _storm(knobs, _torch_threads(1), 1, as_threads=True, sampler=pooled)
    finally:
        pool.shutdown()
