"""Warm trials: forked from a template that has imported everything, with every isolation guarantee kept."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from labkit.isolation import warm
from labkit.isolation.isolated import run_isolated


def threads_and_seeds():
    import random

    import numpy
    import torch

    return {"torch_threads": float(torch.get_num_threads()), "np": float(numpy.random.randint(1 << 30)),
            "py": float(random.randrange(1 << 30)), "pid": float(os.getpid()), "parent": float(os.getppid())}


def test_a_warm_trial_is_a_fork_of_its_environments_template():
    a, b = (run_isolated(threads_and_seeds, timeout=60) for _ in range(2))
    assert (a.outcome, b.outcome, a.start, b.start) == ("ok", "ok", "warm", "warm")
    assert a.value["parent"] == b.value["parent"] in warm.live_templates()  # one template, two forks
    assert a.value["pid"] != b.value["pid"] and 0 <= b.startup_seconds
    assert a.value["np"] != b.value["np"] and a.value["py"] != b.value["py"]  # reseeded, as a new interpreter is


def test_importing_threadpoolctl_in_the_caller_starts_no_second_template(monkeypatch):
    """threadpoolctl sets KMP_DUPLICATE_LIB_OK when imported, as every warm process's first import does:
    found by counting the suite's templates (a notebook started one again after a cell imported it)."""
    monkeypatch.delenv("KMP_DUPLICATE_LIB_OK", raising=False)
    before = run_isolated(threads_and_seeds, timeout=60)
    monkeypatch.setenv("KMP_DUPLICATE_LIB_OK", "True")
    after = run_isolated(threads_and_seeds, timeout=60)
    assert before.value["parent"] == after.value["parent"]


def test_loading_a_model_in_the_kernel_starts_no_second_warm_process(monkeypatch):
    """Loading a model sets TORCHINDUCTOR_CACHE_DIR in this process: a variable only the run-time sets."""
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    before = run_isolated(threads_and_seeds, timeout=60)
    import torch

    from labkit.llm.models import tiny_model

    tiny_model()(input_ids=torch.tensor([[1, 2, 3]]))  # what a notebook does
    assert "TORCHINDUCTOR_CACHE_DIR" in os.environ
    after = run_isolated(threads_and_seeds, timeout=60)
    assert after.value["parent"] == before.value["parent"]  # the same template


def parallelism_setting():
    return {"set": float(os.environ.get("TOKENIZERS_PARALLELISM", "unset") == "false"), "parent": float(os.getppid())}


def test_a_variable_read_only_at_run_time_shares_the_template_and_still_acts():
    """tokenizers reads TOKENIZERS_PARALLELISM when it acts, not when it loads: notebook 04's variants
    (true, false, unset) fork from one template, each with its own setting (the tokenizer-deadlock
    tests check what each setting does)."""
    off = run_isolated(parallelism_setting, timeout=60, env={"TOKENIZERS_PARALLELISM": "false"})
    on = run_isolated(parallelism_setting, timeout=60, env={"TOKENIZERS_PARALLELISM": "true"})
    assert (off.value["set"], on.value["set"]) == (1, 0) and off.value["parent"] == on.value["parent"]


def blas_after_fork():
    """A multi-threaded OpenBLAS call in the forked trial: it would hang if the template's BLAS
    server thread had been forked holding its lock."""
    import numpy
    from threadpoolctl import threadpool_info, threadpool_limits

    with threadpool_limits(2, user_api="blas"):
        x = numpy.ones((600, 600))
        total = float((x @ x).sum())
    return {"sum": total, "blas_pools": float(len([p for p in threadpool_info() if p["user_api"] == "blas"])),
            "template": float(os.getppid())}


def test_openblas_works_in_a_trial_forked_from_a_template_that_runs_its_thread():
    r = run_isolated(blas_after_fork, timeout=60, idle=5)
    assert r.outcome == "ok", (r.error, r.stacks)
    assert r.value["sum"] == 600.0 ** 3
    template = [r.value["template"]]
    # Exactly one thread once it has forked: OpenBLAS stopped its server threads in its fork handler and
    # would start them again only at the template's next BLAS call, which never comes. (Before its first
    # fork it runs those too: the self-check below counts them.)
    assert len(os.listdir(f"/proc/{int(template[0])}/task")) == 1


SELF_CHECK = textwrap.dedent("""
    import threading
    from labkit.isolation._child import warm_imports_without_cuda
    from labkit.isolation._template import check_self
    warm_imports_without_cuda()
    print(check_self())
    threading.Thread(target=threading.Event().wait, daemon=True).start()  # one thread more than a template may run
    print(check_self())
""")


