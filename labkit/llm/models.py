"""The embedded tiny model and tokenizer, and loading any real model.

The tiny model is a real ``transformers`` Qwen3 causal LM built from ``data/tiny-qwen3/config.json``.
Its weights come from NumPy's PCG64 generator with a fixed seed, not from torch's initialisers, so
they are the same on every machine and every torch version, and no checkpoint has to be shipped or
downloaded. The tokenizer is a byte-level BPE trained with ``tokenizers`` on ``data/corpus.txt``
(see :func:`train_tokenizer`); the trained file is kept in ``data/tiny-qwen3``.

``vocab_size`` can be raised (Qwen's 151,936 by default for :data:`QWEN_VOCAB`) for sampling-heavy
work: as in Qwen itself, the model's vocabulary is then larger than the tokenizer's.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from labkit.core.errors import BadInput
from labkit.core.scenario import Knob

TINY = "tiny"
QWEN_VOCAB = 151_936  # Qwen-1/2/3's padded vocabulary: the size the thread-storm report sampled over
SEED = 0
WEIGHTS = ("*.safetensors", "*.bin")  # what from_pretrained reads from a folder


def data_dir() -> Path:
    """Folder holding the corpus and the tiny model's config and tokenizer (package data)."""
    from importlib.resources import files

    return Path(str(files("labkit.data")))


def tiny_dir() -> Path:
    return data_dir() / "tiny-qwen3"


@functools.cache
def corpus() -> str:
    """The text the tokenizer was trained on: prompts and texts of every scenario are cut from it."""
    return (data_dir() / "corpus.txt").read_text()


@functools.cache
def corpus_ids() -> tuple[int, ...]:
    """The whole corpus in the tiny tokenizer's ids."""
    return tuple(tiny_tokenizer()(corpus())["input_ids"])


def tiny_config(vocab_size: int | None = None, **overrides: Any):
    from transformers import Qwen3Config

    config = Qwen3Config.from_pretrained(tiny_dir())
    if vocab_size is not None:
        overrides["vocab_size"] = vocab_size
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def draw_weights(model, seed: int = SEED) -> dict[str, np.ndarray]:
    """Every parameter's values, by name, from NumPy's PCG64 stream in name order (``model``'s
    parameters give the names and shapes: on the meta device will do); norm weights, which are ones,
    draw nothing.

    The embedding and the output head are N(0, 1); other linear weights N(0, 1/fan_in). The unit-scale
    head gives logits with a spread of several units, so greedy decoding has clear winners and batched
    and one-at-a-time runs agree token for token. The head is untied on purpose: with tied embeddings
    a random model mostly repeats its input token, and nothing it says would depend on positions (the
    thread-race scenario needs that it does). NumPy alone, no torch op: a process may draw them and then
    fork workers that each build the model from them (the thread-storm scenario).
    """
    rng = np.random.default_rng(seed)
    drawn = {}
    for name, param in sorted(model.named_parameters()):
        if name.endswith("norm.weight"):
            continue
        std = 1.0 if ("embed" in name or "lm_head" in name) else param.shape[-1] ** -0.5
        drawn[name] = rng.standard_normal(tuple(param.shape), dtype=np.float32) * std
    return drawn


