"""The team deployment of docker/docker-compose.yml, checked statically and run natively.

No Docker engine exists here, so the same topology runs on 127.0.0.1: a throwaway
PostgreSQL (initdb/pg_ctl), an S3 stand-in (moto server) and `docker/mlflow-server.sh`
(the very script the compose file runs) with the compose file's own environment,
hosts rewritten to the local services. Everything is stopped afterwards, even on failure.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.services import free_port, postgres_available, postgresql, process, wait_http

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker/docker-compose.yml").read_text())
SCRIPT = REPO / "docker/mlflow-server.sh"
SECRETS = {"POSTGRES_USER": "stx", "POSTGRES_PASSWORD": "pg-s3cret-xyz", "MINIO_ROOT_USER": "minio",
           "MINIO_ROOT_PASSWORD": "minio-s3cret-xyz", "ARTIFACT_BUCKET": "stx-artifacts",
           "MLFLOW_ADMIN_USER": "admin", "MLFLOW_ADMIN_PASSWORD": "mlflow-s3cret-xyz",
           "MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "mlflow-s3cret-xyz",
           "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-csrf-key"}
FAST = ["--set", "trainer.max_steps=6", "--set", "trainer.val_every_n_steps=3", "--set", "trainer.batch_size=4",
        "--set", "trainer.cell_set_len=16", "--set", "tracking.projection=pca", "--set", "trainer.log_every_n_steps=3"]


def _required_by_script() -> set[str]:
    return set(re.findall(r'"\$\{(\w+):\?\}"', SCRIPT.read_text()))


def _substitute(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], value)


def test_compose_file_agrees_with_the_server_script_and_keeps_secrets_out():
    services = COMPOSE["services"]
    assert set(services) == {"postgres", "minio", "minio-init", "mlflow", "stx-worker"}
    mlflow = services["mlflow"]
    assert mlflow["entrypoint"] == ["/opt/stx/docker/mlflow-server.sh"]
    assert _required_by_script() <= set(mlflow["environment"])
    assert mlflow["environment"]["MLFLOW_BACKEND_URI"].startswith("postgresql+psycopg://")
    assert mlflow["environment"]["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert mlflow["ports"] == ["5000:5000"] and mlflow["environment"]["MLFLOW_PORT"] == "5000"
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("postgres", "minio", "mlflow"):
        assert "healthcheck" in services[name], name
    worker = services["stx-worker"]
    assert worker["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert worker["command"][0] == "sweep" and "--storage" in worker["command"]
    # every secret comes from the env file: no literal password anywhere in the compose file
    text = (REPO / "docker/docker-compose.yml").read_text()
    for line in text.splitlines():
        if re.search(r"PASSWORD\s*:", line):
            assert "${" in line, line
    example = (REPO / "docker/env.example").read_text()
    used = set(re.findall(r"\$\{(\w+)\}", text))
    assert used <= set(re.findall(r"^(\w+)=", example, re.M)), used - set(re.findall(r"^(\w+)=", example, re.M))


def _create_databases(url: str) -> None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        for db in ("mlflow", "mlflow_auth", "optuna"):
            conn.execute(sqlalchemy.text(f"CREATE DATABASE {db}"))
    engine.dispose()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if not postgres_available():
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not installed")
    import boto3

    tmp = tmp_path_factory.mktemp("stack")
    with postgresql() as pg_url:
        _create_databases(pg_url)
        pg_host = pg_url.split("@")[1].split("/")[0]
        s3_port, mlflow_port = free_port(), free_port()
        s3 = f"http://127.0.0.1:{s3_port}"
        base = {**os.environ, **SECRETS, "AWS_DEFAULT_REGION": "us-east-1"}
        with process([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)], base,
                      tmp / "moto.log"):
            wait_http(s3)
            boto3.client("s3", endpoint_url=s3, aws_access_key_id="minio", aws_secret_access_key="x",
                         region_name="us-east-1").create_bucket(Bucket=SECRETS["ARTIFACT_BUCKET"])
            # the compose file's mlflow environment, hosts rewritten to the local services
            env = {k: _substitute(str(v), SECRETS).replace("postgres:5432", pg_host).replace("http://minio:9000", s3)
                   for k, v in COMPOSE["services"]["mlflow"]["environment"].items()}
            env.update(MLFLOW_HOST="127.0.0.1", MLFLOW_PORT=str(mlflow_port), MLFLOW_WORKERS="1",
                       MLFLOW_ALLOWED_HOSTS=f"127.0.0.1:{mlflow_port},localhost:{mlflow_port}",
                       MLFLOW_AUTH_CONFIG_PATH=str(tmp / "auth.ini"))
            with process(["sh", str(SCRIPT)], {**base, **env}, tmp / "mlflow.log"):
                uri = f"http://127.0.0.1:{mlflow_port}"
                wait_http(f"{uri}/health", timeout=180)
                client_env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
                              "MLFLOW_TRACKING_USERNAME": SECRETS["MLFLOW_TRACKING_USERNAME"],
                              "MLFLOW_TRACKING_PASSWORD": SECRETS["MLFLOW_TRACKING_PASSWORD"]}
                for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"):
                    client_env.pop(key, None)  # proxied artifacts: clients need no S3 credentials
                yield {"uri": uri, "s3": s3, "env": client_env, "tmp": tmp,
                       "optuna": pg_url.rsplit("/", 1)[0].replace("stx@", f"stx:{SECRETS['POSTGRES_PASSWORD']}@")
                       + "/optuna"}


def _stx(stack, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", "stx", *args], cwd=stack["tmp"], env=stack["env"],
                          capture_output=True, text=True, timeout=timeout)


def test_unauthenticated_requests_are_refused(stack):
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{stack['uri']}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)
    assert info.value.code == 401


def test_run_and_sweep_against_the_server(stack, demo_path):
    import boto3
    from mlflow import MlflowClient

    config = stack["tmp"] / "config.toml"
    config.write_text(f'[datasets]\ndemo = "{demo_path}"\n[data]\nembed_key = "X_state"\ntime_col = "day"\nmin_group_cells = 3\n')
    run = _stx(stack, "run", "--variant", "lora", "--config", str(config), *FAST, "--experiment", "team")
    assert run.returncode == 0, run.stderr[-3000:]
    sweep = _stx(stack, "sweep", "--variant", "lora", "--n-trials", "2", "--workers", "2", "--config", str(config),
                 *FAST, "--experiment", "team", "--study", "team", "--storage", stack["optuna"], "--pruner", "none")
    assert sweep.returncode == 0, sweep.stderr[-3000:]

    os.environ["MLFLOW_TRACKING_USERNAME"] = SECRETS["MLFLOW_TRACKING_USERNAME"]
    os.environ["MLFLOW_TRACKING_PASSWORD"] = SECRETS["MLFLOW_TRACKING_PASSWORD"]
    try:
        client = MlflowClient(stack["uri"], registry_uri=stack["uri"])
        runs = client.search_runs([client.get_experiment_by_name("team").experiment_id])
        trials = [r for r in runs if r.data.tags.get("stx.parent")]
        single = [r for r in runs if r.data.tags.get("stx.variant") == "lora" and not r.data.tags.get("stx.parent")]
        sweeps = [r for r in runs if r.data.tags.get("stx.kind") == "sweep"]
        assert len(single) == 1 and len(trials) == 2 and len(sweeps) == 1
        assert {r.info.status for r in runs} == {"FINISHED"}
        assert "train/loss" in single[0].data.metrics and "eval/energy_ratio" in single[0].data.metrics
        assert {a.path for a in client.list_artifacts(single[0].info.run_id)} >= {"checkpoints", "predictions", "plots"}
        assert client.get_model_version_by_alias("stx-lora", "champion").run_id in {r.info.run_id for r in trials}
        # credentials never leak into params, tags or output
        for r in runs:
            blob = json.dumps({**r.data.params, **r.data.tags})
            assert not any(s in blob for s in ("pg-s3cret-xyz", "mlflow-s3cret-xyz", "minio-s3cret-xyz"))
        assert sweeps[0].data.tags["stx.storage"].startswith("postgresql+psycopg://stx:***@")
    finally:
        os.environ.pop("MLFLOW_TRACKING_USERNAME", None)
        os.environ.pop("MLFLOW_TRACKING_PASSWORD", None)
    for out in (run.stdout + run.stderr, sweep.stdout + sweep.stderr):
        assert "pg-s3cret-xyz" not in out and "mlflow-s3cret-xyz" not in out
    objects = boto3.client("s3", endpoint_url=stack["s3"], aws_access_key_id="minio", aws_secret_access_key="x",
                           region_name="us-east-1").list_objects_v2(Bucket=SECRETS["ARTIFACT_BUCKET"], Prefix="mlflow/")
    keys = [o["Key"] for o in objects.get("Contents", [])]
    assert any(k.endswith("predictions/predictions.h5ad") for k in keys)
    assert any(k.endswith("checkpoints/last.ckpt") for k in keys)
