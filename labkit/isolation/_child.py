"""Entry point of an isolated trial: ``python -m labkit.isolation._child FOLDER`` (fresh), or :func:`main` in a fork
of a warm template (:mod:`labkit.isolation._template`).

The parent (:mod:`labkit.isolation.isolated`) leaves ``call.pkl`` in FOLDER; this process writes ``started``
just before the trial's first line (the parent's timeout counts from there) and ``result.json``
when it ends, or nothing if it dies. Its temporary files go to ``FOLDER/tmp``, which the parent
removes whatever the outcome: a trial that is killed cannot clean up after itself.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

STACK_SIGNAL = signal.SIGUSR1
WARM_IMPORTS = ("torch", "numpy", "transformers", "accelerate", "tokenizers", "cloudpickle", "psutil", "threadpoolctl")


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


def main(folder: Path) -> None:
    # faulthandler writes from a signal handler with no GIL, so it needs a real file descriptor:
    # a file of our own, never sys.stderr (in a notebook kernel that one has no descriptor).
    # Forked grandchildren inherit the handler and the descriptor, so their stacks come too.
    stacks = open(folder / "stacks.txt", "a", buffering=1)
    faulthandler.register(STACK_SIGNAL, file=stacks, all_threads=True)

    import pickle
    import tempfile

    with open(folder / "call.pkl", "rb") as f:
        call = pickle.load(f)
    sys.path[:] = list(dict.fromkeys([*call["path"], *sys.path]))
    os.chdir(call["cwd"])
    os.environ.clear()  # exactly the environment asked for (a template differs in run-time-only variables)
    os.environ.update(call["env"])
    scratch = folder / "tmp"
    scratch.mkdir(exist_ok=True)
    os.environ["TMPDIR"] = tempfile.tempdir = str(scratch)  # its workers' too

    import cloudpickle

    from labkit.core._json import jsonable
    from labkit.core.errors import WrongResult

    warm_imports()  # already done in a warm template; here, before the first line, as there
    fn, kwargs = cloudpickle.loads(call["fn"])
    (folder / "started").write_text(repr(time.monotonic()))  # one clock for every process on Linux
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
    tmp = folder / "result.json.tmp"
    tmp.write_text(json.dumps(jsonable(result)))
    tmp.replace(folder / "result.json")
    sys.stdout.flush()
    sys.stderr.flush()
    # Threads a broken variant left running (still blocked on a lock, say) must not keep this
    # process alive: the result is written, so leave now.
    os._exit(0)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