def fill_weights(model, seed: int = SEED, weights: dict[str, np.ndarray] | None = None) -> None:
    """Overwrite every parameter with :func:`draw_weights`' values (``weights``: drawn already, for this model)."""
    import torch

    drawn = weights if weights is not None else draw_weights(model, seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.copy_(torch.from_numpy(drawn[name]))


def _on_meta(config):
    """The model's modules, with no memory behind them and no torch op run (meta tensors compute nothing)."""
    import torch
    from transformers import Qwen3ForCausalLM

    with torch.device("meta"):
        return Qwen3ForCausalLM(config)


def tiny_weights(vocab_size: int | None = None, seed: int = SEED, **overrides: Any) -> dict[str, np.ndarray]:
    """The tiny model's weights, drawn once for several :func:`tiny_model` builds (forked workers share them)."""
    return draw_weights(_on_meta(tiny_config(vocab_size, **overrides)), seed)


def tiny_model(vocab_size: int | None = None, seed: int = SEED, weights: dict[str, np.ndarray] | None = None,
               **overrides: Any):
    """Build the embedded Qwen3 model (eval mode, float32, on the CPU); ``weights`` from
    :func:`tiny_weights` with the same arguments, where they were drawn already.

    Importing the modeling code takes ~2 s on first use; processes that fork workers should import it
    before forking (:func:`tiny_weights` does), so that the workers share it.
    """
    import torch

    config = tiny_config(vocab_size, **overrides)
    where = torch.get_default_device()  # this thread's default (thread-device builds under a context)
    model = _on_meta(config)  # no weights drawn that fill_weights would overwrite (half the build, 152k vocab)
    model.to_empty(device=where)
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)  # its buffers, computed when built
    fill_weights(model, seed, weights)
    model.generation_config.pad_token_id = model.config.pad_token_id
    # Random weights have no meaningful end-of-text: every request generates exactly the tokens
    # it asked for, so tokens/s compares like with like.
    model.generation_config.eos_token_id = None
    return model.eval()


def tiny_tokenizer():
    """The embedded fast tokenizer (padding on the left, as decoder-only generation needs)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir(), padding_side="left")


def checked_model(path_or_id: str) -> str:
    """``path_or_id`` if it can name a model: ``tiny``, a hub id, or an existing folder with a readable
    config (checked before any process starts; a hub id is only known when it loads, unless
    ``HF_HUB_OFFLINE`` is set and it is not cached), else :class:`BadInput`."""
    if path_or_id == TINY:
        return path_or_id
    allowed = "give a saved model's folder, a cached hub id, or 'tiny'"
    folder = Path(path_or_id).expanduser()
    looks_like_path = path_or_id.startswith((".", "/", "~")) or path_or_id.count("/") > 1
    if looks_like_path and not folder.exists():
        raise BadInput(f"model path {path_or_id!r} does not exist; {allowed}")
    if folder.is_dir():
        try:
            config = json.loads((folder / "config.json").read_text())
        except FileNotFoundError:
            raise BadInput(f"{path_or_id!r} is not a model folder (no config.json); {allowed}") from None
        except (OSError, ValueError) as exc:
            raise BadInput(f"{path_or_id!r} has a broken config.json ({exc}); {allowed}") from None
        if not isinstance(config, dict) or "model_type" not in config:
            raise BadInput(f"{path_or_id!r} has a config.json without a model_type; {allowed}")
        if not any(next(folder.glob(pattern), None) for pattern in WEIGHTS):
            raise BadInput(f"{path_or_id!r} holds no weights ({', '.join(WEIGHTS)}); {allowed}")
        return path_or_id
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(path_or_id, "config.json"), str):
            raise BadInput(f"model {path_or_id!r} is neither a folder nor a cached hub id (HF_HUB_OFFLINE is set); {allowed}")
    return path_or_id


def model_knobs(used_for: str) -> tuple[Knob, Knob]:
    """The ``model`` and ``trust_remote_code`` knobs of every scenario that can run the user's own model."""
    return (
        Knob("model", TINY, f"'tiny' (the embedded model), a saved model's folder, or a cached hub id: {used_for}",
             validate=checked_model),
        Knob("trust_remote_code", False, "run the model's own Python code from its folder or hub repo "
             "(only for a model you trust; off unless you ask)"),
    )


