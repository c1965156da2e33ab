"""A real `mlflow server` (or PostgreSQL store) stopped in the middle of `stx run`: nothing is lost.

Faults: the server comes back (the run flushes what it held and finishes normally); the
server stays away (the run finishes locally, holds its records in its outbox, and `stx sync`
delivers them once the server is back); a PostgreSQL store restarts mid-training.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from tests.services import free_port, mlflow_server_cmd, postgres_available, postgresql_server, stop, wait_http

STEPS = 400
LOG_EVERY = 5
FAST = ["--set", f"trainer.max_steps={STEPS}", "--set", "trainer.val_every_n_steps=100", "--set",
        "trainer.batch_size=4", "--set", "trainer.cell_set_len=16", "--set", "tracking.projection=pca",
        "--set", f"trainer.log_every_n_steps={LOG_EVERY}", "--set", "trainer.checkpoint_every_n_steps=100"]


@pytest.fixture
def server(tmp_path):
    """Start/stop control over one MLflow server whose store survives restarts."""
    port = free_port()
    backend = f"sqlite:///{tmp_path}/server/mlflow.db"
    (tmp_path / "server").mkdir()
    cmd = mlflow_server_cmd(backend, tmp_path / "server" / "artifacts", port)
    uri = f"http://127.0.0.1:{port}"
    state = {"proc": None}

    def start():
        with open(tmp_path / "server" / "server.log", "a") as log:  # the child keeps its own copy
            state["proc"] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_http(f"{uri}/health", timeout=120)

    def halt():
        stop(state["proc"])

    start()
    yield {"uri": uri, "start": start, "stop": halt, "client": MlflowClient(tracking_uri=uri, registry_uri=uri)}
    if state["proc"].poll() is None:
        halt()


def _launch(workdir, server, *extra):
    cmd = [sys.executable, "-m", "stx", "-v", "run", "--variant", "lora", "--config", str(workdir / "config.toml"),
           *FAST, "--experiment", "outage", "--tracking-uri", server["uri"], *extra]
    return subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")})


def _wait_for_losses(client, n, timeout=180.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        exp = client.get_experiment_by_name("outage")
        runs = client.search_runs([exp.experiment_id]) if exp else []
        if runs and len(client.get_metric_history(runs[0].info.run_id, "train/loss")) >= n:
            return runs[0].info.run_id
        time.sleep(0.2)
    raise TimeoutError("training never logged")


def _assert_complete(client, run_id):
    """Every step of every per-step metric exactly once, artifacts and model there, FINISHED."""
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for key in ("train/loss", "lr", "grad_norm/global"):  # logged every step, flushed every LOG_EVERY
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert sorted(steps) == list(range(STEPS)), (key, sorted(set(range(STEPS)) ^ set(steps))[:10])
    assert "eval/pearson_delta" in run.data.metrics and "val/best_loss" in run.data.metrics
    assert run.data.tags["stx.registered_model"] == "models:/stx-lora/1"
    assert [v.run_id for v in client.search_model_versions("name = 'stx-lora'")] == [run_id]
    found = {a.path for a in client.list_artifacts(run_id)} | {a.path for a in client.list_artifacts(run_id, "plots")}
    assert {"checkpoints", "predictions", "eval", "plots/loss.png", "data"} <= found


@pytest.fixture
def workdir(tmp_path, demo_path):
    path = tmp_path / "work"
    path.mkdir()
    (path / "config.toml").write_text(f'[datasets]\ndemo = "{demo_path}"\n[data]\nembed_key = "X_state"\n'
                                      'time_col = "day"\nmin_group_cells = 3\n')
    return path


def test_server_restart_mid_training_loses_nothing(server, workdir):
    proc = _launch(workdir, server)
    try:
        run_id = _wait_for_losses(server["client"], 3)
        server["stop"]()
        time.sleep(8)  # training goes on while the server is away
        server["start"]()
        out, _ = proc.communicate(timeout=400)
    finally:
        proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert "tracking store unreachable" in out and "reachable again" in out, out[-3000:]
    _assert_complete(server["client"], run_id)
    assert not (workdir / "stx_outputs" / run_id / "outbox.jsonl").exists()


def test_server_that_never_returns_then_stx_sync(server, workdir):
    proc = _launch(workdir, server, "--set", "tracking.outage_grace_s=2")
    try:
        run_id = _wait_for_losses(server["client"], 3)
        server["stop"]()
        out, _ = proc.communicate(timeout=400)
    finally:
        proc.kill()
    assert proc.returncode == 0, out[-3000:]
    folder = workdir / "stx_outputs" / run_id
    assert f"stx sync {folder}" in out and "finished locally" in out, out[-3000:]
    ops = [json.loads(line)["op"] for line in (folder / "outbox.jsonl").read_text().splitlines()]
    assert ops[0] == "metrics" and "artifact" in ops and "register" in ops and ops[-1] == "terminate"
    assert (folder / "predictions" / "predictions.h5ad").exists()

    server["start"]()
    assert server["client"].get_run(run_id).info.status == "RUNNING"  # no FINISHED over missing records
    sync = subprocess.run([sys.executable, "-m", "stx", "sync", str(folder), "--tracking-uri", server["uri"]],
                          cwd=workdir, capture_output=True, text=True, timeout=300)
    assert sync.returncode == 0, sync.stdout + sync.stderr[-3000:]
    assert "the model registration" in sync.stdout and "status is now FINISHED" in sync.stdout
    _assert_complete(server["client"], run_id)


@pytest.mark.skipif(not postgres_available(), reason="PostgreSQL binaries (initdb, pg_ctl) not installed")
def test_postgresql_store_restart_mid_training_loses_nothing(workdir):
    with postgresql_server("mlflow") as pg:
        client = MlflowClient(tracking_uri=pg.url, registry_uri=pg.url)
        proc = _launch(workdir, {"uri": pg.url})
        try:
            run_id = _wait_for_losses(client, 3)
            pg.stop()
            time.sleep(8)
            pg.start()
            out, _ = proc.communicate(timeout=400)
        finally:
            proc.kill()
        assert proc.returncode == 0, out[-3000:]
        assert "tracking store unreachable" in out and "reachable again" in out, out[-3000:]
        _assert_complete(client, run_id)
