"""Is a model safe to serve from threads? The race detector of ``thread-race``, for the user's own model.

N threads generate at once on one shared model, prompts of different lengths; every answer is
compared with the same prompt generated alone on a fresh copy of the model (greedy decoding, so the
right answer is known). Each request is ``ok``, ``wrong`` (with the first token that differs) or
``raised``. It runs isolated like a trial: a hang comes back ``hung``, with stacks.

A clean check says no race was *seen*: a race that fails one run in ten may pass one check. A failing
check is proof.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Sequence

import pandas as pd

from labkit.core.errors import BadInput

@dataclass(frozen=True)
class ThreadSafety:
    model: str
    threads: int
    outcome: str  # the isolated check's: ok (it ran), hung, crashed, raised (it could not run)
    requests: tuple[dict[str, Any], ...] = ()  # index, prompt_tokens, outcome, first_difference, error
    error: str | None = None
    stacks: dict[int, str] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return sum(r["outcome"] != "ok" for r in self.requests)

    @property
    def verdict(self) -> str:
        if self.outcome != "ok":
            return f"the check itself {self.outcome}: {self.error}"
        if self.failed:
            return (f"not thread-safe: {self.failed} of {len(self.requests)} requests from {self.threads} threads "
                    "raised or answered differently from the same request alone")
        return (f"no race seen: {len(self.requests)} requests from {self.threads} threads each answered as alone "
                "(a rare race can pass one check: run it again, or with more threads)")

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(list(self.requests), columns=["index", "prompt_tokens", "outcome", "first_difference", "error"])

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "threads": self.threads, "outcome": self.outcome, "verdict": self.verdict,
                "requests": list(self.requests), "error": self.error, "stacks": dict(self.stacks)}


def _first_difference(reference: list[int], answer: list[int]) -> int | None:
    pairs = list(zip(reference, answer))
    return next((i for i, (a, b) in enumerate(pairs) if a != b), None if len(reference) == len(answer) else len(pairs))


def _check(model: str, threads: int, requests: int, tokens: int, qwen1_rotary: bool,
           trust_remote_code: bool = False, texts: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """In the isolated child: serve ``requests`` prompts from ``threads`` threads on one model."""
    import torch

    from labkit.core.harness import together
    from labkit.llm.models import corpus, load
    from labkit.scenarios.thread_race import generate, prompts as cut

    torch.set_num_threads(1)
    shared, tokenizer = load(model, trust_remote_code=trust_remote_code)
    if qwen1_rotary:  # the thread-race stand-in, to see the check fail
        from labkit.llm.qwen1_rotary import install

        install(shared)
    if texts:  # the user's own prompts, in turn
        prompts = [tokenizer(texts[i % len(texts)])["input_ids"] for i in range(requests)]
    else:  # thread-race's mix of short and long prompts
        prompts = cut(requests, tokenizer(corpus())["input_ids"])
    alone = [generate(copy.deepcopy(shared), [p], tokens, "cpu")[0] for p in prompts]
    answers: list[Any] = [None] * requests
    errors: list[BaseException | None] = [None] * requests

    def serve(thread: int) -> None:
        for i in range(thread, requests, threads):  # thread t serves requests t, t + threads, ...
            try:
                answers[i] = generate(shared, [prompts[i]], tokens, "cpu")[0]
            except Exception as exc:  # noqa: BLE001 - each request's failure is reported
                errors[i] = exc

    together(threads, serve, name="request")
    rows = []
    for i, (prompt, ref, ans, err) in enumerate(zip(prompts, alone, answers, errors)):
        outcome = "raised" if err else ("ok" if ans == ref else "wrong")
        rows.append({"index": i, "prompt_tokens": len(prompt), "outcome": outcome,
                     "first_difference": _first_difference(ref, ans) if outcome == "wrong" else None,
                     "error": f"{type(err).__name__}: {err}" if err else None})
    return rows


def check_thread_safety(model: str = "tiny", *, threads: int = 8, requests: int | None = None, tokens: int = 16,
                        prompts: Sequence[str] = (), timeout: float = 300.0, qwen1_rotary: bool = False,
                        trust_remote_code: bool = False) -> ThreadSafety:
    """Serve ``requests`` (default: one per thread) from ``threads`` threads on one ``model`` (``tiny``, a
    local folder, or a hub id you have cached) and compare every answer with the same request alone.
    ``prompts``: your own texts, used in turn (default: short and long ones cut from labkit's corpus);
    decoding is greedy, so that the right answer is known.
    ``qwen1_rotary``: install Qwen-1's racy rotary module first (the Llama family only); ``trust_remote_code``:
    run the model's own code (only when you trust it)."""
    from labkit.isolation.isolated import run_isolated
    from labkit.llm.models import checked_model

    checked_model(model)
    requests = threads if requests is None else requests
    for name, value in (("threads", threads), ("requests", requests), ("tokens", tokens)):
        if value < 1:
            raise BadInput(f"{name} must be at least 1, got {value}")
    if isinstance(prompts, str) or not all(isinstance(p, str) and p for p in prompts):
        raise BadInput("prompts must be a list of non-empty texts")
    result = run_isolated(_check, {"model": model, "threads": threads, "requests": requests, "tokens": tokens,
                                   "qwen1_rotary": qwen1_rotary, "trust_remote_code": trust_remote_code,
                                   "texts": tuple(prompts)},
                         timeout=timeout)
    if result.outcome != "ok":
        return ThreadSafety(model, threads, str(result.outcome), error=result.error, stacks=dict(result.stacks))
    return ThreadSafety(model, threads, "ok", tuple(result.value))