def load(path_or_id: str = TINY, *, trust_remote_code: bool = False, **kwargs: Any):
    """Return ``(model, tokenizer)``: the embedded pair for ``"tiny"``, else a real model (eval mode).

    A local folder or a hub id works; no network is used unless the id is not cached locally and
    the user has not set ``HF_HUB_OFFLINE``. ``trust_remote_code`` runs the model's own code: only
    when the user asks for it.
    """
    if checked_model(path_or_id) == TINY:
        return tiny_model(**kwargs), tiny_tokenizer()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with _quiet_bars():
            model = AutoModelForCausalLM.from_pretrained(path_or_id, trust_remote_code=trust_remote_code, **kwargs).eval()
        tokenizer = AutoTokenizer.from_pretrained(path_or_id, padding_side="left", trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:  # what from_pretrained raises for what it cannot find or build
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInput(f"could not load model {path_or_id!r}: {first}") from exc
    if tokenizer.pad_token_id is None:  # many causal LMs have none; padding a batch needs one
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


@functools.cache
def loaded(path_or_id: str, trust_remote_code: bool = False):
    """:func:`load` once per process, for the scenarios that serve the user's model: every request then
    generates exactly the tokens it asks for (no end-of-text), so tokens/s compares like with like, as
    on the tiny model. Not to be changed: :func:`fresh` makes instances to change."""
    model, tokenizer = load(path_or_id, trust_remote_code=trust_remote_code)
    model.generation_config.eos_token_id = None
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def fresh(path_or_id: str = TINY, *, trust_remote_code: bool = False, **tiny_kwargs: Any):
    """A new instance of the model, made where the calling thread's default device is, as
    :func:`tiny_model` makes one: the architecture from its config, then the weights copied in. On
    ``meta`` (where ``from_pretrained`` refuses to run) that copies nothing, as on the tiny model."""
    if path_or_id == TINY:
        return tiny_model(**tiny_kwargs)
    from transformers import AutoModelForCausalLM

    source = loaded(path_or_id, trust_remote_code)[0]
    model = AutoModelForCausalLM.from_config(source.config, trust_remote_code=trust_remote_code)
    model.load_state_dict(source.state_dict())
    model.generation_config = copy.deepcopy(source.generation_config)
    return model.eval()


def prompt_ids(path_or_id: str = TINY, *, trust_remote_code: bool = False) -> tuple[int, ...]:
    """The corpus in the model's own tokens: where every scenario cuts its prompts."""
    if path_or_id == TINY:
        return corpus_ids()
    return tuple(loaded(path_or_id, trust_remote_code)[1](corpus())["input_ids"])


def config_of(path_or_id: str = TINY, *, trust_remote_code: bool = False):
    """The model's config alone (no weights): what a KV-cache estimate or a vocabulary size needs."""
    if checked_model(path_or_id) == TINY:
        return tiny_config()
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path_or_id, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise BadInput(f"could not read the config of model {path_or_id!r}: {exc}") from exc
    return getattr(config, "text_config", None) or config


def save_random(folder: str | os.PathLike, config, seed: int = SEED) -> Path:
    """Save a causal LM of ``config``'s architecture with labkit's random weights and the tiny tokenizer:
    another architecture to try labkit on, with no network. The weights are :func:`fill_weights`',
    whose logits have clear winners, so a batched greedy answer is the solo one, as with a trained model."""
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_tokenizer()
    config.vocab_size = len(tokenizer)
    config.pad_token_id = config.bos_token_id = config.eos_token_id = tokenizer.pad_token_id
    model = AutoModelForCausalLM.from_config(config)
    fill_weights(model, seed)
    with _quiet_bars():
        model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)


@contextlib.contextmanager
def _quiet_bars():
    """No progress bars while loading or saving small files: they would only clutter a notebook."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def save_tiny(folder: str | os.PathLike, vocab_size: int | None = None) -> Path:
    """Write the tiny model as a real checkpoint (config, safetensors, tokenizer) to ``folder``.

    Scenarios that need the real loading path (``from_pretrained``, accelerate's
    ``load_checkpoint_and_dispatch``) load from here.
    """
    folder = Path(folder)
    with _quiet_bars():
        tiny_model(vocab_size).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def train_tokenizer(corpus: str | os.PathLike | None = None, vocab_size: int = 1024):
    """Train the byte-level BPE that ships in ``data/tiny-qwen3`` (kept for transparency).

    ``python -m labkit.llm.models`` retrains it and rewrites the shipped files.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = Path(corpus or data_dir() / "corpus.txt")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train([str(corpus)], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        padding_side="left",
    )


if __name__ == "__main__":
    train_tokenizer().save_pretrained(tiny_dir())
    print(f"tokenizer written to {tiny_dir()}")
