"""A hosted notebook's install (README, "Where it runs"): labkit into an environment that already holds
the platform's own torch, which must stay. Slow (a CUDA build of torch is 5.4 GB), so it runs apart:
``.ci/run`` runs it after the suite with ``LABKIT_TEST_HOSTED=1``; elsewhere it skips."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLATFORM_TORCH = "2.14.1"  # not the tested 2.13.0: it lies on these machines' disk, as Colab's lies on Colab's

pytestmark = [pytest.mark.hosted,
              pytest.mark.skipif(os.environ.get("LABKIT_TEST_HOSTED") != "1", reason="slow: LABKIT_TEST_HOSTED=1 runs it")]


def test_the_hosted_install_keeps_the_platforms_torch_and_runs_a_scenario(tmp_path):
    env_dir = tmp_path / "hosted"
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, f"torch=={PLATFORM_TORCH}"], check=True, timeout=1200)  # the platform's, before labkit
    subprocess.run([*pip, "-e", str(ROOT)], check=True, timeout=1200)  # the README's cell: %pip install -e ./labkit
    torch = subprocess.run([str(python), "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True)
    assert torch.stdout.startswith(PLATFORM_TORCH), torch.stdout + torch.stderr
    done = subprocess.run([str(env_dir / "bin" / "labkit"), "run", "thread-race", "--variant", "lock"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0 and "thread-race lock: 1 ok" in done.stdout, done.stdout + done.stderr[-3000:]
