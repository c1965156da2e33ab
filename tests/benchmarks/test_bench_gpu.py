"""The GPU benchmark's CPU path: without CUDA it says so and exits 0."""

from __future__ import annotations

import json
import os
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
            self.frozen = torch.nn.Parameter(torch.zeros(3000), requires_grad=False)
            self.w = torch.nn.Parameter(torch.zeros(1000))

    tokens = 2 * TAHOE["set"]
    attention = 12 * TAHOE["layers"] * TAHOE["hidden"] * TAHOE["set"] * tokens
    # forward and input gradients for every weight, the weight gradient only for the trained one
    assert model_flops(Fake(), 2) == (4 * 3000 + 6 * 1000) * tokens + attention


def _smoke(tmp_path, env=None):
    out = tmp_path / "figures.json"
    done = subprocess.run([sys.executable, str(REPO / "tests/benchmarks/bench_gpu.py"), "--smoke", "--steps", "2",
                           "--json", str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, json.loads(out.read_text())


def test_smoke_runs_the_script_on_the_cpu(tmp_path):
    """What a lent GPU would run (less its CUDA-only calls), at a tiny size on the CPU: the script must not fail in the few
    minutes a device is lent."""
    env = {k: v for k, v in os.environ.items() if k != "STX_BENCH_ARC_STATE"}
    stdout, figures = _smoke(tmp_path, env)
    assert "CPU smoke run: figures mean nothing" in stdout and "eager: step" in stdout
    assert "peak n/a, MFU n/a" in stdout  # no card: no peak memory, no utilisation
    assert figures["results"]["eager"]["step_s"] > 0 and figures["results"]["eager"]["peak_gib"] is None
    assert figures["arc_state"] is None


@pytest.mark.skipif(not os.environ.get("STX_BENCH_ARC_STATE"), reason="set STX_BENCH_ARC_STATE to an arc-state Python")
def test_smoke_compares_with_arc_state_when_installed(tmp_path):
    stdout, figures = _smoke(tmp_path)
    assert "stx / arc-state lora step" in stdout
    assert figures["arc_state"]["stx"]["wall"] > 0 and figures["arc_state"]["arc"]["wall"] > 0
    # the same plain ST on both sides: stx adapts seven projections, arc-state attention only
    assert figures["arc_state"]["stx"]["trainable"] > figures["arc_state"]["arc"]["trainable"]
