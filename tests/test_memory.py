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
