"""oom-hang: two real gloo ranks; the failing rank stays alive and its peer waits in all_reduce."""

from labkit import run
from labkit.machine.system_linux import group_members


def test_broken_hangs_with_rank_0_in_the_collective_and_rank_1_waiting_for_its_engine():
    trial = run("oom-hang", "broken", timeout=15, monitor=False).trials[0]
    assert trial.outcome == "hung"
    stacks = "\n".join(trial.stacks.values())
    assert "in all_reduce" in stacks  # rank 0, waiting for its peer
    assert "in step" in stacks and "oom_hang.py" in stacks  # rank 1's main loop, waiting for its worker
    assert "generation step failed: IndexError" in trial.output  # the error was logged, then swallowed
    assert all(group_members(pid) == [] for pid in trial.stacks)


def test_budget_check_shrinks_the_request_on_every_rank():
    trial = run("oom-hang", "budget-check", monitor=False).trials[0]
    assert (trial.outcome, trial.error) == ("ok", None)
    # rank 1 holds 128 KiB / (4 sequences x 1 KiB per token) = 32 tokens: 8 of prompt, 25 new
    assert trial.metrics["tokens_generated"] == 25


def test_collective_timeout_raises_well_inside_the_trial_timeout():
    trial = run("oom-hang", "collective-timeout", timeout=30, monitor=False).trials[0]
    assert trial.outcome == "raised" and trial.seconds < 25
    assert "rank 1" in trial.error and "generation step failed: IndexError" in trial.error
