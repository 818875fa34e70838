"""Entry point of an isolated trial: ``python -m labkit.isolation._child FOLDER`` (fresh), :func:`main` in a fork
of a warm template (:mod:`labkit.isolation._template`), or in a pre-started interpreter (:mod:`labkit.isolation._spare`).

The parent (:mod:`labkit.isolation.isolated`) leaves ``call.pkl`` in FOLDER; this process writes ``started``
just before the trial's first line (the parent's timeout counts from there) and ``result.json``
when it ends, or nothing if it dies. Its temporary files go to ``FOLDER/tmp``, which the parent
removes whatever the outcome: a trial that is killed cannot clean up after itself.

The lifeline: a fresh or pre-started trial holds a pipe from its parent on stdin, which nothing
else reads. When the parent dies, however it dies (SIGKILL, a kernel killed for memory), the pipe
ends; a thread of the trial's, ``labkit-lifeline``, then removes FOLDER and kills the trial's whole
tree. (A forked trial's lifeline is its template, which does the same.)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
import traceback
from pathlib import Path

NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"
# threadpoolctl first: it sets KMP_DUPLICATE_LIB_OK (a default) before any OpenMP runtime loads, as the
# warm processes' key assumes (labkit.isolation.warm.SET_BY_IMPORTS)
WARM_IMPORTS = ("threadpoolctl", "torch", "numpy", "transformers", "accelerate", "tokenizers", "cloudpickle", "psutil")


def warm_imports() -> None:
    """What every trial would import first: the libraries, transformers' model code, labkit's scenarios.

    A warm template runs it once; a fresh child runs it before its trial's first line. Either way a
    trial's timeout counts from its own code.
    """
    import importlib

    for name in WARM_IMPORTS:
        importlib.import_module(name)
    import transformers

    for name in ("AutoModelForCausalLM", "AutoTokenizer", "Qwen3ForCausalLM", "DynamicCache", "StaticCache"):
        getattr(transformers, name)  # transformers imports lazily: touch what the scenarios use
    from labkit.core.scenario import all_scenarios

    all_scenarios()


def warm_imports_without_cuda() -> bool:
    """:func:`warm_imports` in a process that waits for trials (a template, a spare): torch's
    ``cuda.is_available()`` may initialise the CUDA driver, after which no fork can use CUDA; asking
    NVML instead leaves it alone. Returns whether the variable was added (each trial gets the
    environment it asked for, without it)."""
    added = NVML_CHECK not in os.environ
    os.environ.setdefault(NVML_CHECK, "1")
    warm_imports()
    return added


def hold_lifeline(folder: Path, fd: int = 0) -> None:
    """Watch the parent's pipe on ``fd``: at its end (the parent is gone), remove ``folder`` and end this
    trial's whole tree. ``os.read``, not a file object: no Python lock is held while it waits, so a
    worker forked meanwhile inherits none."""

    def hold() -> None:
        while os.read(fd, 4096):
            pass
        shutil.rmtree(folder, ignore_errors=True)
        from labkit.machine import system

        system.current().end_own_tree()

    threading.Thread(target=hold, name="labkit-lifeline", daemon=True).start()


def main(folder: Path, lifeline: bool = False) -> None:
    """Run the call in ``folder``; ``lifeline``: stdin is the parent's pipe (see the module's docstring)."""
    if lifeline:
        hold_lifeline(folder)
    try:
        fn, kwargs = _prepare(folder)
    except BaseException as exc:  # noqa: BLE001 - a trial that cannot start says why, with its traceback
        _finish(folder, {"outcome": "crashed", "error": f"the trial could not start: {type(exc).__name__}: {exc}",
                         "value": None, "traceback": traceback.format_exc()})
    (folder / "started").write_text(repr(time.monotonic()))  # one clock for every process on Linux
    from labkit.core.errors import WrongResult

    result: dict
    try:
        value = fn(**kwargs)
        result = {"outcome": "ok", "error": None, "value": value}
    except WrongResult as exc:
        result = {"outcome": "wrong", "error": str(exc), "value": exc.metrics}
    except BaseException as exc:  # noqa: BLE001 - a trial's failure is data, whatever it is
        result = {
            "outcome": "raised",
            "error": f"{type(exc).__name__}: {exc}",
            "value": getattr(exc, "metrics", None),
            "traceback": traceback.format_exc(),
        }
    _finish(folder, result)


def _prepare(folder: Path):
    """Everything before the trial's first line: stacks on request, the call, its folder and environment."""
    from labkit.isolation import descendants

    descendants.answer_stacks(folder)

    import pickle
    import tempfile

    with open(folder / "call.pkl", "rb") as f:
        call = pickle.load(f)
    sys.path[:] = list(dict.fromkeys([*call["path"], *sys.path]))
    os.chdir(call["cwd"])
    os.environ.clear()  # exactly the environment asked for (a template differs in run-time-only variables)
    os.environ.update(call["env"])
    os.environ[descendants.VARIABLE] = str(folder)  # for the processes it spawns (labkit.isolation.descendants)
    scratch = folder / "tmp"
    scratch.mkdir(exist_ok=True)
    os.environ["TMPDIR"] = tempfile.tempdir = str(scratch)  # its workers' too

    import cloudpickle

    warm_imports()  # already done in a warm process; here, before the first line, as there
    return cloudpickle.loads(call["fn"])


def _finish(folder: Path, result: dict) -> None:
    from labkit.core._json import jsonable

    tmp = folder / "result.json.tmp"
    tmp.write_text(json.dumps(jsonable(result)))
    tmp.replace(folder / "result.json")
    sys.stdout.flush()
    sys.stderr.flush()
    # Threads a broken variant left running (still blocked on a lock, say) must not keep this
    # process alive: the result is written, so leave now.
    os._exit(0)


if __name__ == "__main__":
    main(Path(sys.argv[1]), lifeline="--lifeline" in sys.argv[2:])