def test_the_template_checks_its_own_threads_after_its_imports():
    from threadpoolctl import threadpool_info

    expected = 1 + sum(p["num_threads"] - 1 for p in threadpool_info() if p["internal_api"] == "openblas")
    done = subprocess.run([sys.executable, "-c", SELF_CHECK], capture_output=True, text=True, timeout=120)
    clean, extra = done.stdout.strip().splitlines()
    assert clean == "None", done.stderr
    assert extra.startswith(f"it runs {expected + 1} OS threads after its imports where it should run {expected}")


def timed_import_free():
    return {"x": 1.0}


def test_the_timeout_counts_from_the_first_line_not_the_imports():
    r = run_isolated(timed_import_free, timeout=1, start="fresh")  # its imports take seconds
    assert (r.outcome, r.start) == ("ok", "fresh") and r.startup_seconds > r.seconds


def blocked_with_a_scratch_folder():
    import tempfile
    import threading

    keep = tempfile.TemporaryDirectory(prefix="labkit-scratch-")  # noqa: SIM115 - a killed trial cannot clean up
    Path(keep.name, "data").write_text("x")
    lock = threading.Lock()
    lock.acquire()
    lock.acquire()


def spins():
    while True:
        pass


def test_a_still_trial_is_hung_by_stillness_and_leaves_no_folder():
    r = run_isolated(blocked_with_a_scratch_folder, timeout=60, idle=1.5)
    assert r.outcome == "hung" and r.hung_by.startswith("no progress: its processes used no CPU for 1.5 s")
    assert r.seconds < 30 and "in blocked_with_a_scratch_folder" in "".join(r.stacks.values())
    assert not list(Path(tempfile.gettempdir()).glob("labkit-scratch-*"))  # it was in the trial's folder, removed


def test_a_busy_trial_is_not_still_and_ends_at_its_timeout():
    r = run_isolated(spins, timeout=2.5, idle=1.0)
    assert r.outcome == "hung" and r.hung_by == "no answer within 2.5 s of its first line"


def test_stillness_counts_from_its_first_reading_not_from_the_launch():
    """Found by benchmarks/warm_fidelity.py: a short trial in a fresh interpreter came back hung 0.1 s
    after its first line, "no CPU for 3 s". Its group read empty (the trial was exiting), so the
    clock ran from the launch, across seconds of imports."""
    from labkit.isolation.isolated import _Stillness
    from labkit.machine import system
    from labkit.machine.system_linux import is_zombie

    ended = subprocess.Popen(["true"], start_new_session=True)  # not reaped yet: a zombie, an empty group
    try:
        still = _Stillness(system.current().tree(ended.pid))
        deadline = time.monotonic() + 10
        while not is_zombie(ended.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # what a fresh interpreter spends on imports before the first reading
        assert still.seconds(time.monotonic()) < 0.1
    finally:
        ended.wait()


PARENT = textwrap.dedent("""
    import signal, sys, threading
    from labkit.isolation.isolated import run_isolated
    from labkit.isolation import warm

    signal.signal(signal.SIGINT, signal.default_int_handler)  # as a kernel or a terminal has it (a background job ignores it)

    def locks_up():
        lock = threading.Lock()
        lock.acquire()
        lock.acquire()

    def announce(pid):
        print(warm.live_templates()[0], pid, flush=True)

    run_isolated(locks_up, timeout=600, on_start=announce)
""")


def _gone(pids, within=10.0):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in pids):
            return True
        time.sleep(0.1)
    return False


