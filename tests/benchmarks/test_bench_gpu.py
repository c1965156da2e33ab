"""The GPU benchmark's CPU path: without CUDA it says so and exits 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the benchmark would measure, not skip")
def test_skips_cleanly_without_cuda():
    done = subprocess.run([sys.executable, str(REPO / "tests/benchmarks/bench_gpu.py"), "--steps", "2"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "skipped: no CUDA device here" in done.stdout


def test_model_flops_count_dense_layers_and_attention():
    sys.path.insert(0, str(REPO))
    from tests.benchmarks.bench_gpu import TAHOE, model_flops

    class Fake(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1000))

    tokens = 2 * TAHOE["set"]
    expected = 6 * 1000 * tokens + 12 * TAHOE["layers"] * TAHOE["hidden"] * TAHOE["set"] * tokens
    assert model_flops(Fake(), 2) == expected
