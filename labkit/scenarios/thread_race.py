"""thread-race: N requests served from threads on one model whose rotary module is shared state.

Source: ``shared/seeds/000`` — Qwen-1.8B served from several Python threads raised
``TypeError: cannot unpack non-iterable NoneType object`` (QwenLM/Qwen issue 1303: ten threads each
looping ``model.chat``), and more threads did not bring more throughput. The fixes the report names
are all here: a lock, processes, batching through a request queue.

Each trial encodes N prompts of different lengths (some longer than the trained length, so their
NTK factors differ) from the corpus with the embedded tokenizer, generates each one alone first to
get the reference answer (greedy), then serves all N at once and checks every answer against its
reference. A request that raises makes the trial ``raised``; one that finishes with other tokens
makes it ``wrong``.

Two patterns of the same race (the ``pattern`` knob), on the real transformers Qwen3 model:

* ``qwen1``: Qwen-1's rotary module, rebuilt small and installed in the model (a stand-in:
  :mod:`labkit.llm.qwen1_rotary` says why it is rebuilt rather than loaded);
* ``dynamic-rope``: transformers' **own** dynamic NTK RoPE (``rope_type="dynamic"``, a trained
  length of 32). Its ``dynamic_rope_update`` rewrites the shared rotary module's ``inv_freq`` from
  each call's sequence length, growing past the trained length and resetting below it, so a
  thread's forward can compute with the frequencies another thread's request just set: silently
  wrong answers. The pattern is in transformers' code since ``LlamaDynamicNTKScalingRotaryEmbedding``
  (4.31), as ``_dynamic_frequency_update`` after the rotary refactor, and under the
  ``dynamic_rope_update`` decorator since pull request 37249 (2025); confirmed here on 5.24.

With ``model`` set to the user's own model (a folder or a cached hub id), ``qwen1`` installs the stand-in
where the architecture has a rotary module to swap (the Llama family) and serves the model as it is
elsewhere, saying so in the trial's notes: every fix and the lock-against-batching A/B then run on that
model. ``dynamic-rope`` needs the tiny model, whose trained length the prompts cross.

Batching is no fix for ``dynamic-rope``: transformers scales every row of a batch by the batch's
longest position, so a short request batched with a long one gets another answer than alone.
"""

from __future__ import annotations

import contextlib
import copy
import queue
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Sequence

from labkit.core.errors import BadInput, WrongResult
from labkit.core.harness import fork_context, together, with_metrics
from labkit.core.hazard import not_visible
from labkit.core.scenario import Knob, Lesson, Metric, Scenario, positive, register
from labkit.llm.devices import usable_cores
from labkit.llm.models import TINY, model_knobs

LENGTHS = (6, 40, 12, 48, 20, 36, 9, 56)  # around the trained length (32): NTK factors 1 and 3
PATTERNS = ("qwen1", "dynamic-rope")
BATCH_WINDOW_S = 0.005  # how long the batching server waits for more requests after the first
TORCH_THREADS_WHY = """\
One intra-op thread by default: this tiny model's generate is thousands of tiny ops, and with torch's
default pool (one thread per core) the same batched generate took 0.09 s from the main thread and
0.27 s from any other thread here (libgomp spins between parallel regions only for the main thread's
team; with OMP_WAIT_POLICY=PASSIVE the main thread is as slow). Servers generate from worker
threads, so the default pool would hide the difference between the serving strategies."""


def _compute_device(name: str) -> str:
    from labkit.llm.devices import check_device

    device = check_device(name)
    if device == "meta":
        raise BadInput("device 'meta' holds no data to generate with; allowed: cpu, cuda:N")
    return device


def _check(knobs: dict[str, Any]) -> None:
    if knobs["pattern"] == "dynamic-rope" and knobs["model"] != TINY:
        raise BadInput("pattern=dynamic-rope runs on the tiny model (the prompts cross its trained length of 32); "
                       "with model=... allowed: pattern=qwen1")