def _trial_folder(pid) -> Path:
    """The folder a trial's parent made for it: where its output goes."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        output = Path(os.readlink(f"/proc/{pid}/fd/1"))
        if output.name == "output.txt":
            return output.parent
        time.sleep(0.05)  # the forked trial opens it a moment after it starts
    raise AssertionError(f"trial {pid} writes its output to no folder of its own")


def _state(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT])
def test_nothing_is_left_when_the_parent_dies_mid_trial(how):
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        template, trial = map(int, parent.stdout.readline().split())
        folder = _trial_folder(trial)
        assert folder.is_dir()
        parent.send_signal(how)  # at once: the trial may not have run a line yet
        parent.wait(30)
        assert _gone([template, trial]), "the template or its trial outlived their parent"
        assert not folder.exists(), "the trial's folder outlived its parent"
    finally:
        parent.kill()
        parent.wait()


def test_nothing_is_left_after_a_kernel_restart_mid_trial():
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name="python3")
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(60)
        in_background = "threading.Thread(target=run_isolated, args=(locks_up,), kwargs={'timeout': 600, 'on_start': announce}).start()"
        kc.execute(PARENT.replace("run_isolated(locks_up, timeout=600, on_start=announce)", in_background))
        template = trial = None
        deadline = time.monotonic() + 120
        while trial is None and time.monotonic() < deadline:
            msg = kc.get_iopub_msg(timeout=120)
            if msg["msg_type"] == "stream":
                template, trial = map(int, msg["content"]["text"].split()[:2])
            assert msg["msg_type"] != "error", msg["content"]
        km.restart_kernel(now=True)
        assert _gone([template, trial]), "the template or its trial outlived the restarted kernel"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_trials_from_several_threads_share_a_template():
    results = []
    threads = [threading.Thread(target=lambda: results.append(run_isolated(threads_and_seeds, timeout=60)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.outcome for r in results] == ["ok"] * 4
    assert len({r.value["pid"] for r in results}) == 4


# From here on, tests start templates of other environments: at most two are kept, so each would end
# the default environment's, which the tests above share.
def test_a_variable_read_at_load_time_acts_as_at_start_up():
    """libgomp reads OMP_NUM_THREADS when torch loads: a trial with it set must not share a template."""
    one = run_isolated(threads_and_seeds, timeout=60, env={"OMP_NUM_THREADS": "1"})
    two = run_isolated(threads_and_seeds, timeout=60, env={"OMP_NUM_THREADS": "2"})
    assert (one.value["torch_threads"], two.value["torch_threads"]) == (1, 2)
    assert one.value["parent"] != two.value["parent"]


def test_a_template_that_cannot_start_says_why(tmp_path, monkeypatch):
    (tmp_path / "torch.py").write_text("raise ImportError('no torch here (planted by the test)')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the template imports this torch first
    with pytest.raises(warm.TemplateFailed, match=r"did not start: .*no torch here \(planted by the test\)"):
        run_isolated(threads_and_seeds, timeout=60)


def waits_for(flag: str):
    while not os.path.exists(flag):
        time.sleep(0.05)
    return {}


def test_a_template_with_a_running_trial_is_not_ended_to_make_room(monkeypatch, tmp_path):
    monkeypatch.setattr(warm, "MAX_TEMPLATES", 1)
    result, flag = {}, tmp_path / "go"
    # a trial that runs until the test says so: past the start of a second environment's template and its trial
    busy = threading.Thread(target=lambda: result.update(
        r=run_isolated(waits_for, {"flag": str(flag)}, timeout=120, env={"LABKIT_T": "a"})))
    busy.start()
    deadline = time.monotonic() + 60
    while not any(t.busy for t in warm._templates.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    other = run_isolated(threads_and_seeds, timeout=60, env={"LABKIT_T": "b"})  # a second environment
    assert other.outcome == "ok" and busy.is_alive()
    assert len(warm.live_templates()) == 2  # over the limit while the first one runs a trial
    flag.touch()
    busy.join(60)
    assert result["r"].outcome == "ok", result["r"].error  # it finished: not killed with its template
    run_isolated(threads_and_seeds, timeout=60, env={"LABKIT_T": "b"})
    assert len(warm.live_templates()) == 1  # the idle one made room at the next start


def _measured_window(**knobs):
    start = time.time()
    sum(range(300_000))
    return {"start": start, "end": time.time()}


def test_no_template_imports_while_a_trial_of_a_comparison_is_measured(monkeypatch):
    """Warming never disturbs a measurement: two variants in two environments (a template each), compared
    A B A B; each template imports before its first trial, never while a trial of the other side runs."""
    from labkit import Metric, Scenario, compare
    from labkit.core import scenario as registry

    scen = Scenario("test-windows", summary="two environments", metrics=(Metric("start", "s"), Metric("end", "s")))
    scen.variant("a", broken=True, env={"LABKIT_TEST_SIDE": "a"})(_measured_window)
    scen.variant("b", env={"LABKIT_TEST_SIDE": "b"})(_measured_window)
    monkeypatch.setitem(registry._REGISTRY, scen.name, scen)
    before = set(warm.warming_windows())
    result = compare(scen, "a", "b", repeats=2, monitor=False)
    trials = [(t.metrics["start"], t.metrics["end"]) for side in (result.a, result.b) for t in side.trials]
    warmed = set(warm.warming_windows()) - before
    assert len(warmed) == 2 and len(trials) == 4  # both environments warmed here, every trial measured
    overlapping = [(w, t) for w in warmed for t in trials if w[0] < t[1] and t[0] < w[1]]
    assert overlapping == []


def ran(flag: str):
    Path(flag).write_text("ran")
    return {}


class Stop(Exception):
    pass


def test_stop_while_a_warm_process_starts_runs_no_trial(tmp_path):
    """A panel's Stop is heard while the environment's template imports: no trial starts then or later."""
    env = {"LABKIT_TEST_ENV": f"stop-{os.getpid()}-{time.monotonic()}"}  # an environment with no template yet
    waits = []

    def stop(*_):
        waits.append(warm.starting())
        raise Stop

    with pytest.raises(Stop):
        run_isolated(ran, {"flag": str(tmp_path / "first")}, timeout=60, env=env, on_tick=stop)
    assert waits and waits[0].startswith("starting a warm process for this environment, about ")
    again = run_isolated(ran, {"flag": str(tmp_path / "second")}, timeout=60, env=env)  # the template went on importing
    assert again.outcome == "ok" and (tmp_path / "second").exists() and not (tmp_path / "first").exists()


def test_a_child_that_fails_before_its_first_line_shows_its_traceback(tmp_path, monkeypatch):
    """Its function's module is gone by the time the trial loads it: the trial could not start, and says why."""
    (tmp_path / "vanishing_module.py").write_text("def call():\n    return {}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import vanishing_module

    (tmp_path / "vanishing_module.py").unlink()
    for start in ("warm", "fresh"):
        r = run_isolated(vanishing_module.call, timeout=60, start=start)
        assert r.outcome == "crashed" and r.error.startswith("the trial could not start: ModuleNotFoundError"), r.error
        assert "Traceback" in r.traceback and "cloudpickle" in r.traceback


EDITED = textwrap.dedent("""
    from labkit.core.scenario import Metric, Scenario, register

    VERSION = 1
    edited = register(Scenario(name="test-edited", summary="a scenario edited in a running kernel",
                               metrics=(Metric("version", "1"),)))


    @edited.variant("v", broken=True)
    def v():
        return {"version": float(VERSION)}
""")

EDITS = textwrap.dedent("""
    import pathlib, sys
    from labkit import run
    source = pathlib.Path(sys.argv[1])
    print(run("test-edited", "v", monitor=False).trials[0].metrics["version"], flush=True)
    source.write_text(source.read_text().replace("VERSION = 1", "VERSION = 2"))
    print(run("test-edited", "v", monitor=False).trials[0].metrics["version"], flush=True)
""")


def test_a_scenario_edited_between_two_runs_runs_its_new_code(tmp_path):
    """A contributor edits a scenario while a kernel runs: the template imported the old code, so the
    next trial gets a new template (a copy of labkit here, so that the real one stays untouched)."""
    copy = tmp_path / "labkit"
    shutil.copytree(Path(warm.SOURCES), copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "scenarios" / "test_edited.py").write_text(EDITED)
    done = subprocess.run([sys.executable, "-c", EDITS, str(copy / "scenarios" / "test_edited.py")], capture_output=True,
                          text=True, timeout=240, env={**os.environ, "PYTHONPATH": str(tmp_path)}, cwd=tmp_path)
    assert done.stdout.split() == ["1.0", "2.0"], done.stderr[-3000:]


def test_a_fork_request_that_timed_out_leaves_no_trial_and_keeps_the_count(monkeypatch, tmp_path):
    """A template that answers after the parent gave up: its late trial is killed as soon as it is seen,
    its exit does not count twice, and the template goes on serving."""
    import psutil

    first = run_isolated(threads_and_seeds, timeout=60)  # the template is warm
    (template,) = [t for t in warm._templates.values() if t.proc.pid == first.value["parent"]]
    monkeypatch.setattr(warm, "FORK_TIMEOUT", 0.0)  # the parent gives up before any template could answer
    with pytest.raises(warm.TemplateFailed, match="did not fork a trial within 0 s"):
        run_isolated(waits_for, {"flag": str(tmp_path / "never")}, timeout=60)  # it would wait for ever
    deadline = time.monotonic() + 20
    while (template.busy or template._abandoned or psutil.Process(template.proc.pid).children()) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (template.busy, template._abandoned, psutil.Process(template.proc.pid).children()) == (0, set(), [])
    monkeypatch.setattr(warm, "FORK_TIMEOUT", 30.0)
    again = run_isolated(threads_and_seeds, timeout=60)
    assert again.outcome == "ok" and again.value["parent"] == template.proc.pid and template.busy == 0


def test_a_template_that_fails_its_self_check_starts_trials_fresh_and_doctor_says_why(tmp_path, monkeypatch):
    """A thread started at start-up (a site's sitecustomize here) could hold a lock at the fork: the template
    refuses, the trial (doctor's probe) starts fresh, and doctor's trial_start says why."""
    (tmp_path / "sitecustomize.py").write_text(
        "import threading\nthreading.Thread(target=threading.Event().wait, name='a-site-thread', daemon=True).start()\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    from labkit import doctor

    facts = doctor().facts
    assert facts["trial_start"].startswith("fresh interpreters: the warm template failed its self-check (it runs "), facts
    assert "probe_error" not in facts and facts["torch_intra_op_threads"] >= 1  # the probe ran, fresh
