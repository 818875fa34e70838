"""The platform seam from its other sides: /proc hidden (no readings), a Windows-shaped Python (no fork, no
process groups, no SIGUSR1), a parent killed outright under each start, and how the route is chosen and shown."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import psutil
import pytest

from labkit import BadInput
from labkit.machine import system

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import faults  # noqa: E402 - the fault benchmark's way of finding a run's processes

LABKIT = [sys.executable, "-m", "labkit.ui.cli"]


def marked(tag: str) -> list[psutil.Process]:
    """Live processes whose environment carries ``LABKIT_FAULT_TAG=tag`` (a test's whole tree, re-parented or not)."""
    return faults.tagged(tag)


def none_left(tag: str, within: float = 10.0) -> list[psutil.Process]:
    deadline = time.monotonic() + within
    while (left := marked(tag)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def test_the_route_is_chosen_at_run_time_and_a_bad_one_is_one_line(monkeypatch):
    monkeypatch.delenv("LABKIT_PLATFORM", raising=False)
    assert system.current().name == ("linux" if sys.platform.startswith("linux") else "portable")
    monkeypatch.setenv("LABKIT_PLATFORM", "portable")
    described = system.describe()
    assert described["platform_route"] == "portable (forced by LABKIT_PLATFORM)"
    assert described["trial_start"] == "pre-started interpreters, one per trial"
    monkeypatch.setenv("LABKIT_PLATFORM", "bsd")
    with pytest.raises(BadInput, match="LABKIT_PLATFORM='bsd' is not allowed; allowed: linux, portable"):
        system.current()
    done = subprocess.run([*LABKIT, "run", "thread-storm", "--variant", "broken"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "LABKIT_PLATFORM": "bsd"})
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "allowed: linux, portable" in done.stderr


HIDDEN = textwrap.dedent("""
    import json
    from labkit import run
    storm = run("thread-storm", "broken", knobs={"tokens": 2, "workers": 2}).trials[0]  # 2 x 2 threads on 2 cores
    hang = run("tokenizer-deadlock", "broken", timeout=4).trials[0]
    print(json.dumps({"storm": storm.outcome, "hang": hang.outcome, "hung_by": hang.notes.get("hung"),
                      "stacks": len(hang.stacks)}))
""")


def _can_hide_proc() -> bool:
    if not shutil.which("unshare") or not sys.platform.startswith("linux"):
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_hide_proc(), reason="hiding /proc needs unshare -m (root, Linux)")
def test_with_proc_hidden_a_storm_is_a_storm_a_hang_ends_at_its_timeout_and_nothing_is_left():
    """How macOS looks to the Linux route, and what a container with no /proc gives: no readings at all."""
    tag = uuid.uuid4().hex
    done = subprocess.run(["unshare", "-m", "sh", "-c", 'mount -t tmpfs none /proc && exec "$0" -c "$1"', sys.executable, HIDDEN],
                          capture_output=True, text=True, timeout=240, env={**os.environ, "LABKIT_FAULT_TAG": tag})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["storm"] == "ok"  # busy, never called hung for want of a reading
    assert (result["hang"], result["hung_by"]) == ("hung", "no answer within 4 s of its first line")  # the timeout decided
    assert result["stacks"] == 1  # the trial, the one process known to handle SIGUSR1
    said = done.stderr
    assert said.count("stillness is off") == 1 and said.count("no per-core CPU readings") == 1  # once each, not per trial
    assert "Traceback" not in said
    assert none_left(tag) == []


WINDOWS_SHAPED = '''
"""A Windows-shaped Python for labkit's test: what Windows lacks and labkit itself would call is gone."""
import os, signal, sys
import psutil  # its Linux backend needs resource; on Windows psutil has its own backend
for name in ("fork", "forkpty", "killpg", "getpgid", "setpgid", "sched_getaffinity", "sysconf"):
    if hasattr(os, name):
        delattr(os, name)
for name in ("SIGUSR1", "SIGUSR2"):
    if hasattr(signal, name):
        delattr(signal, name)
sys.modules["resource"] = None
'''


def test_a_windows_shaped_python_lists_doctors_runs_and_names_what_needs_fork(tmp_path):
    """Not Windows: Linux with what Windows lacks removed from every labkit process (a sitecustomize),
    and the portable route, which is the one Windows takes. It proves labkit asks for none of it."""
    (tmp_path / "sitecustomize.py").write_text(WINDOWS_SHAPED)
    tag = uuid.uuid4().hex
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "LABKIT_PLATFORM": "portable", "LABKIT_FAULT_TAG": tag}

    def cli(*args):
        return subprocess.run([*LABKIT, *args], capture_output=True, text=True, timeout=240, env=env)

    assert cli("list").returncode == 0
    doctor = cli("doctor", "--json")
    assert doctor.returncode == 0, doctor.stderr[-2000:]
    facts = json.loads(doctor.stdout)["facts"]
    assert facts["platform_route"].startswith("portable") and "os.fork" in facts["unavailable"]
    refused = cli("run", "tokenizer-deadlock", "--variant", "broken")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "has no os.fork: run it on Linux, macOS or WSL 2" in refused.stderr
    served = cli("run", "thread-race", "--variant", "lock")
    assert served.returncode == 0 and "thread-race lock: 1 ok" in served.stdout, served.stderr[-2000:]
    assert none_left(tag) == []


PARENT = textwrap.dedent("""
    import signal, sys, threading
    from labkit.isolation.isolated import run_isolated

    signal.signal(signal.SIGINT, signal.default_int_handler)

    def locks_up_with_a_worker(flag):
        import multiprocessing, pathlib, threading, time
        worker = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(600,))
        worker.start()
        pathlib.Path(flag).write_text(str(worker.pid))
        lock = threading.Lock()
        lock.acquire()
        lock.acquire()

    run_isolated(locks_up_with_a_worker, {"flag": sys.argv[2]}, timeout=600, start=sys.argv[1],
                 on_start=lambda pid: print("trial", pid, flush=True))
""")


@pytest.mark.parametrize("route, start", [("portable", "warm"), ("portable", "fresh")])  # Linux: test_faults, test_warm
def test_nothing_is_left_when_the_parent_is_killed_outright(route, start, tmp_path):
    """The lifeline: a fresh or pre-started trial holds its parent's pipe; when the parent dies it removes
    its folder and ends its whole tree (a spawned worker of its own included)."""
    tag = uuid.uuid4().hex
    flag = tmp_path / "worker-started"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, start, str(flag)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "LABKIT_PLATFORM": route, "LABKIT_FAULT_TAG": tag, "TMPDIR": str(tmp_path)})
    try:
        trial = int(parent.stdout.readline().split()[1])
        deadline = time.monotonic() + 60
        while not flag.exists() and time.monotonic() < deadline:  # the trial runs, and its worker exists
            time.sleep(0.1)
        folders = list(tmp_path.glob("labkit-trial-*"))
        assert len(folders) == 1 and len(marked(tag)) >= 3  # the parent, the trial, its worker
        parent.send_signal(signal.SIGKILL)
        parent.wait(30)
        assert none_left(tag) == [], f"trial {trial} or its worker outlived its parent"
        assert not folders[0].exists(), "the trial's folder outlived its parent"
    finally:
        parent.kill()
        parent.wait()