race = register(
    Scenario(
        name="thread-race",
        summary="threads share a rotary module that its forward rewrites (Qwen-1's cache, or transformers' dynamic "
                "RoPE): TypeError or silently wrong answers",
        source="seed 000 (Qwen-1.8B from threads): QwenLM/Qwen issue 1303; transformers' dynamic_rope_update",
        notebook="01_thread_races",
        details="threads share a rotary module that its forward rewrites: Qwen-1's lazily rebuilt cache (`pattern=qwen1`, "
                "rebuilt small and installed in the real Qwen3 model: `TypeError: cannot unpack non-iterable NoneType "
                "object`, or silently wrong answers), or transformers' **own** dynamic RoPE (`pattern=dynamic-rope`: "
                "silently wrong answers; there only `per-thread` holds: a batch scales every row by its longest, and a "
                "shared model keeps the last request's scaling)",
        your_model="every variant serves your model; `broken` installs Qwen-1's racy rotary where the architecture has a "
                   "rotary module to swap (the Llama family) and serves it as it is elsewhere, saying which in the "
                   "trial's notes. `labkit compare thread-race lock batched --set model=./my-model` is the A/B of a lock "
                   "against one batching thread on your model. `pattern=dynamic-rope` needs the tiny model.",
        lessons=(
            Lesson("thread race on model state",
                   "`TypeError: cannot unpack non-iterable NoneType`, `IndexError`, or silently wrong answers",
                   "a forward writes a cache, a length or a scaling factor on a module every thread shares (Qwen-1's "
                   "rotary cache; transformers' own dynamic RoPE)",
                   "one worker thread that batches requests; a lock; per-thread state; processes. Dynamic RoPE: no "
                   "rotary state shared between calls, and no batching across the trained length"),
            Lesson("throughput wall", "more threads, no more tokens/s", "the GIL and one device queue serialise the threads",
                   "batch the requests"),
        ),
        confirmed_on={"torch": ("2.11", "2.13", "2.14", "2.15"), "transformers": ("5.17", "5.23", "5.24")},
        confirmed_setup="Qwen3 with Qwen-1's rotary pattern: 2-core x86-64 and an H100 (cuda:0); with transformers' "
                        "dynamic RoPE: 2-core x86-64 on transformers 5.24",
        knobs=(
            positive("threads", 8, "concurrent requests (one client thread each)", high=64),
            positive("tokens", 32, "new tokens per request (greedy)", high=256),
            positive("torch_threads", 1, "torch intra-op threads in the serving process (see TORCH_THREADS_WHY)", high=64),
            Knob("device", "cpu", "device the model runs on", validate=_compute_device),
            Knob("pattern", "qwen1", "qwen1: Qwen-1's rotary cache (a stand-in); dynamic-rope: transformers' own dynamic RoPE",
                 choices=PATTERNS),
            *model_knobs("the model every variant serves (Qwen-1's rotary stand-in installed where it fits)"),
        ),
        metrics=(
            Metric("tokens_per_s", "tokens/s", True, "new tokens of all requests per wall-clock second"),
            Metric("requests_failed", "requests", False, "requests that raised or answered wrong"),
        ),
        main_fix="lock",
        speed_pair=("lock", "batched"),
        timeout=120.0,
        quick={"tokens": 16},
        check=_check,
        hazard=not_visible("thread-race", "depends on your model's code: a forward that writes module state (notebook 01)",
                           "one worker thread that batches, or a lock; no module state shared between calls"),
    )
)


def prompts(n: int, ids: Sequence[int] | None = None) -> list[list[int]]:
    """N token-id prompts cut from the corpus (``ids``: as another tokenizer encodes it), of the
    lengths in LENGTHS (cycled)."""
    from labkit.llm.models import corpus_ids

    ids = corpus_ids() if ids is None else ids
    return [list(ids[7 * i: 7 * i + LENGTHS[i % len(LENGTHS)]]) for i in range(n)]


def generate(model, batch: list[list[int]], tokens: int, device: str) -> list[list[int]]:
    """Greedy generate for a left-padded batch; returns each request's new tokens."""
    import torch

    width = max(map(len, batch))
    pad = model.generation_config.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=tokens, do_sample=False)
    return out[:, width:].tolist()


def dynamic_rope_model():
    """The embedded model with transformers' dynamic NTK RoPE and a trained length the prompts cross."""
    from labkit.llm.models import tiny_config, tiny_model
    from labkit.llm.qwen1_rotary import TRAINED_LENGTH

    rope = {**tiny_config().rope_parameters, "rope_type": "dynamic", "factor": 2.0}
    return tiny_model(rope_parameters=rope, max_position_embeddings=TRAINED_LENGTH)


def _model(knobs: dict[str, Any], per_thread: bool = False):
    """The serving model: its rotary state shared by every thread, or (``per_thread``) none shared: Qwen-1's
    factor per thread over read-only tables; for dynamic RoPE, a fresh rotary module per call."""
    from labkit.llm.models import fresh
    from labkit.llm.stateless import Stateless
    from labkit.llm.qwen1_rotary import LazySharedRotary, PerThreadRotary, install, not_installable

    device = knobs["device"]
    if knobs["pattern"] == "dynamic-rope":
        model = dynamic_rope_model().to(device)
        if per_thread:
            model.model.rotary_emb = Stateless(model.model.rotary_emb)
        return model
    model = fresh(knobs["model"], trust_remote_code=knobs["trust_remote_code"]).to(device)
    if not_installable(model) is None:
        install(model, PerThreadRotary if per_thread else LazySharedRotary)
    return model


