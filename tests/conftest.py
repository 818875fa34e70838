import datetime
import json
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from labkit import Metric, Scenario, run
from labkit.core import scenario as registry
from labkit.core.scenario import positive


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


GPU_RECORD = Path(__file__).with_name("gpu_last_run.json")  # committed: where and when the GPU tests last ran


def pytest_collection_modifyitems(config, items):
    """The longest work first, so that neither xdist worker is left with it at the end while the other
    sits idle: the browser test (four minutes, one JupyterLab for all of it), the notebooks (half a
    minute to two minutes each), then the other files, most tests first. xdist hands the files out in
    this order (``--no-loadscope-reorder``); its own order, most tests first, had put the browser test
    last, on one worker, while the other sat idle for over a minute."""
    files = Counter(item.nodeid.split("::")[0] for item in items)

    def long_first(item) -> tuple:
        file = item.nodeid.split("::")[0]
        return (file != "tests/test_browser.py", not file.startswith("notebooks/"), -files[file], file)

    items.sort(key=long_first)  # stable: each file's own order is kept
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    """Write down a GPU run; elsewhere, say when the skipped GPU tests last ran, so that skipping them
    on every machine forever shows."""
    reports = [r for kind in ("passed", "failed", "skipped") for r in terminalreporter.stats.get(kind, [])
               if r.when == "call" or kind == "skipped"]
    gpu = [r for r in reports if "gpu" in r.keywords]
    if not gpu:
        return
    counts = Counter(r.outcome for r in gpu)
    if _has_cuda() and counts["passed"] + counts["failed"]:
        import torch

        GPU_RECORD.write_text(json.dumps({
            "date": datetime.date.today().isoformat(), "device": torch.cuda.get_device_name(0),
            "torch": torch.__version__, "passed": counts["passed"], "failed": counts["failed"],
            "tests": sorted(r.nodeid for r in gpu if r.outcome != "skipped"),
        }, indent=2) + "\n")
        return
    if GPU_RECORD.exists():
        last = json.loads(GPU_RECORD.read_text())
        said = f"last ran {last['date']} on {last['device']}: {last['passed']} passed, {last['failed']} failed"
    else:
        said = "no GPU run recorded yet"
    terminalreporter.write_line(f"GPU tests: {counts['skipped']} skipped here (no CUDA); {said} ({GPU_RECORD.name})")


@pytest.fixture(scope="session")
def side_by_side():
    """``side_by_side(scenario, variants, **kwargs)``: one isolated trial per variant, two at a time.

    Each trial's start-up (about 6 s of imports) runs on one core, so on 2 cores two trials take the
    time of one. For checks of outcomes only: trials that share the cores have timings that mean
    nothing, and no test that uses this looks at them."""

    def trials(scenario: str, variants: list[str], **kwargs) -> dict:
        with ThreadPoolExecutor(2) as pool:
            return dict(zip(variants, pool.map(lambda v: run(scenario, v, monitor=False, **kwargs).trials[0], variants)))

    return trials


def locks_up():
    lock = threading.Lock()
    lock.acquire()
    lock.acquire()


def counts_fast(items=100):
    return {"items_per_s": float(items)}


def counts_slow(items=100):
    return {"items_per_s": items / 2.0}


@pytest.fixture
def cheap(monkeypatch):
    """Torch-free scenarios, registered for one test: the CLI's contracts, not a failure mode, are
    under test here (each built-in scenario has its own tests)."""
    hang = Scenario("test-hang", summary="a lock taken twice", metrics=(Metric("x", "1"),), timeout=30)
    hang.variant("broken", broken=True)(locks_up)
    count = Scenario("test-count", summary="two counters", metrics=(Metric("items_per_s", "1/s"),),
                     knobs=(positive("items", 100, "items"),), main_fix="fast", quick={"items": 10})
    count.variant("slow", broken=True)(counts_slow)
    count.variant("fast")(counts_fast)
    for scen in (hang, count):
        monkeypatch.setitem(registry._REGISTRY, scen.name, scen)
