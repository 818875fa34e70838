"""tokenizer-deadlock: fork after the tokenizers Rust pool ran, and the forked workers wait forever.

Source: ``shared/seeds/003`` — lmdeploy serving InternVL2-76B hung instead of raising, and
``TOKENIZERS_PARALLELISM=false`` relieved it (InternLM/lmdeploy issue 2712); the mechanism is the
one in huggingface/tokenizers issues 187 and 258. ``encode_batch`` runs on a process-wide Rust
(rayon) thread pool. ``fork`` copies the process's memory but none of its threads: the child's copy
of the pool says it is running, its worker threads do not exist, and the first batch the child
encodes waits for them forever.

The library guards against this itself, but only when ``TOKENIZERS_PARALLELISM`` is unset: a
``pthread_atfork`` hook notices the fork and turns parallelism off in the child. Older releases also
printed "The current process just got forked, after parallelism has already been used. Disabling
parallelism to avoid deadlocks..." on stdout; tokenizers 0.23.3 no longer carries that message (the
string is not in its binary), so the guard now acts silently: the ``library-guard`` variant shows it
by its outcome. Setting the variable to ``true`` (as a service that wants fast tokenizing does)
removes the guard.

Each trial loads the embedded tokenizer with ``tokenizers`` itself, encodes a batch in the trial
process (the pool starts, when parallelism is on), then has a pool of ``workers`` processes encode
batches with the tokenizer they inherited, as a DataLoader's workers would.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

from labkit.core.hazard import EXPOSED, NOT_EXPOSED, UNKNOWN, Hazard
from labkit.core.scenario import Lesson, Metric, Scenario, positive, register


def _hazard(facts: Mapping[str, Any], workers: int) -> Hazard:
    """Exposed where workers are forked and the variable asks for the pool in the child too."""
    fix = "TOKENIZERS_PARALLELISM=false before forking workers, or the spawn start method"
    version, method = facts.get("version:tokenizers"), facts.get("start_method")
    setting = facts.get("TOKENIZERS_PARALLELISM", "(unset)")
    if not version or version == "not installed":
        return Hazard("tokenizer-deadlock", NOT_EXPOSED, "tokenizers is not installed", fix)
    if method is None:
        return Hazard("tokenizer-deadlock", UNKNOWN, "the start method could not be read", fix)
    said = f"start method {method}, TOKENIZERS_PARALLELISM={setting}, tokenizers {version}"
    if method != "fork":
        return Hazard("tokenizer-deadlock", NOT_EXPOSED, f"{said}: workers start fresh, with their own pool", fix)
    if setting == "(unset)":
        return Hazard("tokenizer-deadlock", NOT_EXPOSED,
                      f"{said}: unset, tokenizers' own fork hook turns its pool off in the child (the library-guard variant)", fix)
    if setting.lower() in ("true", "1", "yes", "on"):
        return Hazard("tokenizer-deadlock", EXPOSED, f"{said}: a fork after the first batch waits forever", fix)
    return Hazard("tokenizer-deadlock", NOT_EXPOSED, f"{said}: no Rust pool to lose in a fork", fix)


deadlock = register(
    Scenario(
        name="tokenizer-deadlock",
        summary="fork after the tokenizer's Rust thread pool ran: the forked workers wait forever",
        source="seed 003 (lmdeploy hang; TOKENIZERS_PARALLELISM=false helped): lmdeploy issue 2712; tokenizers issues 187, 258",
        notebook="04_tokenizer_deadlocks",
        section=1,
        lessons=(
            Lesson("tokenizer deadlock", "forked workers hang in `encode_batch`",
                   "`fork` copies the Rust pool's state but not its threads",
                   "`TOKENIZERS_PARALLELISM=false`; the `spawn` start method; fork before the first batch"),
        ),
        confirmed_on={"tokenizers": ("0.23",)},
        confirmed_setup="the rayon pool, Linux fork; Python 3.11",
        knobs=(
            positive("workers", 2, "worker processes that encode after the fork", high=32),
            positive("batch", 64, "texts per encode_batch call", high=4096),
        ),
        metrics=(Metric("texts_per_s", "texts/s", True, "texts encoded by the workers per second"),),
        main_fix="no-parallelism",
        timeout=10.0,  # the work takes about a second; only tokenizers is imported
        quick={},
        hazard=_hazard,
    )
)

_tokenizer = None  # set in the trial process; forked workers inherit it, spawned ones load their own


def _texts(batch: int) -> list[str]:
    from labkit.llm.models import corpus

    lines = [line for line in corpus().splitlines() if line.strip()]
    return [lines[i % len(lines)] for i in range(batch)]


def _load_tokenizer() -> None:
    global _tokenizer
    if _tokenizer is None:
        from tokenizers import Tokenizer

        from labkit.llm.models import tiny_dir

        _tokenizer = Tokenizer.from_file(str(tiny_dir() / "tokenizer.json"))


def _encode(texts: list[str]) -> int:
    return sum(len(e.ids) for e in _tokenizer.encode_batch(texts))


def _serve(start_method: str, workers: int, batch: int, encode_first: bool = True) -> dict[str, float]:
    import multiprocessing as mp

    _load_tokenizer()
    texts = _texts(batch)
    jobs = [texts] * (2 * workers)
    if encode_first:
        _encode(texts)  # in the trial process: with parallelism on, the Rust pool starts here
    ctx = mp.get_context(start_method)
    t0 = time.monotonic()
    with ctx.Pool(workers, initializer=_load_tokenizer) as pool:
        pool.map(_encode, jobs, chunksize=1)
    return {"texts_per_s": len(jobs) * batch / (time.monotonic() - t0)}


@deadlock.variant("broken", broken=True, env={"TOKENIZERS_PARALLELISM": "true"}, needs_fork=True)
def broken(workers: int, batch: int) -> dict[str, float]:
    """TOKENIZERS_PARALLELISM=true, encode a batch, fork workers that encode: they wait forever."""
    return _serve("fork", workers, batch)


@deadlock.variant("no-parallelism", env={"TOKENIZERS_PARALLELISM": "false"}, needs_fork=True)
def no_parallelism(workers: int, batch: int) -> dict[str, float]:
    """TOKENIZERS_PARALLELISM=false: no Rust pool at all, so there is nothing to lose in the fork."""
    return _serve("fork", workers, batch)


@deadlock.variant("spawn", env={"TOKENIZERS_PARALLELISM": "true"})
def spawn(workers: int, batch: int) -> dict[str, float]:
    """The spawn start method: each worker is a fresh interpreter that starts its own pool."""
    return _serve("spawn", workers, batch)


@deadlock.variant("library-guard", env={"TOKENIZERS_PARALLELISM": None}, needs_fork=True)
def library_guard(workers: int, batch: int) -> dict[str, float]:
    """The variable unset: tokenizers sees the fork and disables its pool in the child (silently in 0.23)."""
    return _serve("fork", workers, batch)


@deadlock.variant("pool-after-fork", env={"TOKENIZERS_PARALLELISM": "true"}, needs_fork=True)
def pool_after_fork(workers: int, batch: int) -> dict[str, float]:
    """Fork the workers before the trial process encodes anything: each child starts its own pool."""
    return _serve("fork", workers, batch, encode_first=False)
