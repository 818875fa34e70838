"""The `model` knob: every scenario whose model matters runs on a model of the user's own, here two other
architectures built from transformers' config classes with random weights, saved to a folder (no network)."""

import json

import pytest

from labkit import BadInput, run
from labkit.core.scenario import get
from labkit.llm.models import save_random
from labkit.ui.cli import main


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from transformers import GPT2Config, LlamaConfig

    root = tmp_path_factory.mktemp("models")
    return {
        "llama": str(save_random(root / "llama", LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                             num_attention_heads=4, num_key_value_heads=2))),
        "gpt2": str(save_random(root / "gpt2", GPT2Config(n_embd=64, n_layer=2, n_head=4))),
    }


def test_the_lock_against_batching_a_b_runs_on_another_architecture(saved, capsys):
    code = main(["compare", "thread-race", "lock", "batched", "--repeats", "2", "--set", "tokens=8",
                 "--set", f"model={saved['gpt2']}", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0, result
    trials = result["sides"]["a"]["trials"] + result["sides"]["b"]["trials"]
    assert [t["outcome"] for t in trials] == ["ok"] * 4
    assert "served as it is" in trials[0]["notes"]["rotary"]  # GPT-2 has no rotary module for the stand-in


def test_the_stand_in_races_where_the_architecture_has_a_rotary_module(saved):
    trial = run("thread-race", "broken", knobs={"tokens": 12, "model": saved["llama"]}, monitor=False).trials[0]
    assert trial.outcome in ("raised", "wrong") and trial.metrics["requests_failed"] >= 1
    assert trial.notes["rotary"] == "Qwen-1's stand-in installed"


@pytest.mark.parametrize("scenario, variant, knobs", [
    ("thread-device", "explicit-device", {"tokens": 3}),
    ("oom-hang", "budget-check", {"tokens": 24}),
    ("thread-storm", "one-thread", {"workers": 2, "tokens": 2, "batch": 2}),
])
def test_the_other_scenarios_fixes_hold_on_a_saved_llama(saved, scenario, variant, knobs):
    trial = run(scenario, variant, knobs={**knobs, "model": saved["llama"]}, monitor=False).trials[0]
    assert (trial.outcome, trial.error) == ("ok", None)
    if scenario == "thread-storm":
        assert trial.notes["vocab"].startswith("1,024, from the config of")
    if scenario == "oom-hang":  # rank 1's budget came from this model's config: the prompt and half the tokens
        assert trial.metrics["tokens_generated"] == 8 + 24 // 2 - 8 + 1


@pytest.mark.parametrize("scenario, knobs, message", [
    ("thread-race", {"model": "./no/such/folder"}, "model path './no/such/folder' does not exist"),
    ("thread-race", {"model": "."}, "'.' is not a model folder (no config.json)"),
    ("thread-race", {"model": "BROKEN"}, "has a broken config.json"),
    ("thread-race", {"model": "NO_WEIGHTS"}, "holds no weights"),
    ("thread-race", {"model": "LLAMA", "pattern": "dynamic-rope"}, "pattern=dynamic-rope runs on the tiny model"),
    ("thread-storm", {"model": "LLAMA", "vocab": 4096}, "set model (its config gives the vocabulary) or vocab, not both"),
    ("oom-hang", {"trust_remote_code": "maybe"}, "trust_remote_code must be true or false, got 'maybe'"),
])
def test_a_model_that_cannot_be_one_is_refused_before_any_process_starts(saved, tmp_path, scenario, knobs, message):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{oops")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text('{"model_type": "llama"}')
    where = {"BROKEN": str(tmp_path / "broken"), "NO_WEIGHTS": str(tmp_path / "empty"), "LLAMA": saved["llama"]}
    knobs = {k: where.get(v, v) for k, v in knobs.items()}
    with pytest.raises(BadInput, match=message.replace("(", r"\(").replace(")", r"\)")):
        get(scenario).knob_values(knobs)


def test_a_switch_reads_true_and_false_as_the_command_line_writes_them():
    knob = {k.name: k for k in get("thread-race").knobs}["trust_remote_code"]
    assert [knob.check(v) for v in ("true", "1", "yes", "false", "0", "no", True)] == [True] * 3 + [False] * 3 + [True]
