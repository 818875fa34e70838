"""The names labkit reads from transformers and accelerate, checked against the installed releases.

A release that renames one fails here, with the name, before a scenario fails for a reason that
looks like the bug it reproduces (transformers 5.24's ``past_key_values`` -> ``cache``).
"""

import inspect
import warnings

import pytest
import torch

from labkit.llm import upstream
from labkit.llm.models import tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def test_the_cache_argument_is_the_current_one_and_a_skip_key(model):
    name = upstream.cache_argument(model)
    assert name in upstream.skip_keys(model) and name in inspect.signature(model.forward).parameters
    ids = torch.tensor([[5, 6, 7]])
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # a deprecated name warns: then it is not the current one
        with torch.no_grad():
            out = model(input_ids=ids, use_cache=True)
            cache = upstream.returned_cache(out, model)
            model(input_ids=ids[:, -1:], use_cache=True, **{name: cache})
    assert cache.get_seq_length() == 4  # the second step grew the same cache: it was used


def test_cache_tensors_reads_a_cache_and_the_legacy_tuples(model):
    with torch.no_grad():
        cache = upstream.returned_cache(model(input_ids=torch.tensor([[5, 6]]), use_cache=True), model)
    pairs = upstream.cache_tensors(cache)
    assert len(pairs) == model.config.num_hidden_layers and pairs[0][0].shape[-2] == 2
    assert upstream.cache_tensors(tuple(pairs))[1][1] is pairs[1][1]


def test_the_legacy_wrapper_keeps_the_forward_signature(model):
    from labkit.scenarios.device_mismatch import legacy_cache_forward

    wrapped = tiny_model()
    legacy_cache_forward(wrapped)
    name = upstream.cache_argument(wrapped)
    with torch.no_grad():
        out = wrapped(input_ids=torch.tensor([[5, 6]]), use_cache=True)
        past = upstream.returned_cache(out, name)
        assert isinstance(past, tuple) and isinstance(past[0], tuple)
        again = wrapped(input_ids=torch.tensor([[7]]), use_cache=True, **{name: past})
    assert upstream.cache_tensors(upstream.returned_cache(again, name))[0][0].shape[-2] == 3


def test_dispatch_leaves_a_top_hook_and_the_planner_its_no_split_list(model):
    from accelerate import dispatch_model

    assert upstream.no_split_modules(model) == ["Qwen3DecoderLayer"]
    dispatched = dispatch_model(tiny_model(), {"": "cpu"}, main_device="cpu", force_hooks=True)
    assert isinstance(upstream.top_hook(dispatched).io_same_device, bool)


def test_a_missing_name_says_which_and_the_versions():
    class Bare(torch.nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(upstream.UpstreamChanged, match=r"Bare has no _skip_keys_device_placement \(installed: transformers"):
        upstream.cache_argument(Bare())
    with pytest.raises(upstream.UpstreamChanged, match="has no accelerate top hook"):
        upstream.top_hook(Bare())
