"""The experiment scripts' --quick mode: every world, case and table, end to end, tiny."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(script: str, tmp_path: Path) -> str:
    out = tmp_path / "results.md"
    env = {**os.environ, "STX_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run([sys.executable, str(REPO / "experiments" / script / "run.py"), "--quick", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out.read_text()


@pytest.mark.slow
def test_velocity_effect_quick(tmp_path):
    text = _run("velocity_effect", tmp_path)
    for world in ("velocity-aligned", "velocity-misleading", "burn"):
        assert f"## World `{world}`" in text
    assert "| lora-velocity vs lora |" in text and "| lora vs scratch |" in text
    assert "Wall time on this machine" in text
    assert (tmp_path / "mlruns" / "mlflow.db").is_file()  # every run went to MLflow


@pytest.mark.slow
def test_mhc_stability_quick_and_an_interrupted_script_picks_up_where_it_stopped(tmp_path):
    text = _run("mhc_stability", tmp_path)
    assert "## Setting `normal`" in text and "## Setting `stress`" in text
    assert "| loss/max_rise |" in text and "| diverged or blown-up seeds" in text
    runs = sorted(p.name for p in (tmp_path / "stx_outputs").iterdir())
    # run again: every case and seed is read back from MLflow, none trained twice, same tables
    again = _run("mhc_stability", tmp_path)
    assert sorted(p.name for p in (tmp_path / "stx_outputs").iterdir()) == runs
    assert again.split("Wall time")[1].split("\n", 1)[1] == text.split("Wall time")[1].split("\n", 1)[1]


@pytest.mark.slow
def test_time_encoding_quick(tmp_path):
    text = _run("time_encoding", tmp_path)
    for world in ("burn", "time-switch"):
        assert f"## World `{world}`" in text
    assert "| lora (time axis) vs lora (time category) |" in text
    assert "*mean_shift* (reference)" in text
