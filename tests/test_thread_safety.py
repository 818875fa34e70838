"""`labkit check threads`: the race detector on a model of the user's own, here built from transformers'
config classes with random weights and saved to a folder (no network)."""

import json

import pytest

from labkit import BadInput

from labkit.llm.models import save_random
from labkit.llm.thread_safety import check_thread_safety
from labkit.ui.cli import main


def test_it_flags_the_tiny_model_with_qwen1_s_rotary_and_passes_it_without():
    racy = check_thread_safety(qwen1_rotary=True)
    assert racy.outcome == "ok" and racy.failed >= 1 and racy.verdict.startswith("not thread-safe"), racy.to_frame()
    plain = check_thread_safety()
    assert plain.failed == 0 and plain.verdict.startswith("no race seen"), plain.to_frame()


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_other_architectures_saved_to_a_folder_pass(tmp_path, architecture):
    from transformers import GPT2Config, LlamaConfig

    config = (LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2) if architecture == "llama"
              else GPT2Config(n_embd=64, n_layer=2, n_head=4))
    result = check_thread_safety(str(save_random(tmp_path / architecture, config)))
    assert result.outcome == "ok" and result.failed == 0, result.to_frame()


def test_the_command_says_it_in_json_and_by_its_exit_status(capsys):
    assert main(["check", "threads", "--qwen1-rotary", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["verdict"].startswith("not thread-safe") and len(report["requests"]) == 8


@pytest.mark.parametrize("args, message", [
    (["check", "threads", "--threads", "0"], "threads must be at least 1, got 0"),
    (["check", "threads", "--model", "./no/such/folder"], "model path './no/such/folder' does not exist"),
    (["check", "threads", "--model", "."], "'.' is not a model folder (no config.json)"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, args, message):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_your_own_prompts_are_served_in_turn():
    from labkit.llm.models import tiny_tokenizer

    texts = ["The workshop starts", "Threads share the model and the cache"]
    result = check_thread_safety(threads=4, tokens=8, prompts=texts)
    lengths = [len(tiny_tokenizer()(t)["input_ids"]) for t in texts]
    assert result.failed == 0 and [r["prompt_tokens"] for r in result.requests] == lengths * 2


def test_prompts_must_be_texts():
    with pytest.raises(BadInput, match="prompts must be a list of non-empty texts"):
        check_thread_safety(prompts="one string, not a list")
