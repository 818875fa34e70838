"""Which failure modes this machine and environment are exposed to, judged from ``doctor``'s facts.

One rule per failure mode, each a plain function of the facts (and of what only the user knows: how
many worker processes they run), returning a verdict (``exposed``, ``not exposed``, ``unknown``), the
evidence, and the one-line fix. Rules read facts, not the live process, so a test can hand them any.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

EXPOSED, NOT_EXPOSED, UNKNOWN = "exposed", "not exposed", "unknown"


@dataclass(frozen=True)
class Hazard:
    failure: str  # the scenario that reproduces it
    verdict: str
    evidence: str
    fix: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def _tokenizers(facts: dict[str, Any], workers: int) -> Hazard:
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


def _storm(facts: dict[str, Any], workers: int) -> Hazard:
    threads, cores = facts.get("torch_intra_op_threads"), facts.get("usable_cores")
    fix = "torch.set_num_threads(cores // workers) in each worker process (or OMP_NUM_THREADS before torch loads)"
    if not threads or not cores:
        return Hazard("thread-storm", UNKNOWN, "torch's pool size could not be read", fix)
    said = f"torch's pool {threads} threads x {workers} worker process{'es' if workers > 1 else ''} on {cores} usable cores"
    if threads * workers > cores:
        return Hazard("thread-storm", EXPOSED, f"{said}: {threads * workers} compute threads", fix)
    hint = "" if workers > 1 else " (say how many worker processes you run: --workers N)"
    return Hazard("thread-storm", NOT_EXPOSED, f"{said}: they fit{hint}", fix)


def _spinning(facts: dict[str, Any], workers: int) -> Hazard:
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


def _thread_device(facts: dict[str, Any], workers: int) -> Hazard:
    fix = "name the device index everywhere (\"cuda:1\"), or make and use tensors in one thread"
    gpus, visible = facts.get("cuda_devices") or [], facts.get("CUDA_VISIBLE_DEVICES", "(unset)")
    if len(gpus) > 1 and visible == "(unset)":
        return Hazard("thread-device", EXPOSED, f"{len(gpus)} GPUs and CUDA_VISIBLE_DEVICES unset: a bare \"cuda\" is "
                      "cuda:0 in a new thread, whatever the main thread set", fix)
    return Hazard("thread-device", NOT_EXPOSED, f"{len(gpus)} GPU(s) visible to torch (CUDA_VISIBLE_DEVICES={visible})", fix)


def _cache_moved(facts: dict[str, Any], workers: int) -> Hazard:
    fix = "dispatch with skip_keys=model._skip_keys_device_placement, under the cache argument's current name"
    moved = facts.get("dispatch_moves_cache")
    if moved is None:
        return Hazard("device-mismatch", UNKNOWN, "accelerate or transformers could not be asked", fix)
    pair = f"transformers {facts.get('version:transformers')}, accelerate {facts.get('version:accelerate')}"
    if moved:
        return Hazard("device-mismatch", EXPOSED, f"{pair}: accelerate's hook moves the cache generate hands over", fix)
    return Hazard("device-mismatch", NOT_EXPOSED, f"{pair}: the hook leaves a DynamicCache where it is (code that "
                  "hands the cache over as tuples is still exposed)", fix)


def _collective(facts: dict[str, Any], workers: int) -> Hazard:
    timeout = facts.get("distributed_default_timeout")
    fix = "init_process_group(..., timeout=timedelta(seconds=...)), and workers that hand their errors on"
    if timeout is None:
        return Hazard("oom-hang", UNKNOWN, "torch.distributed is not available", fix)
    return Hazard("oom-hang", UNKNOWN, f"torch.distributed's default collective timeout is {timeout}: a collective whose "
                  "peer failed waits that long unless your code passes timeout=", fix)


def _compile_config(facts: dict[str, Any], workers: int) -> Hazard:
    fix = "set torch._dynamo.config in each serving thread, or run its work in contextvars.copy_context()"
    per_thread, torch = facts.get("dynamo_config_per_thread"), f"torch {facts.get('version:torch')}"
    if per_thread is None:
        return Hazard("compile-threads", UNKNOWN, f"{torch}: dynamo could not be asked", fix)
    if per_thread:
        return Hazard("compile-threads", EXPOSED, f"{torch}: a torch._dynamo.config setting made in one thread is the "
                      "default in another (probed): a limit raised in the main thread does not reach a thread pool", fix)
    return Hazard("compile-threads", NOT_EXPOSED, f"{torch}: dynamo's config is shared by every thread (probed)", fix)


def _not_visible(failure: str, why: str, fix: str) -> Callable[[dict[str, Any], int], Hazard]:
    return lambda facts, workers: Hazard(failure, UNKNOWN, why, fix)


RULES: tuple[Callable[[dict[str, Any], int], Hazard], ...] = (
    _not_visible("thread-race", "depends on your model's code: a forward that writes module state (notebook 01)",
                 "one worker thread that batches, or a lock; no module state shared between calls"),
    _cache_moved, _thread_device, _compile_config, _storm, _spinning, _tokenizers, _collective,
    _not_visible("streamer-hang", "depends on your streaming code (notebook 04)",
                 "the worker ends the stream and hands its error to the caller; a streamer timeout as a backstop"),
)


def hazards(facts: dict[str, Any], workers: int = 1) -> list[Hazard]:
    """Every rule's judgement of ``facts`` (what :func:`~labkit.ui.doctor.doctor` reads)."""
    return [rule(facts, workers) for rule in RULES]
