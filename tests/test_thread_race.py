"""thread-race: real threads on one model with Qwen-1's shared rotary cache, and its four fixes."""

import threading

import pytest

from labkit import WrongResult, run
from labkit.llm import qwen1_rotary
from labkit.scenarios import thread_race

QUICK = {"tokens": 12}


def test_broken_fails_every_trial():
    trials = run("thread-race", "broken", repeats=3, knobs=QUICK, monitor=False).trials
    assert [t.outcome for t in trials if t.outcome not in ("raised", "wrong")] == []
    for t in trials:
        assert t.metrics["requests_failed"] >= 1
        if t.outcome == "raised":  # the report's TypeError, or a table read before its rebuild ended
            assert t.error.startswith(("TypeError: cannot unpack non-iterable NoneType", "IndexError", "RuntimeError"))


@pytest.fixture(scope="module")
def fixes(side_by_side):
    return side_by_side("thread-race", ["lock", "per-thread", "batched", "processes"], knobs=QUICK)


@pytest.mark.parametrize("variant", ["lock", "per-thread", "batched", "processes"])
def test_every_fix_never_fails(fixes, variant):  # `labkit run --repeats 5`: 5 ok each
    t = fixes[variant]
    assert (t.outcome, t.error, t.metrics["requests_failed"]) == ("ok", None, 0)


def test_the_detector_catches_a_planted_corruption():
    references = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    answers = [list(r) for r in references]
    assert thread_race.check_answers(references, answers) == []
    answers[1][2] = 0  # one token of one request, changed
    assert thread_race.check_answers(references, answers) == [1]
    with pytest.raises(WrongResult, match=r"1 of 3 requests differ from their solo run: \[1\]") as caught:
        thread_race._outcome(references, answers, [None] * 3, wall=1.0, tokens=3)
    assert caught.value.metrics["requests_failed"] == 1


@pytest.fixture(scope="module")
def model():
    return thread_race._model(thread_race.race.knob_values())


def test_the_batching_server_returns_each_request_its_own_answer(model):
    requests = thread_race.prompts(8)
    alone = [thread_race.generate(model, [p], 16, "cpu")[0] for p in requests]
    server = thread_race.BatchingServer(model, 16, "cpu")
    answers = [None] * 8

    def client(i):
        answers[i] = server.submit(requests[i]).result()

    clients = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in clients:
        t.start()
    for t in clients:
        t.join()
    server.close()
    assert answers == alone
    assert sum(server.batches) == 8


def test_the_fixed_rotary_computes_what_the_lazy_one_does_alone(model):
    requests = thread_race.prompts(4)
    lazy = [thread_race.generate(model, [p], 16, "cpu")[0] for p in requests]
    qwen1_rotary.install(model, qwen1_rotary.PerThreadRotary)
    try:
        fixed = [thread_race.generate(model, [p], 16, "cpu")[0] for p in requests]
    finally:
        qwen1_rotary.install(model)
    assert fixed == lazy
    assert {qwen1_rotary.ntk_alpha(len(p)) for p in requests} == {1.0, 3.0}  # both factors in play


def test_meta_is_no_device_to_generate_on():
    from labkit import BadInput, get

    with pytest.raises(BadInput, match="device 'meta' holds no data"):
        get("thread-race").knob_values({"device": "meta"})


@pytest.mark.gpu
def test_on_a_gpu_the_race_and_its_fixes_hold_and_the_monitor_sees_the_gpu():
    gpu = {**QUICK, "device": "cuda:0"}
    assert run("thread-race", "broken", knobs=gpu, monitor=False).trials[0].outcome in ("raised", "wrong")
    for variant in ("lock", "batched", "processes"):
        trial = run("thread-race", variant, knobs=gpu).trials[0]
        assert (trial.outcome, trial.error) == ("ok", None)
        assert (trial.samples.source == "gpu0").any()  # SM utilisation and memory through NVML


def test_the_interleaving_log_shows_the_race_with_threads_and_nothing_without():
    from labkit import run_isolated

    alone = run_isolated(thread_race.interleaving, {"threads": 1}, timeout=120)
    together = run_isolated(thread_race.interleaving, {"threads": 8}, timeout=120)
    assert alone.outcome == together.outcome == "ok"
    assert [len(rows) for rows in thread_race.evidence(alone.value)] == [0, 0]
    assert sum(len(rows) for rows in thread_race.evidence(together.value)) > 0, together.value


DYNAMIC = {"pattern": "dynamic-rope"}  # 32 tokens a request: 24 of 24 trials failed here (12 tokens: 14 of 16)


def test_transformers_own_dynamic_rope_races_and_only_stateless_rotary_state_fixes_it(side_by_side):
    """The library's own code path (dynamic_rope_update), not a stand-in."""
    broken = run("thread-race", "broken", repeats=2, knobs=DYNAMIC, monitor=False).trials
    assert all(t.outcome in ("raised", "wrong") for t in broken), [t.error for t in broken]
    trials = side_by_side("thread-race", ["per-thread", "batched"], knobs=DYNAMIC)
    assert trials["per-thread"].outcome == "ok", trials["per-thread"].error
    # every row of a batch is scaled by the batch's longest position: short requests get other answers
    assert trials["batched"].outcome == "wrong" and trials["batched"].metrics["requests_failed"] >= 1


def test_a_shared_dynamic_rope_model_answers_by_what_it_served_before():
    from labkit import run_isolated

    answers = run_isolated(thread_race.history, timeout=120).value
    assert answers["alone"] != answers["after a longer request"]
