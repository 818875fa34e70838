"""The KV-cache estimator against a real cache and against known model configurations."""

import pytest
import torch

from labkit import cache_held_bytes, kv_cache_bytes
from labkit.llm import models
from labkit.llm.upstream import returned_cache


def test_matches_the_bytes_a_real_cache_holds_after_generate():
    model = models.tiny_model()
    prompt, new, batch = 10, 7, 3
    out = model.generate(torch.randint(0, 1000, (batch, prompt)), max_new_tokens=new, do_sample=False,
                         return_dict_in_generate=True)
    cache = returned_cache(out, model)
    held = cache_held_bytes(cache)
    assert held > 0
    cached_tokens = cache.get_seq_length()  # the last new token is never fed back, so it is not cached
    assert cached_tokens == prompt + new - 1
    assert kv_cache_bytes(model.config, batch, cached_tokens, torch.float32) == held


@pytest.mark.parametrize(
    "make, per_token",
    [
        # Llama-2-7B: 32 layers x 32 KV heads x 128, fp16: the well-known 0.5 MiB per token
        (lambda: __import__("transformers").LlamaConfig(num_hidden_layers=32, num_attention_heads=32,
                                                        num_key_value_heads=32, hidden_size=4096), 512 * 1024),
        # Qwen2-7B: 28 layers, grouped-query attention with 4 KV heads of 128: 56 KiB per token in bf16
        (lambda: __import__("transformers").Qwen2Config(num_hidden_layers=28, num_attention_heads=28,
                                                        num_key_value_heads=4, hidden_size=3584), 56 * 1024),
    ],
)
def test_known_configurations(make, per_token):
    assert kv_cache_bytes(make(), batch=1, seq_len=1, dtype="bfloat16") == per_token
    assert kv_cache_bytes(make(), batch=4, seq_len=2048, dtype=torch.float16) == per_token * 4 * 2048


@pytest.mark.parametrize("text", ["24GiB", "1.5MiB", "700KiB", "80GB", "500MB", "3KB", "2Gb", "123"])
def test_sizes_are_read_as_accelerate_reads_max_memory(text):
    from accelerate.utils import convert_file_size_to_int

    from labkit.llm.memory import parse_size

    assert parse_size(text) == convert_file_size_to_int(int(text) if text.isdigit() else text)


@pytest.mark.parametrize("text", ["lots", "-1GiB", "0", ""])
def test_a_size_that_is_not_one_is_refused(text):
    from labkit import BadInput
    from labkit.llm.memory import parse_size

    with pytest.raises(BadInput, match=f"memory {text!r}"):
        parse_size(text)