def _notes(knobs: dict[str, Any]) -> dict[str, str]:
    """What ran, where it is not the tiny model: the stand-in installed, or why not."""
    if knobs["model"] == TINY:
        return {}
    from labkit.llm.models import loaded
    from labkit.llm.qwen1_rotary import not_installable

    why_not = not_installable(loaded(knobs["model"], knobs["trust_remote_code"])[0])
    return {"model": knobs["model"], "rotary": "Qwen-1's stand-in installed" if why_not is None else
            f"{why_not}: served as it is, so only the model's own code can race"}


def _requests(knobs: dict[str, Any]) -> list[list[int]]:
    """The trial's prompts, in the serving model's own tokens."""
    from labkit.llm.models import prompt_ids

    return prompts(knobs["threads"], prompt_ids(knobs["model"], trust_remote_code=knobs["trust_remote_code"]))


def solo_answers(knobs: dict[str, Any], requests: list[list[int]]) -> list[list[int]]:
    """Each request generated alone on a fresh copy of the model: the right answers (for dynamic RoPE a
    shared model's answer also depends on the requests served before it; see :func:`history`)."""
    model = _model(knobs)
    return [generate(copy.deepcopy(model), [p], knobs["tokens"], knobs["device"])[0] for p in requests]


def check_answers(references: list[list[int]], answers: list[Any]) -> list[int]:
    """Indexes of the requests whose answer differs from their solo reference (None counts)."""
    return [i for i, (ref, ans) in enumerate(zip(references, answers)) if ans != ref]


def _outcome(references, answers, errors, wall: float, tokens: int, notes: dict[str, str] | None = None) -> dict[str, Any]:
    """Turn what the requests did into metrics, or raise what the trial's outcome must say."""
    failed = sorted(set(check_answers(references, answers)) | {i for i, e in enumerate(errors) if e})
    metrics = {"tokens_per_s": len(references) * tokens / wall, "requests_failed": float(len(failed)), **(notes or {})}
    first_error = next((e for e in errors if e is not None), None)
    if first_error is not None:
        raise with_metrics(first_error, metrics)
    if failed:
        raise WrongResult(f"{len(failed)} of {len(references)} requests differ from their solo run: {failed}", metrics)
    return metrics


def _serving_setup(knobs: dict) -> tuple[list[list[int]], list[list[int]]]:
    """The serving process's pool, the requests and their right answers."""
    import torch

    torch.set_num_threads(knobs["torch_threads"])
    requests = _requests(knobs)
    return requests, solo_answers(knobs, requests)


def _threads(knobs: dict, per_thread: bool = False, guard: Callable[[], Any] = contextlib.nullcontext) -> dict[str, Any]:
    """Every request in its own thread, all on one shared model, started together."""
    requests, references = _serving_setup(knobs)
    model = _model(knobs, per_thread)  # a fresh model (empty cache) serves the concurrent requests

    def serve(i: int) -> list[int]:
        with guard():
            return generate(model, [requests[i]], knobs["tokens"], knobs["device"])[0]

    answers, errors, wall = together(len(requests), serve, name="request")
    return _outcome(references, answers, errors, wall, knobs["tokens"], _notes(knobs))


@race.variant("broken", broken=True)
def broken(**knobs: Any) -> dict[str, float]:
    """One shared model, one thread per request: the threads rebuild and read the rotary cache at once."""
    return _threads(knobs)


@race.variant("lock")
def lock(**knobs: Any) -> dict[str, float]:
    """A lock around each request: correct, and the requests run one at a time."""
    one_at_a_time = threading.Lock()
    return _threads(knobs, guard=lambda: one_at_a_time)


@race.variant("per-thread")
def per_thread(**knobs: Any) -> dict[str, float]:
    """No rotary state shared: Qwen-1's tables built once and its factor per thread; dynamic RoPE on a fresh copy per call."""
    return _threads(knobs, per_thread=True)


def interleaving(threads: int = 8, tokens: int = 8) -> list[dict]:
    """The broken variant's requests on a model whose rotary module logs each rebuild and read, by
    thread (:class:`~labkit.llm.qwen1_rotary.TracedRotary`), and each request that raised. Run it
    isolated (``labkit.run_isolated(interleaving)``): it races."""
    from labkit.llm.models import tiny_model
    from labkit.llm.qwen1_rotary import TracedRotary, install

    model = tiny_model()
    rotary = install(model, TracedRotary)
    requests = prompts(threads)

    def serve(i: int) -> list[int]:
        try:
            return generate(model, [requests[i]], tokens, "cpu")[0]
        except Exception as exc:
            rotary.log.append({"thread": threading.current_thread().name, "event": f"raised {type(exc).__name__}"})
            raise

    together(threads, serve, name="request")
    return rotary.log


