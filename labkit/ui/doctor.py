"""What this machine has that matters for concurrency: cores, thread pools, variables, devices.

Thread-pool sizes are process-global and fixed when a library first loads, so the report reads
them in a trial's process, started as every trial is (like ``python -m threadpoolctl -i`` in a new
interpreter): what a new trial will see, not what this notebook kernel has been changed to. Its
warm process then serves the trials that follow.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from labkit.core.errors import BadInput
from labkit.core.hazard import Hazard
from labkit.ui.hazards import hazards

ENV_VARS = (
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
    "KMP_BLOCKTIME", "TOKENIZERS_PARALLELISM", "CUDA_VISIBLE_DEVICES", "PYTORCH_CUDA_ALLOC_CONF",
)
LIBRARIES = ("torch", "transformers", "accelerate", "tokenizers", "numpy", "threadpoolctl", "psutil", "pynvml")

def _probe() -> dict[str, Any]:
    """What a trial sees here, read in one: its pools, start method, devices and library behaviours."""
    import multiprocessing

    import threadpoolctl
    import torch

    info = {
        "torch_intra_op_threads": torch.get_num_threads(),
        "torch_inter_op_threads": torch.get_num_interop_threads(),
        "torch_parallel_backend": next((l.split(":", 1)[1].strip() for l in torch.__config__.parallel_info().splitlines()
                                        if l.startswith("ATen parallel backend")), "?"),
        "torch_mkl": torch.backends.mkl.is_available(),
        "native_pools": [{k: p.get(k) for k in ("user_api", "internal_api", "num_threads", "prefix", "version")}
                         for p in threadpoolctl.threadpool_info()],
        "start_method": multiprocessing.get_start_method(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }
    try:
        from torch.distributed import constants

        info["distributed_default_timeout"] = str(constants.default_pg_timeout)
    except Exception:  # noqa: BLE001 - a build without torch.distributed: the fact is left out
        pass
    try:  # does accelerate's dispatch hook move the cache transformers hands over? (device-mismatch)
        from accelerate.utils import send_to_device
        from transformers import DynamicCache

        from labkit.llm.upstream import cache_tensors

        cache = DynamicCache(((torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1)),))
        info["dispatch_moves_cache"] = cache_tensors(send_to_device(cache, "meta"))[0][0].is_meta
    except Exception:  # noqa: BLE001 - an API that moved: the hazard rule says unknown
        pass
    try:  # is dynamo's config per thread? (compile-threads: torch 2.12 made it so)
        import threading

        import torch._dynamo

        torch._dynamo.config.recompile_limit += 1
        seen: list[int] = []
        other = threading.Thread(target=lambda: seen.append(torch._dynamo.config.recompile_limit))
        other.start()
        other.join()
        info["dynamo_config_per_thread"] = seen[0] != torch._dynamo.config.recompile_limit
    except Exception:  # noqa: BLE001 - as above
        pass
    return info


@dataclass
class Report:
    facts: dict[str, Any] = field(default_factory=dict)
    versions: list[dict[str, Any]] = field(default_factory=list)  # each scenario's libraries: tested, confirmed, outside
    hazards: list[Hazard] = field(default_factory=list)  # each failure mode: exposed, not exposed, unknown

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([(k, _text(v)) for k, v in self.facts.items()], columns=["what", "value"])

    def hazards_frame(self) -> pd.DataFrame:
        return pd.DataFrame([h.to_dict() for h in self.hazards], columns=["failure", "verdict", "evidence", "fix"])

    def to_dict(self) -> dict[str, Any]:
        return {"hazards": [h.to_dict() for h in self.hazards], "facts": self.facts, "versions": self.versions}

    def versions_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.versions, columns=["scenario", "library", "installed", "tested", "confirmed_on", "verdict"])

    def __str__(self) -> str:
        width = max(map(len, self.facts))
        facts = "\n".join(f"{k:<{width}}  {_text(v)}" for k, v in self.facts.items())
        outside = sum(row["verdict"] == "outside" for row in self.versions)
        hazards = "\n".join(f"{h.failure:<23} {h.verdict:<12} {h.evidence}\n{'':<36} fix: {h.fix}" for h in self.hazards)
        return (f"hazards on this machine and environment:\n{hazards}\n\n{facts}\n\nversions, per scenario (tested: the set the README installs; confirmed: the series "
                f"the failure was seen on; outside: neither, {outside} here):\n"
                + self.versions_frame().to_string(index=False))


def _text(value: Any) -> str:
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return "; ".join(f"{p['internal_api']} ({p['prefix']}): {p['num_threads']} threads" for p in value)
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def _reading(read) -> Any:
    """``read()``, or why it could not be read (psutil with /proc hidden, say)."""
    try:
        return read()
    except Exception as exc:  # noqa: BLE001 - a fact that cannot be read is reported, not raised
        return f"unknown ({type(exc).__name__})"


def doctor(workers: int = 1) -> Report:
    """The facts, and the hazards they expose; ``workers``: the worker processes you run, each with
    torch's pool (what the thread-storm judgement multiplies)."""
    import platform

    import psutil

    from labkit.isolation import warm
    from labkit.isolation.isolated import child_environment, run_isolated
    from labkit.machine import nvml, system
    from labkit.llm.devices import usable_cores
    from labkit.core.scenario import all_scenarios
    from labkit.llm.upstream import installed
    from labkit.machine.versions import scenario_standing

    if workers < 1:
        raise BadInput(f"workers must be at least 1, got {workers}")
    facts: dict[str, Any] = {
        "python": platform.python_version(),
        "interpreter": sys.executable,  # which environment the trials run in
        "platform": platform.platform(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "usable_cores": usable_cores(),
        "memory_gib": _reading(lambda: round(psutil.virtual_memory().total / 2**30, 1)),
        **system.describe(),  # the platform's route, how trials start, what is unavailable here
    }
    try:  # started as every trial is: what a new trial will see
        probe = run_isolated(_probe, timeout=120)
        if probe.outcome == "ok":
            facts.update(probe.value)
        else:
            facts["probe_error"] = probe.error
        why = warm.refused(child_environment(None))
        if why:
            facts["trial_start"] = f"fresh interpreters: the warm template failed its self-check ({why})"
    except Exception as exc:  # noqa: BLE001 - no warm process could start: the facts say so
        facts["probe_error"] = f"{type(exc).__name__}: {exc}"
    for var in ENV_VARS:
        facts[var] = os.environ.get(var, "(unset)")
    gpu = nvml.describe()
    facts["nvml"] = f"driver {gpu['driver']}: {', '.join(gpu['gpus'])}" if gpu["available"] else gpu["reason"]
    facts.update({f"version:{name}": installed({"pynvml": "nvidia-ml-py"}.get(name, name)) or "not installed"
                  for name in LIBRARIES})
    versions = [row for scen in all_scenarios() for row in scenario_standing(scen)]
    return Report(facts, versions, hazards(facts, workers))
