"""The command line: contracts from DESIGN.md, and bad input as one line with exit status 2."""

import json
import subprocess
import sys

import pytest

from labkit.ui.cli import main
from labkit.machine.system_linux import group_members
from labkit.llm.upstream import installed


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
        (["tour", "--timeout", "0", "--out", "/nonexistent/never-made"], "timeout must be a positive number"),
        (["run", "thread-storm"], "the following arguments are required: --variant"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["doctor", "--workers", "0"], "workers must be at least 1, got 0"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, args, message):
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("labkit: error: ") and message in err


def test_the_console_script_exits_2_without_a_traceback():
    proc = subprocess.run([sys.executable, "-m", "labkit.ui.cli", "run", "nope", "--variant", "x"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_run_json_contract(capsys, cheap):
    code, out, _ = run_cli(capsys, "run", "test-count", "--variant", "fast", "--repeats", "2", "--set", "items=200", "--json")
    assert code == 0
    result = json.loads(out)
    assert {"scenario", "variant", "trials", "summary"} <= set(result)
    assert [t["outcome"] for t in result["trials"]] == ["ok", "ok"]
    assert {"outcome", "error", "seconds", "metrics"} <= set(result["trials"][0])
    assert result["summary"]["outcomes"]["ok"] == 2 and result["trials"][0]["metrics"]["items_per_s"] == 200
    assert result["versions"]["transformers"] == installed("transformers")  # a changed result traces to a release


def test_a_hang_comes_back_hung_with_stacks_and_nothing_left(capsys, cheap):
    code, out, _ = run_cli(capsys, "run", "test-hang", "--variant", "broken", "--timeout", "2", "--json")
    trial = json.loads(out)["trials"][0]
    assert code == 0 and trial["outcome"] == "hung" and trial["seconds"] < 6
    (pid, stack), = trial["stacks"].items()
    assert "locks_up" in stack
    assert group_members(int(pid)) == []


def test_compare_json_contract(capsys, cheap):
    code, out, _ = run_cli(capsys, "compare", "test-count", "slow", "fast", "--repeats", "4", "--json")
    assert code == 0
    result = json.loads(out)
    assert {"a_median", "b_median", "ratio", "ci", "verdict", "method", "happened"} <= set(result)
    assert (result["a"], result["b"], result["method"]) == ("slow", "fast", "unpaired")
    assert result["ratio"] == pytest.approx(2.0) and result["ci"] == pytest.approx([2.0, 2.0])
    assert result["verdict"].startswith("both ok in 4 of 4; fast is better than slow")


def test_compare_runs_a_real_scenario(capsys):
    """One whose trials need no torch: the scenarios' own tests and the notebooks run the rest. Two
    trials a side cannot reach 95%, and the verdict says so instead of printing an interval."""
    code, out, _ = run_cli(capsys, "compare", "tokenizer-deadlock", "no-parallelism", "spawn", "--repeats", "2")
    assert code == 0 and "texts_per_s" in out and "spawn/no-parallelism = " in out
    assert "too few trials to tell at 95%: 2 a side; it takes 4 a side" in out and "95% CI" not in out


@pytest.mark.parametrize("setting, verdict", [("true", "exposed"), ("false", "not exposed")])
def test_doctor_judges_the_tokenizer_deadlock_by_the_variable(capsys, monkeypatch, setting, verdict):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", setting)
    code, out, _ = run_cli(capsys, "doctor", "--json")
    rows = {h["failure"]: h for h in json.loads(out)["hazards"]}
    assert code == 0 and rows["tokenizer-deadlock"]["verdict"] == verdict, rows["tokenizer-deadlock"]


def test_doctor_reports_pools_and_variables(capsys):
    code, out, _ = run_cli(capsys, "doctor")
    assert code == 0 and out.startswith("hazards on this machine and environment:")
    for key in ("logical_cores", "torch_intra_op_threads", "native_pools", "OMP_NUM_THREADS", "TOKENIZERS_PARALLELISM",
                "start_method", "nvml", "version:torch"):
        assert key in out
    table = out[out.index("versions, per scenario"):]
    assert "device-mismatch   accelerate" in table and all(w in table for w in ("installed", "tested", "verdict"))


def test_tour_writes_a_report(tmp_path, capsys, cheap, monkeypatch):
    from labkit import get

    monkeypatch.setattr(get("test-count"), "speed_pair", ("fast", "fast"))  # once fixed, the A/B between fixes
    code, out, _ = run_cli(capsys, "tour", "--quick", "--repeats", "1", "--out", str(tmp_path), "--timeout", "4",
                           "--only", "test-count", "--only", "tokenizer-deadlock")
    assert code == 0 and "test-count" in out and "tokenizer-deadlock" in out
    files = {p.name for p in tmp_path.iterdir()}
    assert {"report.md", "results.json", "test-count-ab.png", "test-count-fast-fast-ab.png", "tokenizer-deadlock-ab.png",
            "tokenizer-deadlock-broken-monitor.png"} <= files
    results = json.loads((tmp_path / "results.json").read_text())
    assert [(c["scenario"], c["a"]) for c in results] == [("test-count", "slow"), ("test-count", "fast"), ("tokenizer-deadlock", "broken")]
    assert results[2]["outcomes"]["a"]["hung"] == 1 and results[2]["outcomes"]["b"]["ok"] == 1
    assert "fixed: broken failed 1 of 1 (1 hung), no-parallelism ok in 1 of 1" in out
    page = (tmp_path / "report.html").read_text()  # one file, every figure inside it
    assert page.count("src='data:image/png;base64,") == len(list(tmp_path.glob("*.png"))) and "<h2>Environment</h2>" in page
    assert "<h2>Hazards on this machine</h2>" in page and "tokenizer-deadlock" in page.split("Hazards on this machine")[1]
    assert "<section id='tokenizer-deadlock'>" in page and "fixed: broken failed 1 of 1" in page
