"""The memory that idle warm processes hold with all five notebooks open, as a workshop laptop has them.

    python benchmarks/warm_memory.py [--root CHECKOUT]

Opens each notebook in a kernel of its own and runs every cell, as a person working through them
does, keeping all five kernels alive; then, once every trial has ended, counts the warm processes
(templates and pre-started interpreters) that the kernels hold, with their memory: USS (what ending
one would free) and PSS (its share of what it maps with others). ``--root`` takes another checkout
(a ``git worktree`` of an older commit, say): its notebooks, run with its own labkit, which is how
the "before" of a change is measured beside its "after". A benchmark, not a test: it takes the
notebooks' build time (about 3 minutes), and what it reports is what the README quotes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import time
from pathlib import Path

import nbformat
import psutil
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
WARM = ("labkit.isolation._template", "labkit.isolation._spare", "labkit._template")  # the last: older checkouts
MIB = 2**20


def warm_processes(kernel: psutil.Process) -> list[psutil.Process]:
    """The kernel's children that are warm processes, not trials or anything else."""
    found = []
    for child in kernel.children():
        try:
            if any(name in " ".join(child.cmdline()) for name in WARM):
                found.append(child)
        except psutil.Error:
            continue
    return found


def memory(proc: psutil.Process) -> tuple[float, float]:
    """(USS, PSS) in MiB, or zeros for a process that ended meanwhile."""
    try:
        info = proc.memory_full_info()
    except psutil.Error:
        return 0.0, 0.0
    return info.uss / MIB, getattr(info, "pss", 0) / MIB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose notebooks and labkit run")
    args = parser.parse_args()
    root = args.root.resolve()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    notebooks = sorted((root / "notebooks").glob("0*.ipynb"))
    kernels: dict[str, psutil.Process] = {}
    started = time.monotonic()
    with contextlib.ExitStack() as open_notebooks:
        for path in notebooks:
            nb = nbformat.read(path, as_version=4)
            client = NotebookClient(nb, timeout=600, kernel_name="python3",
                                    resources={"metadata": {"path": str(path.parent)}})
            open_notebooks.enter_context(client.setup_kernel(env=env))
            for index, cell in enumerate(nb.cells):
                if cell.cell_type == "code":
                    client.execute_cell(cell, index)
            kernels[path.stem] = psutil.Process(client.km.provisioner.pid)
            print(f"{path.stem}: ran in {time.monotonic() - started:.0f} s from the start", flush=True)
        time.sleep(2)  # every trial has ended; nothing else starts while nobody runs a cell
        total = [0, 0.0, 0.0]
        for name, kernel in kernels.items():
            warm = warm_processes(kernel)
            uss, pss = map(sum, zip(*(memory(p) for p in warm))) if warm else (0.0, 0.0)
            kernel_uss, _ = memory(kernel)
            print(f"{name}: {len(warm)} idle warm processes, USS {uss:.0f} MiB, PSS {pss:.0f} MiB "
                  f"(the kernel itself: USS {kernel_uss:.0f} MiB)")
            total = [total[0] + len(warm), total[1] + uss, total[2] + pss]
    print(f"with {len(kernels)} notebooks open ({root.name} at {_commit(root)}): {total[0]} idle warm processes, "
          f"USS {total[1]:.0f} MiB, PSS {total[2]:.0f} MiB")


def _commit(root: Path) -> str:
    done = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "?"


if __name__ == "__main__":
    main()
