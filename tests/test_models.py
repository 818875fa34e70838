import pytest
import torch

from labkit import BadInput
from labkit.llm import models


@pytest.fixture(scope="module")
def tiny():
    return models.load()


def test_weights_are_the_same_every_time(tiny):
    model, _ = tiny
    again = models.tiny_model()
    for (name, p), (_, q) in zip(model.named_parameters(), again.named_parameters()):
        assert torch.equal(p, q), name
    # pinned: the first embedding values come from NumPy's PCG64 with seed 0, on any torch version
    first = model.get_input_embeddings().weight[0, :3].tolist()
    assert first == pytest.approx([-0.9248479, -0.0278395, -0.9791431], abs=1e-6)


def test_built_without_drawing_weights_first_it_is_the_plainly_built_model(tiny):
    """tiny_model builds on the meta device (its weights are all filled next): every buffer that the
    model's construction computes must come out as a plain construction's, and so must the logits."""
    from transformers import Qwen3ForCausalLM

    _, tok = tiny
    model = models.tiny_model()
    plain = Qwen3ForCausalLM(models.tiny_config())
    models.fill_weights(plain)
    buffers, plain_buffers = dict(model.named_buffers()), dict(plain.named_buffers())
    assert buffers.keys() == plain_buffers.keys()
    assert all(torch.equal(buffers[name], plain_buffers[name]) for name in buffers)
    ids = tok(["A lock"], return_tensors="pt").input_ids
    assert torch.equal(model(ids).logits, plain.eval()(ids).logits)
    shared = models.tiny_model(weights=models.tiny_weights())  # one draw for several workers (thread-storm)
    assert torch.equal(shared(ids).logits, model(ids).logits)


def test_tokenizer_round_trips_and_generation_is_batch_invariant(tiny):
    model, tok = tiny
    prompts = ["Rotary position embeddings turn each position", "A lock"]
    assert tok.decode(tok(prompts[0]).input_ids) == prompts[0]
    batch = tok(prompts, return_tensors="pt", padding=True)
    together = model.generate(**batch, max_new_tokens=32, do_sample=False)[:, -32:]
    for i, prompt in enumerate(prompts):
        alone = model.generate(**tok([prompt], return_tensors="pt"), max_new_tokens=32, do_sample=False)[:, -32:]
        assert torch.equal(alone[0], together[i])


def test_a_large_vocabulary_model_scores_every_id_and_reads_the_tokenizer_s_ids(tiny):
    """Sampling over Qwen's vocabulary (thread-storm) needs logits over all of it from real prompts."""
    _, tok = tiny
    model = models.tiny_model(vocab_size=models.QWEN_VOCAB)
    logits = model(tok(["A lock"], return_tensors="pt").input_ids).logits
    assert logits.shape[-1] == models.QWEN_VOCAB and torch.isfinite(logits).all()


def test_saved_checkpoint_loads_through_from_pretrained(tmp_path, tiny):
    model, tok = tiny
    folder = models.save_tiny(tmp_path / "tiny")
    loaded, loaded_tok = models.load(str(folder))
    ids = tok(["The current device"], return_tensors="pt").input_ids
    assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert len(loaded_tok) == len(tok)


def test_a_missing_model_path_is_refused():
    with pytest.raises(BadInput, match="model path './no/such/model' does not exist"):
        models.load("./no/such/model")
