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
           "MLFLOW_DB_PASSWORD": "mlflowdb-s3cret-xyz", "OPTUNA_DB_PASSWORD": "optunadb-s3cret-xyz",
           "MLFLOW_ADMIN_USER": "admin", "MLFLOW_ADMIN_PASSWORD": "mlflow-s3cret-xyz",
           "MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "mlflow-s3cret-xyz",
           "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-csrf-key", "MLFLOW_DEFAULT_PERMISSION": "READ",
           "MLFLOW_ALLOWED_HOSTS": "unused", "MLFLOW_BIND": "127.0.0.1", "STX_WORKER_USER": "stx-worker",
           "STX_WORKER_PASSWORD": "worker-s3cret-xyz"}
TEAM = {"alice": "alice-s3cret-xyz", "bob": "bob-s3cret-xyz"}
PASSWORDS = ("pg-s3cret-xyz", "mlflow-s3cret-xyz", "minio-s3cret-xyz", "mlflowdb-s3cret-xyz", "optunadb-s3cret-xyz",
             *TEAM.values())
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
    # least privilege: the server connects as mlflow_app, the workers as optuna_app, never the superuser
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg://mlflow_app:")
    assert mlflow["environment"]["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert mlflow["environment"]["MLFLOW_DEFAULT_PERMISSION"] == "${MLFLOW_DEFAULT_PERMISSION}"
    # published on 127.0.0.1 unless MLFLOW_BIND says otherwise; MinIO's console not at all
    assert mlflow["ports"] == ["${MLFLOW_BIND}:5000:5000"] and mlflow["environment"]["MLFLOW_PORT"] == "5000"
    assert "ports" not in services["minio"]
    assert re.search(r"^MLFLOW_BIND=127\.0\.0\.1$", (REPO / "docker/env.example").read_text(), re.M)
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("postgres", "minio", "mlflow"):
        assert "healthcheck" in services[name], name
    for name, service in services.items():  # pinned images: an exact version, never latest
        assert ":" in service["image"] and not service["image"].endswith(":latest"), name
        assert re.search(r":[^:]*\d", service["image"]), name
    worker = services["stx-worker"]
    assert worker["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert worker["environment"]["MLFLOW_TRACKING_USERNAME"] == "${STX_WORKER_USER}"  # not the admin
    assert worker["command"][0] == "sweep" and "--storage" in worker["command"] and "--new" not in worker["command"]
    assert any("optuna_app:" in part for part in worker["command"])
    assert any(v.endswith(":/work/stx_outputs") for v in worker["volumes"])
    # every secret comes from the env file: no literal password anywhere in the compose file
    text = (REPO / "docker/docker-compose.yml").read_text()
    for line in text.splitlines():
        if re.search(r"PASSWORD\s*:", line):
            assert "${" in line, line
    example = (REPO / "docker/env.example").read_text()
    used = set(re.findall(r"\$\{(\w+)\}", text))
    assert used <= set(re.findall(r"^(\w+)=", example, re.M)), used - set(re.findall(r"^(\w+)=", example, re.M))


def _create_databases(url: str, env: dict[str, str]) -> None:
    """docker/init-databases.sh itself, against the throwaway server."""
    host, port = url.split("@")[1].split("/")[0].split(":")
    subprocess.run(["sh", str(REPO / "docker/init-databases.sh")], check=True, capture_output=True,
                   env={**env, "PGHOST": host, "PGPORT": port})


def test_the_server_refuses_placeholder_secrets_and_bad_permissions(tmp_path):
    env = {**os.environ, **{k: v for k, v in SECRETS.items()}, "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "a.ini"),
           "MLFLOW_BACKEND_STORE_URI": "postgresql+psycopg://u:p@h/db", "MLFLOW_AUTH_DB_URI": "sqlite:///x",
           "MLFLOW_ARTIFACTS_DESTINATION": "s3://b/p"}
    placeholder = subprocess.run(["sh", str(SCRIPT)], env={**env, "MLFLOW_ADMIN_PASSWORD": "change-me-mlflow-admin"},
                                 capture_output=True, text=True, timeout=30)
    assert placeholder.returncode == 2 and "MLFLOW_ADMIN_PASSWORD still holds a change-me placeholder" in \
        placeholder.stderr
    permission = subprocess.run(["sh", str(SCRIPT)], env={**env, "MLFLOW_DEFAULT_PERMISSION": "ALL"},
                                capture_output=True, text=True, timeout=30)
    assert permission.returncode == 2 and "MLFLOW_DEFAULT_PERMISSION must be" in permission.stderr


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if not postgres_available():
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not installed")
    import boto3

    tmp = tmp_path_factory.mktemp("stack")
    with postgresql() as pg_url:
        _create_databases(pg_url, {**os.environ, **SECRETS})
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
            # a remote hostname the team uses, beside the local ones
            env.update(MLFLOW_HOST="127.0.0.1", MLFLOW_PORT=str(mlflow_port), MLFLOW_WORKERS="1",
                       MLFLOW_ALLOWED_HOSTS=f"127.0.0.1:{mlflow_port},localhost:{mlflow_port},"
                                            f"mlflow-host:{mlflow_port}",
                       MLFLOW_AUTH_CONFIG_PATH=str(tmp / "auth.ini"))
            with process(["sh", str(SCRIPT)], {**base, **env}, tmp / "mlflow.log") as server:
                uri = f"http://127.0.0.1:{mlflow_port}"
                wait_http(f"{uri}/health", timeout=180)
                client_env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
                              "MLFLOW_TRACKING_USERNAME": SECRETS["MLFLOW_TRACKING_USERNAME"],
                              "MLFLOW_TRACKING_PASSWORD": SECRETS["MLFLOW_TRACKING_PASSWORD"]}
                for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"):
                    client_env.pop(key, None)  # proxied artifacts: clients need no S3 credentials
                yield {"uri": uri, "port": mlflow_port, "s3": s3, "env": client_env, "tmp": tmp, "server": server,
                       "optuna": pg_url.rsplit("/", 1)[0].replace("stx@", f"optuna_app:{SECRETS['OPTUNA_DB_PASSWORD']}@")
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
            assert not any(s in blob for s in PASSWORDS)
        assert sweeps[0].data.tags["stx.storage"].startswith("postgresql+psycopg://optuna_app:***@")
        assert single[0].data.tags["mlflow.user"] == "admin"
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


def _server_command_lines(pid: int) -> list[str]:
    """The command lines of a process and all its descendants (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            out.append(Path(f"/proc/{current}/cmdline").read_bytes().replace(b"\0", b" ").decode())
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        todo += [int(c) for c in children]
    return out


def test_the_server_is_hardened(stack):
    # no password on any command line (visible to every user in `ps`)
    lines = _server_command_lines(stack["server"].pid)
    assert any("mlflow" in line for line in lines)
    assert not any(secret in line for line in lines for secret in PASSWORDS)
    # the permission every user gets by default is the documented setting
    assert "default_permission = READ" in (stack["tmp"] / "auth.ini").read_text()
    # a remote hostname the team configured is accepted; an unknown one is refused
    for host, allowed in ((f"mlflow-host:{stack['port']}", True), (f"evil.example:{stack['port']}", False)):
        request = urllib.request.Request(f"{stack['uri']}/api/2.0/mlflow/experiments/search?max_results=1",
                                         headers={"Host": host})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=10)
        assert info.value.code == (401 if allowed else 403), host  # 401: it got as far as asking who you are


def test_every_member_can_register_versions_and_no_one_can_touch_anothers_runs(stack, demo_path):
    from mlflow import MlflowClient

    users = stack["tmp"] / "team.txt"
    users.write_text("".join(f"{name}:{password}\n" for name, password in TEAM.items()))
    grant = subprocess.run([sys.executable, str(REPO / "docker/team-access.py"), "--users-file", str(users)],
                           env=stack["env"], capture_output=True, text=True, timeout=120)
    assert grant.returncode == 0, grant.stderr[-2000:]
    config = stack["tmp"] / "config.toml"
    config.write_text(f'[datasets]\ndemo = "{demo_path}"\n[data]\nembed_key = "X_state"\ntime_col = "day"\n'
                      "min_group_cells = 3\n")
    runs = {}
    for name, password in TEAM.items():
        env = {**stack["env"], "MLFLOW_TRACKING_USERNAME": name, "MLFLOW_TRACKING_PASSWORD": password}
        done = subprocess.run([sys.executable, "-m", "stx", "run", "--variant", "lora", "--config", str(config), *FAST,
                               "--experiment", f"{name}-work"], cwd=stack["tmp"], env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "Registered as models:/stx-lora/" in done.stdout, done.stdout[-2000:]
        os.environ.update(MLFLOW_TRACKING_USERNAME=name, MLFLOW_TRACKING_PASSWORD=password)
        try:
            client = MlflowClient(stack["uri"], registry_uri=stack["uri"])
            run = client.search_runs([client.get_experiment_by_name(f"{name}-work").experiment_id])[0]
            assert run.data.tags["mlflow.user"] == name  # named on their own runs
            runs[name] = run.info.run_id
        finally:
            os.environ.pop("MLFLOW_TRACKING_USERNAME", None)
            os.environ.pop("MLFLOW_TRACKING_PASSWORD", None)
    # bob may read alice's run but not change it
    from mlflow.exceptions import MlflowException

    os.environ.update(MLFLOW_TRACKING_USERNAME="bob", MLFLOW_TRACKING_PASSWORD=TEAM["bob"])
    try:
        client = MlflowClient(stack["uri"], registry_uri=stack["uri"])
        assert client.get_run(runs["alice"]).info.status == "FINISHED"
        with pytest.raises(MlflowException, match="403|PERMISSION_DENIED|Permission denied"):
            client.set_tag(runs["alice"], "stx.note", "overwritten by bob")
        with pytest.raises(MlflowException, match="403|PERMISSION_DENIED|Permission denied"):
            client.delete_registered_model("stx-lora")  # the shared model stays the admin's to manage
    finally:
        os.environ.pop("MLFLOW_TRACKING_USERNAME", None)
        os.environ.pop("MLFLOW_TRACKING_PASSWORD", None)
