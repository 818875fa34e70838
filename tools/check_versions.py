"""Build a fresh environment with the newest (or the lowest admitted) releases, run the suite there.

    python tools/check_versions.py --newest [--pin] [-- PYTEST ARGS]
    python tools/check_versions.py --lowest [-- PYTEST ARGS]
    python tools/check_versions.py --newest --torch 2.14.1      # a newer torch than the tested one

Why: the README installs the *tested set* (``data/constraints.txt``), so a release that lands
the week of a workshop changes nothing there; this is how the project sees that release first.
``--newest`` installs labkit and its extras with no constraints (whatever PyPI has today);
``--lowest`` pins every runtime dependency of ``pyproject.toml`` to the lowest release its range
admits (the test tools stay at the tested set: the point is labkit's own bounds). torch is the
exception in both: ``torch==2.13.0`` is the CPU build that lies on these machines, and any other
release pulls gigabytes of CUDA packages. ``--torch RELEASE`` takes another one anyway: a CUDA build
runs on the CPU too, so the suite checks it (2.14.1 lies on these machines' disk: about 5.5 GB in the
environment, no download).

Each run prints the releases it used, then the suite's result. ``--pin`` (with ``--newest``)
writes the environment to ``data/constraints.txt`` when the suite passed: the new tested set.
The environment lives in a temporary folder, removed first and kept afterwards for a look. Run it
with the project's own environment: it reads the tested set with labkit's own parser.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

from labkit.machine.versions import canonical, tested_set

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "data" / "constraints.txt"
TORCH = "2.13.0"  # the CPU build on these machines
EXTRAS = "test,dev,workshop"
SHOWN = ("torch", "transformers", "accelerate", "tokenizers", "huggingface-hub", "safetensors", "numpy", "pandas",
         "matplotlib", "ipywidgets", "ipython", "psutil", "threadpoolctl", "cloudpickle", "tqdm", "nvidia-ml-py",
         "pytest", "nbval", "jupyterlab", "playwright")


def sh(*cmd: str | Path, capture: bool = False) -> str:
    print("+", " ".join(map(str, cmd)), flush=True)
    done = subprocess.run(list(map(str, cmd)), check=True, text=True, stdout=subprocess.PIPE if capture else None)
    return done.stdout or ""


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def lowest_release(pip: Path, req: Requirement) -> str:
    """The lowest release on the index that ``req``'s range admits."""
    out = sh(pip, "index", "versions", req.name, capture=True)
    listed = re.search(r"Available versions: (.*)", out)
    releases = sorted(Version(v) for v in listed[1].split(", ")) if listed else []
    admitted = [v for v in releases if not v.is_prerelease and req.specifier.contains(v)]
    if not admitted:
        sys.exit(f"check_versions: no release of {req.name} satisfies {req.specifier}")
    return str(admitted[0])


def tested_pins(names: set[str]) -> list[str]:
    """``name==release`` from the tested set for each of ``names`` (the test tools under --lowest)."""
    pins = tested_set(CONSTRAINTS)
    return [f"{name}=={pins[canonical(name)]}" for name in sorted(names) if canonical(name) in pins]


def install(python: Path, mode: str, torch: str) -> None:
    pip = python.parent / "pip"
    sh(pip, "install", "-q", f"torch=={torch}")
    if mode == "newest":
        sh(pip, "install", "-q", "-e", f"{ROOT}[{EXTRAS}]")
        return
    meta = project()
    runtime = [Requirement(r) for r in meta["dependencies"] if Requirement(r).name != "torch"]
    lowest = [f"{r.name}=={lowest_release(pip, r)}" for r in runtime]
    tools = {Requirement(r).name for extra in EXTRAS.split(",") for r in meta["optional-dependencies"][extra]}
    sh(pip, "install", "-q", *lowest, *tested_pins(tools), "-e", str(ROOT))


def releases(python: Path) -> dict[str, str]:
    frozen = sh(python.parent / "pip", "freeze", "--exclude-editable", capture=True)
    return {canonical(n): v for n, _, v in (line.partition("==") for line in frozen.splitlines()) if v}


def pin(found: dict[str, str]) -> None:
    torch = found.pop("torch").split("+")[0]
    lines = [
        "# The tested set: every package at the release the suite last passed with (tools/check_versions.py",
        "# --newest --pin wrote it). The README's commands and .ci/run install with `pip install -c` this file.",
        f"# torch is installed first by its own command (a GPU machine keeps its CUDA build): tested with torch=={torch}",
        *(f"{name}=={release}" for name, release in sorted(found.items())),
    ]
    CONSTRAINTS.write_text("\n".join(lines) + "\n")
    print(f"check_versions: wrote {len(found)} pins to {CONSTRAINTS.relative_to(ROOT)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--newest", action="store_const", const="newest", dest="mode")
    mode.add_argument("--lowest", action="store_const", const="lowest", dest="mode")
    parser.add_argument("--pin", action="store_true", help="with --newest: write data/constraints.txt if the suite passed")
    parser.add_argument("--torch", default=TORCH, metavar="RELEASE",
                        help=f"the torch release installed first (default {TORCH}; another pulls a CUDA build)")
    parser.add_argument("--venv", type=Path, help="where to build it (default: a folder in the temporary directory)")
    parser.add_argument("pytest_args", nargs="*", help="after --: passed to pytest")
    args = parser.parse_args()
    if args.pin and args.mode != "newest":
        parser.error("--pin goes with --newest")
    if args.pin and args.torch != TORCH:
        parser.error(f"--pin writes the set the README installs, which starts from torch=={TORCH}")
    venv = args.venv or Path(tempfile.gettempdir()) / f"labkit-check-{args.mode}"
    shutil.rmtree(venv, ignore_errors=True)
    sh(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    install(python, args.mode, args.torch)
    found = releases(python)
    print(f"\ncheck_versions --{args.mode}: " + ", ".join(f"{n} {found[n]}" for n in SHOWN if n in found), flush=True)
    suite = subprocess.run([python, "-m", "pytest", *args.pytest_args], cwd=ROOT)
    print(f"check_versions --{args.mode}: the suite {'passed' if suite.returncode == 0 else 'FAILED'} on "
          + ", ".join(f"{n} {found[n]}" for n in SHOWN[:4] if n in found))
    if args.pin and suite.returncode == 0:
        pin(found)
    return suite.returncode


if __name__ == "__main__":
    sys.exit(main())
