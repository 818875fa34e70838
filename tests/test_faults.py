"""A short run of benchmarks/faults.py: labkit killed outright at random moments leaves nothing behind."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import faults  # noqa: E402


def test_killed_outright_at_random_moments_warm_and_fresh_it_leaves_nothing():
    # a hung trial, warm and fresh (the benchmark's 40 kills add running ones)
    assert faults.main(["--kills", "2", "--jobs", "2", "--within", "6"]) == "left after 2 kills: 0 processes, 0 folders"
