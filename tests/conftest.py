import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from labkit import Metric, Scenario, run
from labkit import scenario as registry
from labkit.scenario import positive


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


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
