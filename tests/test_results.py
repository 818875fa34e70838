"""Results are immutable, read back from what labkit wrote, and say how each trial ended as an Outcome."""

import dataclasses
import json
import threading

import pytest

from labkit import Comparison, Outcome, Trial, TrialSet, compare, run, run_isolated, variants_table
from labkit.ui.cli import main
from labkit.core.harness import fork_context
from labkit.isolation.stacks import frames


def test_a_run_s_json_reads_back_as_the_same_trials(cheap, tmp_path, capsys):
    assert main(["run", "test-hang", "--variant", "broken", "--timeout", "2", "--json"]) == 0
    path = tmp_path / "run.json"
    path.write_text(capsys.readouterr().out)
    (loaded,) = TrialSet.load(path)
    assert loaded.to_dict() == json.loads(path.read_text())
    trial = loaded.trials[0]
    assert trial.outcome is Outcome.HUNG and trial.stacks  # hung, with stacks, typed again
    assert "locks_up" in set(trial.stack_frames().function)


def test_a_comparison_and_a_tour_s_results_read_back(cheap, tmp_path):
    from labkit.ui.tour import tour

    result = compare("test-count", "slow", "fast", repeats=2, monitor=False)
    path = tmp_path / "compare.json"
    path.write_text(result.to_json())
    (again,) = Comparison.load(path)
    assert again.verdict == result.verdict and again.stopped == result.stopped
    assert [s.variant for s in TrialSet.load(path)] == ["slow", "fast"]
    report = tour(tmp_path / "tour", repeats=2, only=["test-count"])
    sets = TrialSet.load(report.folder / "results.json")
    assert [(s.variant, len(s.trials)) for s in sets] == [("slow", 2), ("fast", 2)]


def test_results_cannot_be_changed_in_place(cheap):
    trials = run("test-count", "fast", repeats=1, monitor=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        trials.trials[0].outcome = "ok"
    more = trials.adding(trials.trials[0])
    assert len(trials.trials) == 1 and len(more.trials) == 2


def test_variants_read_side_by_side_one_row_each():
    ok = Trial("s", "fast", 0, Outcome.OK, None, 1.26, {"tokens_per_s": 40.04}, {})
    raised = Trial("s", "risky", 0, Outcome.RAISED, "RuntimeError: boom\n  in a worker", 0.5, {"failed": 3.0}, {},
                   notes={"device": "cpu"})
    table = variants_table({"fast": ok, "risky": raised}, digits=1, notes=True, errors=True)
    assert list(table.index) == ["fast", "risky"]
    assert list(table.columns) == ["outcome", "seconds", "tokens_per_s", "failed", "device", "error"]
    assert table.loc["fast", "tokens_per_s"] == 40.0 and table.loc["fast", "seconds"] == 1.3
    assert table["failed"].isna().tolist() == [True, False]  # a metric one trial lacks is missing, not 0
    assert table.loc["risky", "error"] == "RuntimeError: boom" and table.loc["fast", "error"] == ""
    assert list(variants_table({"fast": ok}, metrics=[]).columns) == ["outcome", "seconds"]


def test_a_file_without_trials_is_refused_with_what_was_expected(tmp_path):
    path = tmp_path / "other.json"
    path.write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="labkit run/compare --json"):
        TrialSet.load(path)


def test_faulthandler_text_becomes_frames():
    text = ('Thread 0x00007f01 (most recent call first):\n  File "/x/pool.py", line 125 in worker\n'
            '  File "/x/threading.py", line 982 in run\n\n'
            'Current thread 0x00007f00 (most recent call first):\n  File "/x/scen.py", line 75 in _encode\n'
            '  File "<frozen>", line ??? in <module>\n')
    rows = list(frames({42: text}))
    assert [(f.function, f.depth, f.main) for f in rows] == [("worker", 0, False), ("run", 1, False),
                                                            ("_encode", 0, True), ("<module>", 1, True)]
    assert rows[2].line == 75 and rows[3].line is None and {f.pid for f in rows} == {42}


def test_workers_are_not_forked_from_a_process_that_runs_threads():
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, name="busy-elsewhere")
    other.start()
    try:
        with pytest.raises(RuntimeError, match="busy-elsewhere"):
            fork_context()
    finally:
        stop.set()
        other.join()
    alone = run_isolated(lambda: fork_context().get_start_method(), timeout=60)  # a trial runs no other thread
    assert (alone.outcome, alone.value) == ("ok", "fork")
