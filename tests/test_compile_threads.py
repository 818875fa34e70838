"""compile-threads: torch's own per-thread dynamo config (torch >= 2.12), the recompile limit set in the
main thread and the compiled step served from a pool thread, and three fixes."""

import pytest

from labkit import run


def test_broken_hits_the_default_limit_in_the_serving_thread_with_torch_s_own_error():
    trial = run("compile-threads", "broken", monitor=False).trials[0]
    assert trial.outcome == "raised" and trial.error.startswith("FailOnRecompileLimitHit"), trial.error
    assert (trial.metrics["graphs"], trial.metrics["shapes_uncompiled"]) == (8, 4)
    assert trial.notes["limit"] == "the main thread set 64; the serving thread has 8"


def test_without_fullgraph_the_step_runs_uncompiled_and_says_so():
    trial = run("compile-threads", "broken", knobs={"fullgraph": "false"}, monitor=False).trials[0]
    assert trial.outcome == "wrong" and "4 of 12 batch sizes ran uncompiled" in trial.error


def test_within_the_default_limit_the_same_code_is_fine():  # the limit, not threads as such, is the cause
    trial = run("compile-threads", "broken", knobs={"shapes": 8}, monitor=False).trials[0]
    assert (trial.outcome, trial.metrics["graphs"]) == ("ok", 8)


@pytest.fixture(scope="module")
def fixes(side_by_side):
    return side_by_side("compile-threads", ["thread-config", "copy-context", "mark-dynamic"])


@pytest.mark.parametrize("variant, graphs", [("thread-config", 12), ("copy-context", 12), ("mark-dynamic", 2)])
def test_every_fix_compiles_every_batch_size(fixes, variant, graphs):
    trial = fixes[variant]
    assert (trial.outcome, trial.metrics["shapes_uncompiled"], trial.metrics["graphs"]) == ("ok", 0, graphs)