def evidence(log: list[dict]):
    """The rows of an :func:`interleaving` log that prove the race, as two frames: **torn** reads
    (tables holding fewer rows than the read needs, or none: inside another thread's rebuild) and
    **borrowed** factors (the factor used is not the request's own: a wrong answer)."""
    import pandas as pd

    frame = pd.DataFrame(log)
    reads = frame[frame["event"] == "reads tables"]
    own = reads["request's factor"]
    torn = reads[~(reads["tables hold"] >= reads["needs"])]
    borrowed = reads[reads["factor used"] != own]
    return torn, borrowed


def history(tokens: int = 16) -> dict[str, list[int]]:
    """One shared dynamic-RoPE model, no threads: the same short request served after a long one and
    on a fresh model. The long one leaves its scaling on the module (its ``inv_freq`` only resets
    below the trained length), so the short one is computed with it: even one request at a time, a
    shared model's answer depends on what it served before. Returns both answers."""
    long, short = prompts(8)[7], prompts(8)[1]  # 56 and 40 tokens: both past the trained length
    model = _model({"device": "cpu", "pattern": "dynamic-rope"})
    alone = generate(copy.deepcopy(model), [short], tokens, "cpu")[0]
    generate(model, [long], tokens, "cpu")
    return {"alone": alone, "after a longer request": generate(model, [short], tokens, "cpu")[0]}


class BatchingServer:
    """One worker thread drains a request queue into padded batches (dynamic micro-batching).

    Only the worker touches the model, so there is nothing to race on; requests that arrive within
    ``window`` seconds of the first one share its batch.
    """

    def __init__(self, model, tokens: int, device: str, window: float = BATCH_WINDOW_S, max_batch: int = 64):
        self.model, self.tokens, self.device, self.window, self.max_batch = model, tokens, device, window, max_batch
        self.requests: queue.Queue = queue.Queue()
        self.batches: list[int] = []  # the size of every batch served, for the notebook
        self.worker = threading.Thread(target=self._serve, name="batching-server", daemon=True)
        self.worker.start()

    def submit(self, prompt: list[int]) -> Future:
        future: Future = Future()
        self.requests.put((prompt, future))
        return future

    def close(self) -> None:
        self.requests.put(None)
        self.worker.join()

    def _serve(self) -> None:
        while (first := self.requests.get()) is not None:
            batch, closing = [first], False
            deadline = time.monotonic() + self.window
            while len(batch) < self.max_batch:
                try:
                    item = self.requests.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    closing = True
                    break
                batch.append(item)
            self.batches.append(len(batch))
            try:
                answers = generate(self.model, [p for p, _ in batch], self.tokens, self.device)
                for (_, future), answer in zip(batch, answers):
                    future.set_result(answer)
            except Exception as exc:  # noqa: BLE001 - every waiting client gets the error
                for _, future in batch:
                    future.set_exception(exc)
            if closing:
                return


@race.variant("batched")
def batched(**knobs: Any) -> dict[str, float]:
    """Client threads hand their requests to one worker thread that generates them as padded batches."""
    requests, references = _serving_setup(knobs)
    server = BatchingServer(_model(knobs), knobs["tokens"], knobs["device"])
    answers, errors, wall = together(len(requests), lambda i: server.submit(requests[i]).result(), name="request")
    server.close()
    metrics = _outcome(references, answers, errors, wall, knobs["tokens"], _notes(knobs))
    return {**metrics, "batches": float(len(server.batches))}


_worker_model = None


def _worker_start(knobs: dict, ready) -> None:
    global _worker_model
    import torch

    torch.set_num_threads(1)  # the processes are the parallelism; see the thread-storm scenario
    _worker_model = _model(knobs)
    ready.wait()


def _worker_generate(args: tuple[list[int], int, str]) -> list[int]:
    prompt, tokens, device = args
    return generate(_worker_model, [prompt], tokens, device)[0]


@race.variant("processes")
def processes(**knobs: Any) -> dict[str, float]:
    """A pool of worker processes, one model each, one torch thread each: no shared state at all."""
    size = min(usable_cores(), knobs["threads"])
    ctx = fork_context()  # forked before this process starts any thread or touches CUDA
    ready = ctx.Barrier(size + 1)
    with ctx.Pool(size, initializer=_worker_start, initargs=(knobs, ready)) as pool:
        requests = _requests(knobs)  # in this process, after the fork
        references = solo_answers(knobs, requests)
        ready.wait()  # every worker has built its model: the clock starts on serving alone
        t0 = time.monotonic()
        answers = pool.map(_worker_generate, [(p, knobs["tokens"], knobs["device"]) for p in requests], chunksize=1)
        wall = time.monotonic() - t0
    return _outcome(references, answers, [None] * len(requests), wall, knobs["tokens"], _notes(knobs))
