"""End to end through the CLI on the demo data: MLflow records, artifacts, registry, predict."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from stx.cli import cli

REPO = Path(__file__).resolve().parents[1]

FAST = ["--set", "trainer.max_steps=12", "--set", "trainer.val_every_n_steps=6", "--set", "trainer.batch_size=4",
        "--set", "trainer.cell_set_len=16", "--set", "tracking.projection=pca", "--set", "trainer.log_every_n_steps=5",
        "--set", "trainer.checkpoint_every_n_steps=6"]
ARTIFACTS = ["config/resolved.toml", "checkpoints/last.ckpt", "predictions/predictions.h5ad",
             "eval/metrics_by_group.csv", "plots/loss.png", "plots/grad_norm.png", "plots/cells_pca.png",
             "data/split.csv"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, demo_path):
    path = tmp_path_factory.mktemp("work")
    config = path / "config.toml"
    config.write_text(f'[datasets]\ndemo = "{demo_path}"\n[data]\nembed_key = "X_state"\ntime_col = "day"\nmin_group_cells = 3\n'
                      '[model.velocity]\nvelocity_key = "velocity_state"\n')
    return path


def _store(workdir):
    return MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlruns/mlflow.db")


def _run(workdir, monkeypatch, *args):
    monkeypatch.chdir(workdir)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return CliRunner().invoke(cli, ["run", "--config", str(workdir / "config.toml"), *FAST, *args])


def _artifacts(client, run_id, path=""):
    out = []
    for item in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return out


@pytest.fixture(scope="module")
def lora_run(workdir):
    mp = pytest.MonkeyPatch()
    result = _run(workdir, mp, "--variant", "lora", "--seed", "3")
    mp.undo()
    assert result.exit_code == 0, result.output
    client = _store(workdir)
    run = client.search_runs([client.get_experiment_by_name(workdir.name).experiment_id],
                             "tags.`stx.variant` = 'lora'")[0]
    return result, client, run


def test_lora_run_is_tracked_completely(lora_run, workdir):
    result, client, run = lora_run
    assert run.info.status == "FINISHED"
    assert run.info.run_name.startswith("lora-")
    assert f"Run {run.info.run_name} ({run.info.run_id}) finished" in result.output
    assert "Registered as models:/stx-lora/1" in result.output
    tags = run.data.tags
    assert tags["stx.variant"] == "lora" and tags["stx.dataset"] == "demo.h5ad"
    assert len(tags["stx.data_sha256"]) == 64 and tags["stx.version"]
    # MLflow's standard lineage: who, from what command, and what the run is (its description)
    assert tags["mlflow.user"] and tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"]
    assert tags["mlflow.note.content"].startswith("lora: ")
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.note.content"].startswith("stx runs:")
    params = run.data.params
    assert params["model.lora.r"] == "16" and params["trainer.seed"] == "3" and params["variant"] == "lora"
    assert int(params["n_trainable_params"]) < int(params["n_total_params"])
    metrics = run.data.metrics
    for key in ("train/loss", "train/energy_loss", "val/loss", "lr", "grad_norm/global", "step_time_s",
                "grad_norm/median", "grad_norm/max", "grad_norm/cv", "grad_norm/spikes", "loss/spikes",
                "trainable_fraction", "eval/pearson_delta", "eval/energy_ratio", "eval/direction_cos",
                "eval/magnitude_ratio", "eval/temporal_coherence", "eval/cell_r2", "val/energy_loss",
                "ref/mean_shift/pearson_delta", "ref/baseline/energy_ratio", "ref/perturbed_mean/energy_ratio",
                "ref/truth/energy_ratio", "ref/truth/cell_r2", "grad_norm/clipped_frac"):
        assert key in metrics, key
    assert 0 < metrics["trainable_fraction"] < 0.3
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == list(range(12))
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")] == [6, 12]
    # held-out metrics and summaries at step 0: the MLflow UI draws them as bars
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/energy_ratio")] == [0]
    assert set(ARTIFACTS) <= set(_artifacts(client, run.info.run_id))
    groups = pd_read(client.download_artifacts(run.info.run_id, "eval/metrics_by_group.csv", str(workdir)))
    assert set(groups["predictor"]) == {"model", "baseline", "mean_shift", "perturbed_mean", "truth"}
    assert {"n_fed", "n_reference", "n_real", "small", "heldout", "cell_r2_matched"} <= set(groups.columns)


def test_predictions_artifact_layout(lora_run, workdir, demo_adata):
    _, client, run = lora_run
    local = client.download_artifacts(run.info.run_id, "predictions/predictions.h5ad", str(workdir))
    pred = ad.read_h5ad(local)
    assert pred.obsm["X_state"].shape[1] == 64
    # one var per embedding dimension, named; provenance names the run and the model it logged
    assert pred.n_vars == 64 and list(pred.var_names[:2]) == ["X_state_0", "X_state_1"]
    assert pred.uns["stx"]["run_id"] == run.info.run_id
    assert pred.uns["stx"]["model_uri"] == f"runs:/{run.info.run_id}/model"
    assert {"source_cell", "cell_types_simple_short", "day", "mouse_id", "condition"} <= set(pred.obs)
    assert set(pred.obs["condition"]) == {"Burn"}
    source = demo_adata.obs.loc[pred.obs["source_cell"]]
    assert (source["condition"] == "Sham").all()
    np.testing.assert_array_equal(source["cell_types_simple_short"].astype(str), pred.obs["cell_types_simple_short"].astype(str))


def test_registered_model_predicts_through_pyfunc_and_cli(lora_run, workdir, demo_path, monkeypatch):
    import mlflow

    _, client, run = lora_run
    version = client.get_model_version("stx-lora", "1")
    assert version.run_id == run.info.run_id
    mlflow.set_tracking_uri(f"sqlite:///{workdir}/mlruns/mlflow.db")
    mlflow.set_registry_uri(f"sqlite:///{workdir}/mlruns/mlflow.db")
    model = mlflow.pyfunc.load_model("models:/stx-lora/1")
    assert model.metadata.signature is not None and model.metadata.saved_input_example_info is not None
    data = ad.read_h5ad(demo_path)
    controls = data[(data.obs["condition"] == "Sham").to_numpy()].copy()
    controls.write_h5ad(workdir / "controls.h5ad")
    # the snippet users copy from docs/tracking.md, as it is
    monkeypatch.chdir(workdir)
    snippet = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "tracking.md").read_text(), re.S)
    namespace: dict = {}
    exec(next(s for s in snippet if "pyfunc.load_model" in s), namespace)
    out = namespace["predicted"]
    assert out.shape == (controls.n_obs, 64) and np.isfinite(out.to_numpy()).all()

    result = CliRunner().invoke(cli, ["predict", "--model", "models:/stx-lora/1", "--data", str(demo_path),
                                      "--out", str(workdir / "pred.h5ad")])
    assert result.exit_code == 0, result.output
    pred = ad.read_h5ad(workdir / "pred.h5ad")
    # the pyfunc predicts exactly like stx predict, and stx predict keeps the input's order
    assert list(pred.obs["source_cell"]) == list(controls.obs_names)
    np.testing.assert_allclose(pred.obsm["X_state"], out.to_numpy(), atol=1e-6)
    assert pred.uns["stx"]["model_uri"] == "models:/stx-lora/1" and pred.uns["stx"]["cell_set_len"] == 16
    assert pred.uns["stx"]["run_id"] == run.info.run_id and pred.n_vars == 64  # from the model's MLmodel
    result = CliRunner().invoke(cli, ["predict", "--model", "models:/stx-lora/1", "--data", str(demo_path),
                                      "--out", str(demo_path)])
    assert result.exit_code == 2 and "is the input file" in result.output
    result = CliRunner().invoke(cli, ["predict", "--model", run.info.run_id, "--data", str(demo_path),
                                      "--out", str(workdir / "pred2.h5ad"), "--condition", "Fire"])
    assert result.exit_code == 2 and "condition 'Fire' unknown to this model" in result.output
    assert not (workdir / "pred2.h5ad").exists()


def _pyenv_python() -> str | None:
    """Why MLflow's virtualenv manager cannot build this interpreter's Python here, or None."""
    import platform

    if shutil.which("pyenv") is None:
        return "pyenv is not on PATH (MLflow's virtualenv env manager builds the model's Python with it)"
    versions = subprocess.run(["pyenv", "versions", "--bare"], capture_output=True, text=True).stdout.split()
    if platform.python_version() not in versions:
        return f"pyenv has no Python {platform.python_version()} (building it would need the network)"
    return None


def test_registered_model_serves_over_rest_from_a_clean_environment(lora_run, workdir, tmp_path):
    """`mlflow models serve --env-manager virtualenv` on a registered version: MLflow builds a
    fresh virtualenv (no site packages, no stx) from the model's own python_env.yaml and
    requirements.txt, installs them from the package index, and serves the code the model
    carries; the REST answer equals the in-process pyfunc. Minutes: it installs torch."""
    import json
    import time
    import urllib.request

    import mlflow
    import pandas as pd

    from tests.services import free_port, stop

    if reason := _pyenv_python():
        pytest.skip(reason)
    _, client, run = lora_run
    uri = f"sqlite:///{workdir}/mlruns/mlflow.db"
    requirements = client.download_artifacts(run.info.run_id, "model/requirements.txt", str(tmp_path))
    assert not [r for r in open(requirements).read().split() if r.lower().startswith("stx")]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(MLFLOW_TRACKING_URI=uri, MLFLOW_REGISTRY_URI=uri, MLFLOW_ENV_ROOT=str(tmp_path / "envs"))
    with open(tmp_path / "serve.log", "w") as log:
        # from tmp_path: the fresh environment must not find stx in its working directory
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/stx-lora/1", "-p",
                                 str(port), "-h", "127.0.0.1", "--env-manager", "virtualenv"], env=env, cwd=tmp_path,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    frame = pd.DataFrame(np.random.default_rng(1).normal(size=(6, 64)).astype(np.float32),
                         columns=[f"X_state_{i}" for i in range(64)])
    frame["condition"] = "Burn"
    frame["day"] = ["10", "14", "19"] * 2
    body = json.dumps({"dataframe_split": frame.to_dict(orient="split")}).encode()
    try:
        deadline = time.monotonic() + 900
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, \
                    "the model server did not start:\n" + (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(1)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())
        [fresh] = (tmp_path / "envs").glob("mlflow-*")
        isolated = subprocess.run([str(fresh / "bin" / "python"), "-c", "import stx"], cwd=tmp_path, env=env,
                                  capture_output=True, text=True)
        assert isolated.returncode != 0 and "No module named 'stx'" in isolated.stderr
    finally:
        stop(proc)
        shutil.rmtree(tmp_path / "envs", ignore_errors=True)  # 1.5 GB, mostly torch
    served = pd.DataFrame(answer["predictions"]).to_numpy(float)
    assert served.shape == (6, 64)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    local = mlflow.pyfunc.load_model("models:/stx-lora/1").predict(frame).to_numpy(float)
    np.testing.assert_allclose(served, local, atol=1e-5)


def test_baseline_evaluates_without_training(workdir, monkeypatch):
    result = _run(workdir, monkeypatch, "--variant", "baseline")
    assert result.exit_code == 0, result.output
    client = _store(workdir)
    run = client.search_runs([client.get_experiment_by_name(workdir.name).experiment_id],
                             "tags.`stx.variant` = 'baseline'")[0]
    assert run.info.status == "FINISHED"
    assert "train/loss" not in run.data.metrics and "eval/energy_ratio" in run.data.metrics
    assert "val/energy_loss" in run.data.metrics  # comparable with every trained variant's
    assert run.data.params["n_trainable_params"] == "0"
    assert set(ARTIFACTS) <= set(_artifacts(client, run.info.run_id))


def test_failure_mid_training_ends_the_run_failed(workdir, monkeypatch):
    from stx.train.module import STSystem

    def boom(self, batch, batch_idx):
        if self.global_step >= 3:
            raise RuntimeError("loss became NaN at step 3")
        return STSystem.shared_step(self, batch)[0]

    monkeypatch.setattr(STSystem, "training_step", boom)
    result = _run(workdir, monkeypatch, "--variant", "lora", "--experiment", "failing")
    assert result.exit_code == 1
    assert "internal error: RuntimeError: loss became NaN at step 3" in result.output
    client = _store(workdir)
    runs = client.search_runs([client.get_experiment_by_name("failing").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert "loss became NaN" in runs[0].data.tags["stx.error"]


def test_a_refused_registration_keeps_the_run_finished_and_says_why(workdir, monkeypatch):
    # what a team server answers a member without EDIT on the shared model: a 403
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import PERMISSION_DENIED

    import stx.tracking.pyfunc

    def refused(*args, **kwargs):
        raise MlflowException("API request to endpoint /api/2.0/mlflow/model-versions/create failed with error "
                              "code 403 != 200. Response body: 'Permission denied'", error_code=PERMISSION_DENIED)

    monkeypatch.setattr(stx.tracking.pyfunc, "log_and_register", refused)
    result = _run(workdir, monkeypatch, "--variant", "lora", "--experiment", "refused")
    assert result.exit_code == 0, result.output
    assert "refused to register a version of stx-lora (permission denied)" in " ".join(result.output.split())
    client = _store(workdir)
    run = client.search_runs([client.get_experiment_by_name("refused").experiment_id])[0]
    assert run.info.status == "FINISHED" and "stx.registered_model" not in run.data.tags
    assert "grant you EDIT" in run.data.tags["stx.registration_error"]


def test_user_errors_leave_no_run(workdir, monkeypatch):
    result = _run(workdir, monkeypatch, "--variant", "lora-mch")
    assert result.exit_code == 2 and "unknown variant 'lora-mch'" in result.output
    result = _run(workdir, monkeypatch, "--variant", "lora", "--set", "data.embed_key=truth_velocity",
                  "--set", "model.lora.target_modules=[\"qkv\"]", "--experiment", "bad")
    assert result.exit_code == 2 and "model.lora.target_modules: qkv not in the backbone" in result.output
    assert _store(workdir).get_experiment_by_name("bad") is None


def test_a_short_run_still_validates_at_its_last_step_and_warns_about_schedules(workdir, monkeypatch):
    result = _run(workdir, monkeypatch, "--variant", "velocity", "--set", "trainer.max_steps=7",
                  "--set", "trainer.val_every_n_steps=5", "--set", "tracking.register_model=false",
                  "--set", "model.velocity.grad_ratio_every=3", "--experiment", "short")
    assert result.exit_code == 0, result.output
    assert "model.velocity.warmup_steps (1000) >= trainer.max_steps (7)" in result.output
    assert "trainer.lr_warmup_steps (100) >= trainer.max_steps (7)" in result.output
    client = _store(workdir)
    run = client.search_runs([client.get_experiment_by_name("short").experiment_id])[0]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")] == [5, 7]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/energy_loss")] == [5, 7]
    ratio = client.get_metric_history(run.info.run_id, "train/velocity_grad_ratio")
    assert [m.step for m in ratio] == [0, 3, 6] and ratio[0].value == 0.0 and ratio[-1].value > 0


def test_time_with_one_value_is_dropped_with_a_warning(workdir, monkeypatch, demo_adata, tmp_path):
    one_day = tmp_path / "day10.h5ad"
    demo_adata[(demo_adata.obs["day"] == 10).to_numpy()].copy().write_h5ad(one_day)
    result = _run(workdir, monkeypatch, "--variant", "lora", "--set", f'datasets.demo="{one_day}"',
                  "--set", "trainer.max_steps=3", "--set", "tracking.register_model=false", "--experiment", "oneday")
    assert result.exit_code == 0, result.output
    assert "data.time_col 'day' has one value (10): the time input is dropped" in " ".join(result.output.split())


def test_ddp_two_cpu_processes_log_once(workdir, demo_path):
    cmd = [sys.executable, "-m", "stx", "run", "--variant", "lora", "--devices", "2", "--config",
           str(workdir / "config.toml"), *FAST, "--set", "tracking.register_model=false", "--experiment", "ddp"]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "MLFLOW_TRACKING_URI": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    client = _store(workdir)
    runs = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")] == list(range(12))


def _wait_for(predicate, timeout=120.0, every=0.5):
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(every)
    return False


def test_sigterm_ends_the_run_killed(workdir):
    import os
    import signal

    cmd = [sys.executable, "-m", "stx", "run", "--variant", "lora", "--config", str(workdir / "config.toml"), *FAST,
           "--set", "trainer.max_steps=100000", "--experiment", "killed"]
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "MLFLOW_TRACKING_URI": ""})
    client = _store(workdir)

    def training():
        exp = client.get_experiment_by_name("killed")
        if exp is None:
            return False
        runs = client.search_runs([exp.experiment_id])
        return bool(runs) and "train/loss" in runs[0].data.metrics

    try:
        assert _wait_for(training), "the run never started training"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, out[-2000:]
    run = client.search_runs([client.get_experiment_by_name("killed").experiment_id])[0]
    assert run.info.status == "KILLED"


def test_ui_serves_the_same_store(workdir):
    import os
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "stx", "ui", "--port", str(port)], cwd=workdir,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "MLFLOW_TRACKING_URI": ""})
    (workdir / "mlruns").mkdir(exist_ok=True)
    _store(workdir).create_experiment("seen-by-ui")
    url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=seen-by-ui"

    def answers():
        try:
            return urllib.request.urlopen(url, timeout=2).status == 200
        except OSError:
            return False

    try:
        assert _wait_for(answers, timeout=90), "the UI did not answer"
        body = urllib.request.urlopen(url, timeout=5).read().decode()
        assert '"name": "seen-by-ui"' in body
    finally:
        os.killpg(proc.pid, 15)  # the server and its workers
        out = proc.communicate(timeout=30)[0]
    assert f"MLflow UI for sqlite:///{workdir}/mlruns/mlflow.db" in out
    assert f"open http://127.0.0.1:{port}/#/" in out and "?workflowType=machine_learning" in out


@pytest.mark.parametrize("projection", ["sinkhorn", "birkhoff"])
def test_lora_mhc_logs_mhc_metrics_and_registers_a_loadable_model(workdir, monkeypatch, projection):
    import mlflow
    import pandas as pd

    result = _run(workdir, monkeypatch, "--variant", "mhc", "--set", f"model.mhc.projection={projection}",
                  "--experiment", f"mhc-{projection}")
    assert result.exit_code == 0, result.output
    client = _store(workdir)
    run = client.search_runs([client.get_experiment_by_name(f"mhc-{projection}").experiment_id])[0]
    assert run.info.status == "FINISHED" and run.data.tags["stx.variant"] == "lora-mhc"
    assert run.data.params["model.mhc.projection"] == projection
    for key in ("mhc/ds_error", "mhc/gain", "mhc/entropy"):
        assert len(client.get_metric_history(run.info.run_id, key)) >= 2, key
    if projection == "birkhoff":
        assert run.data.metrics["mhc/ds_error"] < 1e-5
    version = run.data.tags["stx.registered_model"]
    mlflow.set_tracking_uri(f"sqlite:///{workdir}/mlruns/mlflow.db")
    mlflow.set_registry_uri(f"sqlite:///{workdir}/mlruns/mlflow.db")
    frame = pd.DataFrame(np.zeros((5, 64), np.float32), columns=[f"X_state_{i}" for i in range(64)])
    frame["condition"] = "Burn"
    frame["day"] = "19"
    assert mlflow.pyfunc.load_model(version).predict(frame).shape == (5, 64)


@pytest.mark.parametrize("variant", ["velocity", "lora-mhc-velocity"])
def test_velocity_variants_log_the_velocity_metrics(workdir, monkeypatch, variant):
    result = _run(workdir, monkeypatch, "--variant", variant, "--set", "model.velocity.warmup_steps=8",
                  "--experiment", f"vel-{variant}")
    assert result.exit_code == 0, result.output
    client = _store(workdir)
    run = client.search_runs([client.get_experiment_by_name(f"vel-{variant}").experiment_id])[0]
    assert run.info.status == "FINISHED"
    for key in ("train/velocity_loss", "train/velocity_cos", "train/velocity_weight", "train/velocity_coverage",
                "train/energy_loss", "train/loss"):
        assert len(client.get_metric_history(run.info.run_id, key)) == 12, key
    weights = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "train/velocity_weight"),
                                       key=lambda m: m.step)]
    assert weights[0] == 0.0 and weights[4] == pytest.approx(0.1 * 4 / 8) and weights[-1] == pytest.approx(0.1)
    assert run.data.metrics["train/velocity_coverage"] > 0.5
    if "mhc" in variant:
        assert "mhc/gain" in run.data.metrics


COMPARE_FILES = ["comparison.csv", "comparison.md", "differences.csv", "metrics_by_group.csv", "loss_curves.png",
                 "grad_norm_curves.png", "metric_bars.png", "energy_ratio_heatmap.png", "cells_pca.png",
                 "trajectories.png"]


def test_run_all_variants_then_compare(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    result = _run(workdir, monkeypatch, "--variant", "all", "--seeds", "2", "--experiment", "all-variants",
                  "--set", "tracking.register_model=false", "--set", "model.velocity.warmup_steps=4")
    assert result.exit_code == 0, result.output
    assert result.output.count("finished in") == 10
    assert "Compared 10 runs" in result.output
    out = workdir / "results" / "all-variants-all"
    for name in COMPARE_FILES:
        assert (out / name).is_file(), name
    table = pd_read(out / "comparison.csv")
    assert list(table["row"]) == ["baseline", "lora", "lora-mhc", "lora-velocity", "lora-mhc-velocity",
                                  "mean_shift", "perturbed_mean", "truth"]
    assert (table.loc[table.kind == "variant", "n_runs"] == 2).all()
    # every row, references included, has an interval of the same kind
    assert (table["energy_ratio_low"] < table["energy_ratio_high"]).all()
    diffs = pd_read(out / "differences.csv")
    assert {("lora-velocity", "lora"), ("lora", "mean_shift"), ("lora-mhc", "baseline")} <= \
        set(zip(diffs["row"], diffs["versus"], strict=True))
    # the console names a verdict only where the interval supports it
    for line in result.output.splitlines():
        if line.strip().startswith("lora:") and "better on" in line:
            claimed = line.split("better on ")[1].split(";")[0].split(" |")[0].split(", ")
            for metric in claimed:
                row = diffs[(diffs.row == "lora") & (diffs.metric == metric)]
                assert (row["verdict"] == "better").any(), (metric, line)
    client = _store(workdir)
    compare_runs = client.search_runs([client.get_experiment_by_name("all-variants").experiment_id],
                                      "tags.`stx.kind` = 'compare'")
    assert len(compare_runs) == 1 and compare_runs[0].info.status == "FINISHED"
    logged = set(_artifacts(client, compare_runs[0].info.run_id))
    assert {f"compare/{name}" for name in COMPARE_FILES} <= logged


def pd_read(path):
    import pandas as pd

    return pd.read_csv(path)


def test_compare_from_the_registry(lora_run, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(cli, ["compare", "--out", str(workdir / "reg"), "--projection", "pca"])
    assert result.exit_code == 0, result.output
    table = pd_read(workdir / "reg" / "comparison.csv")
    assert {"lora", "mean_shift", "truth", "perturbed_mean"} <= set(table["row"])
    text = (workdir / "reg" / "comparison.md").read_text()
    assert "## Versus the references and lora" in text and "| lora |" in text and "(1 seed)" in text


def test_a_second_data_set_never_shadows_the_first_in_the_registry(lora_run, workdir, monkeypatch, demo_adata,
                                                                    tmp_path):
    _, client, first = lora_run
    other = tmp_path / "second.h5ad"
    demo_adata[::2].copy().write_h5ad(other)
    result = _run(workdir, monkeypatch, "--variant", "lora", "--set", f'datasets.demo="{other}"',
                  "--experiment", "second-data")
    assert result.exit_code == 0, result.output
    newest = max(client.search_model_versions("name = 'stx-lora'"), key=lambda v: int(v.version))
    assert newest.tags["stx.experiment"] == "second-data" and newest.tags["stx.data_sha256"] != \
        first.data.tags["stx.data_sha256"]
    assert {"stx.experiment_id", "stx.steps", "stx.config_digest", "stx.variant"} <= set(newest.tags)
    assert newest.description and client.get_registered_model("stx-lora").description
    # scoped to the first experiment, compare still finds the first data set's version
    result = CliRunner().invoke(cli, ["compare", "--experiment", workdir.name, "--out", str(tmp_path / "first")])
    assert result.exit_code == 0, result.output
    table = pd_read(tmp_path / "first" / "comparison.csv").set_index("row")
    assert table.loc["lora", "source"] == "models:/stx-lora/1"


def test_compare_errors(lora_run, tmp_path, monkeypatch, workdir, demo_adata):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(cli, ["compare"])
    assert result.exit_code == 2 and "no registered stx-* model" in result.output
    result = CliRunner().invoke(cli, ["compare", "--experiment", "nope", "--tracking-uri",
                                      f"sqlite:///{workdir}/mlruns/mlflow.db"])
    assert result.exit_code == 2 and "experiment 'nope' not found" in result.output
    # a run on other data joins the registry: compare refuses to mix them
    other = tmp_path / "other.h5ad"
    demo_adata[::2].copy().write_h5ad(other)
    monkeypatch.chdir(workdir)
    result = _run(workdir, monkeypatch, "--variant", "baseline", "--set", f'datasets.demo="{other}"')
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["compare", "--out", str(tmp_path / "mixed"), "--projection", "pca"])
    assert result.exit_code == 2 and "different data sets" in result.output
    result = CliRunner().invoke(cli, ["compare", "--out", str(tmp_path / "mixed"), "--projection", "pca",
                                      "--allow-mixed"])
    assert result.exit_code == 0, result.output


def test_resume_after_kill_9_matches_an_uninterrupted_run(workdir):
    """kill -9 mid-training, `stx run --resume RUN_ID`: same steps, same values as a run never killed."""
    import os
    import signal

    steps = ["--set", "trainer.max_steps=40", "--set", "trainer.checkpoint_every_n_steps=10",
             "--set", "trainer.val_every_n_steps=10", "--set", "tracking.register_model=false", "--seed", "5",
             "--set", "model.lora.dropout=0.05"]  # random draws every step: the restored RNG state is checked
    base = [sys.executable, "-m", "stx", "run", "--variant", "lora", "--config", str(workdir / "config.toml"), *FAST]
    env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
    client = _store(workdir)

    whole = subprocess.run([*base, *steps, "--experiment", "uninterrupted"], cwd=workdir, env=env,
                           capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-2000:]
    proc = subprocess.Popen([*base, *steps, "--experiment", "killed9"], cwd=workdir, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def past_first_checkpoint():
        exp = client.get_experiment_by_name("killed9")
        runs = client.search_runs([exp.experiment_id]) if exp else []
        return bool(runs) and len(client.get_metric_history(runs[0].info.run_id, "train/loss")) >= 25

    try:
        assert _wait_for(past_first_checkpoint, every=0.1), "never got past the first checkpoint"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    killed = client.search_runs([client.get_experiment_by_name("killed9").experiment_id])[0]
    assert killed.info.status == "RUNNING"  # kill -9 leaves no chance to close it: --resume does
    resumed = subprocess.run([sys.executable, "-m", "stx", "run", "--resume", killed.info.run_id], cwd=workdir,
                             env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    run_a = client.search_runs([client.get_experiment_by_name("uninterrupted").experiment_id])[0]
    run_b = client.get_run(killed.info.run_id)
    assert run_b.info.status == "FINISHED"
    for key in ("train/loss", "val/loss", "lr"):
        a = sorted((m.step, m.value) for m in client.get_metric_history(run_a.info.run_id, key))
        b = sorted((m.step, m.value) for m in client.get_metric_history(run_b.info.run_id, key))
        assert [s for s, _ in b] == [s for s, _ in a], key  # no step missing or duplicated
        # same sets, same dropout: only float rounding differs after reloading (measured <= 2e-4)
        np.testing.assert_allclose([v for _, v in b], [v for _, v in a], rtol=1e-3, atol=1e-5, err_msg=key)
    assert run_b.data.metrics["eval/energy_ratio"] == pytest.approx(run_a.data.metrics["eval/energy_ratio"], rel=1e-3)


def test_resume_errors(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    result = CliRunner().invoke(cli, ["run", "--resume", "0" * 32])
    assert result.exit_code == 2 and "no such run" in result.output
    result = CliRunner().invoke(cli, ["run", "--resume", "last", "--variant", "lora"])
    assert result.exit_code == 2 and "pass no --variant" in result.output
    result = CliRunner().invoke(cli, ["run"])
    assert result.exit_code == 2 and "--variant is required" in result.output

