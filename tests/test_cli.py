"""The command line: contracts from DESIGN.md, and bad input as one line with exit status 2."""

import json
import subprocess
import sys
import threading

import pytest

from labkit import Metric, Scenario
from labkit import scenario as registry
from labkit.cli import main
from labkit.isolate import group_members

QUICK = ["--set", "workers=2", "--set", "tokens=2", "--set", "vocab=4096"]


def locks_up():
    lock = threading.Lock()
    lock.acquire()
    lock.acquire()


@pytest.fixture
def hang_scenario(monkeypatch):
    """A scenario that deadlocks, registered for one test only."""
    hang = Scenario("test-hang", summary="a lock taken twice", metrics=(Metric("x", "1"),), timeout=30)
    hang.variant("broken", broken=True)(locks_up)
    monkeypatch.setitem(registry._REGISTRY, hang.name, hang)
    return hang


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_names_every_scenario_and_variant(capsys):
    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    assert "thread-storm:" in out and "--variant broken (broken)" in out and "--variant one-thread" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "nope", "--variant", "broken"], "unknown scenario 'nope'; allowed:"),
        (["run", "thread-storm", "--variant", "nope"], "unknown variant 'nope' of thread-storm; allowed: broken"),
        (["run", "thread-storm", "--variant", "broken", "--threads", "0"], "threads=0 is out of range; allowed: 1 <= threads"),
        (["run", "thread-storm", "--variant", "broken", "--set", "workers"], "--set takes KNOB=VALUE"),
        (["run", "thread-storm", "--variant", "broken", "--repeats", "0"], "repeats must be at least 1"),
        (["compare", "thread-storm", "broken", "one-thread", "--metric", "joy"], "unknown metric 'joy'"),
        (["run", "thread-storm"], "the following arguments are required: --variant"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, args, message):
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("labkit: error: ") and message in err


def test_the_console_script_exits_2_without_a_traceback():
    proc = subprocess.run([sys.executable, "-m", "labkit.cli", "run", "nope", "--variant", "x"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_run_json_contract(capsys):
    code, out, _ = run_cli(capsys, "run", "thread-storm", "--variant", "one-thread", "--repeats", "2", "--json", *QUICK)
    assert code == 0
    result = json.loads(out)
    assert {"scenario", "variant", "trials", "summary"} <= set(result)
    assert [t["outcome"] for t in result["trials"]] == ["ok", "ok"]
    assert {"outcome", "error", "seconds", "metrics"} <= set(result["trials"][0])
    assert result["summary"]["outcomes"]["ok"] == 2 and result["trials"][0]["metrics"]["tokens_per_s"] > 0


def test_a_hang_comes_back_hung_with_stacks_and_nothing_left(capsys, hang_scenario):
    code, out, _ = run_cli(capsys, "run", "test-hang", "--variant", "broken", "--timeout", "2", "--json")
    trial = json.loads(out)["trials"][0]
    assert code == 0 and trial["outcome"] == "hung" and trial["seconds"] < 6
    (pid, stack), = trial["stacks"].items()
    assert "locks_up" in stack
    assert group_members(int(pid)) == []


def test_compare_json_contract(capsys):
    code, out, _ = run_cli(capsys, "compare", "thread-storm", "broken", "one-thread", "--repeats", "2", "--json", *QUICK)
    assert code == 0
    result = json.loads(out)
    assert {"a_median", "b_median", "ratio", "ci", "verdict"} <= set(result)
    assert len(result["ci"]) == 2 and result["a"] == "broken" and result["b"] == "one-thread"


def test_doctor_reports_pools_and_variables(capsys):
    code, out, _ = run_cli(capsys, "doctor")
    assert code == 0
    for key in ("logical_cores", "torch_intra_op_threads", "native_pools", "OMP_NUM_THREADS", "TOKENIZERS_PARALLELISM",
                "start_method", "nvml", "version:torch"):
        assert key in out


def test_tour_writes_a_report(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "tour", "--quick", "--repeats", "1", "--out", str(tmp_path))
    assert code == 0 and "thread-storm" in out and "thread-race" in out
    assert {"report.md", "results.json", "thread-storm-ab.png", "thread-race-ab.png"} <= {p.name for p in tmp_path.iterdir()}
    assert {c["scenario"] for c in json.loads((tmp_path / "results.json").read_text())} == {"thread-race", "thread-storm"}
