"""Sweeps end to end: Optuna trial states mirrored in MLflow, champion alias, PostgreSQL workers."""

from __future__ import annotations

import optuna
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from stx.cli import cli
from tests.services import postgres_available, postgresql

FAST = ["--set", "trainer.max_steps=8", "--set", "trainer.val_every_n_steps=4", "--set", "trainer.batch_size=4",
        "--set", "trainer.cell_set_len=16", "--set", "tracking.projection=pca", "--set", "trainer.log_every_n_steps=4"]


@pytest.fixture
def config(tmp_path, demo_path):
    path = tmp_path / "config.toml"
    path.write_text(f'[datasets]\ndemo = "{demo_path}"\n[data]\nembed_key = "X_state"\ntime_col = "day"\nmin_group_cells = 3\n'
                    '[sweep.params."model.lora.r"]\ntype = "categorical"\nchoices = [2, 4]\n')
    return path


def _sweep(tmp_path, monkeypatch, config, *args):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return CliRunner().invoke(cli, ["sweep", "--variant", "lora", "--config", str(config), *FAST, *args])


def _children(client, parent_id):
    exp = client.get_run(parent_id).info.experiment_id
    return client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent_id}'")


def test_small_study_nests_trials_and_sets_the_champion(tmp_path, monkeypatch, config):
    import stx.preflight

    loads = []
    real_load = stx.preflight.load_cells
    monkeypatch.setattr(stx.preflight, "load_cells", lambda *a, **k: loads.append(1) or real_load(*a, **k))
    result = _sweep(tmp_path, monkeypatch, config, "--n-trials", "3", "--study", "s1", "--pruner", "none")
    assert result.exit_code == 0, result.output
    assert "Study 's1'" in result.output and "Champion: models:/stx-lora@champion" in result.output
    storage = f"sqlite:///{tmp_path}/mlruns/optuna.db"
    study = optuna.load_study(study_name="s1", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert len(loads) == 1  # the data are loaded once for all three trials of the worker
    assert all(t.user_attrs["wall_time_s"] > 0 for t in study.trials)  # what bench_sweep.py reads
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    parent = client.search_runs([client.get_experiment_by_name(tmp_path.name).experiment_id],
                                "tags.`stx.kind` = 'sweep'")[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["stx.study"] == "s1"
    assert parent.data.metrics["best_value"] == pytest.approx(study.best_value)
    children = _children(client, parent.info.run_id)
    assert len(children) == 3 and {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.params["model.lora.r"] for c in children} <= {"2", "4"}
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/trials.csv", "sweep/optimization_history.png"} <= artifacts
    champion = client.get_model_version_by_alias("stx-lora", "champion")
    assert champion.run_id == study.best_trial.user_attrs["mlflow_run_id"]
    # another worker that ends with the same best trial reuses its version, registers none
    from stx.sweeps.study import SweepRequest, _register_best

    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert _register_best(SweepRequest("lora", 3, tracking_uri=uri), champion.run_id) == str(champion.version)
    assert len(client.search_model_versions("name = 'stx-lora'")) == 1
    # a second sweep with the same name joins the study (a worker on another machine does the same);
    # --new refuses to
    again = _sweep(tmp_path, monkeypatch, config, "--n-trials", "4", "--study", "s1", "--new")
    assert again.exit_code == 2 and "already exists" in again.output and "drop --new to join it" in again.output
    resumed = _sweep(tmp_path, monkeypatch, config, "--n-trials", "4", "--study", "s1", "--pruner", "none")
    assert resumed.exit_code == 0, resumed.output
    assert len(optuna.load_study(study_name="s1", storage=storage).trials) == 4
    versions = client.search_model_versions("name = 'stx-lora'")
    assert len({v.run_id for v in versions}) == len(versions)  # never two versions of one trial


def test_pruned_and_failed_trials_in_optuna_and_mlflow(tmp_path, monkeypatch, config):
    from stx.sweeps import study as study_module
    from stx.train.module import STSystem

    calls = {"n": 0}
    original = STSystem.training_step

    def flaky(self, batch, batch_idx):
        if calls["n"] == 0 and self.global_step == 2:
            calls["n"] += 1
            raise RuntimeError("injected failure")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(STSystem, "training_step", flaky)

    class AlwaysPrune(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return trial.number == 1

    monkeypatch.setattr(study_module, "make_pruner", lambda name: AlwaysPrune())
    result = _sweep(tmp_path, monkeypatch, config, "--n-trials", "3", "--study", "s2")
    assert result.exit_code == 0, result.output
    trials = optuna.load_study(study_name="s2", storage=f"sqlite:///{tmp_path}/mlruns/optuna.db").trials
    assert [t.state.name for t in trials] == ["FAIL", "PRUNED", "COMPLETE"]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    parent = client.search_runs([client.get_experiment_by_name(tmp_path.name).experiment_id],
                                "tags.`stx.kind` = 'sweep'")[0]
    by_trial = {c.data.tags["stx.trial"]: c for c in _children(client, parent.info.run_id)}
    assert by_trial["0"].info.status == "FAILED" and "injected failure" in by_trial["0"].data.tags["stx.error"]
    assert by_trial["1"].info.status == "KILLED" and by_trial["1"].data.tags["stx.trial_state"] == "PRUNED"
    assert by_trial["2"].info.status == "FINISHED"


@pytest.mark.skipif(not postgres_available(), reason="PostgreSQL binaries (initdb, pg_ctl) not installed")
def test_two_workers_share_a_postgresql_study(tmp_path, monkeypatch, config):
    with postgresql() as url:
        result = _sweep(tmp_path, monkeypatch, config, "--n-trials", "4", "--study", "pg", "--workers", "2",
                        "--storage", url, "--pruner", "none")
        assert result.exit_code == 0, result.output
        trials = optuna.load_study(study_name="pg", storage=url).trials
    assert len(trials) == 4 and {t.state.name for t in trials} == {"COMPLETE"}
    assert len({t.number for t in trials}) == 4
    run_ids = [t.user_attrs["mlflow_run_id"] for t in trials]
    assert len(set(run_ids)) == 4  # no trial lost or run twice
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    assert {client.get_run(r).info.status for r in run_ids} == {"FINISHED"}


@pytest.mark.skipif(not postgres_available(), reason="PostgreSQL binaries (initdb, pg_ctl) not installed")
def test_two_separate_sweep_commands_join_one_postgresql_study(tmp_path, config):
    """What the compose file's worker replicas do: two `stx sweep --study team` processes, started
    together, share the study (the second joins, neither refuses) and a PostgreSQL tracking store."""
    import os
    import subprocess
    import sys

    with postgresql() as optuna_url, postgresql() as mlflow_url:
        MlflowClient(mlflow_url).search_experiments()  # the schema exists before two processes race for it
        env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "MLFLOW_TRACKING_URI": mlflow_url}
        command = [sys.executable, "-m", "stx", "sweep", "--variant", "lora", "--config", str(config), *FAST,
                   "--n-trials", "6", "--study", "team", "--storage", optuna_url, "--pruner", "none"]
        workers = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True) for _ in range(2)]
        outputs = [w.communicate(timeout=900)[0] for w in workers]
        assert [w.returncode for w in workers] == [0, 0], "\n".join(o[-2000:] for o in outputs)
        trials = optuna.load_study(study_name="team", storage=optuna_url).trials
        client = MlflowClient(mlflow_url, registry_uri=mlflow_url)
        experiment = client.get_experiment_by_name(tmp_path.name) or client.search_experiments()[-1]
        parents = client.search_runs([experiment.experiment_id], "tags.`stx.kind` = 'sweep'")
        versions = client.search_model_versions("name = 'stx-lora'")
        statuses = {client.get_run(t.user_attrs["mlflow_run_id"]).info.status for t in trials}
        per_worker = [len(_children(client, p.info.run_id)) for p in parents]
    # --n-trials is the study's total: the two workers share six trials between them
    assert len(trials) == 6 and {t.state.name for t in trials} == {"COMPLETE"}
    assert len({t.user_attrs["mlflow_run_id"] for t in trials}) == 6 and statuses == {"FINISHED"}
    assert len(parents) == 2 and {p.data.tags["stx.study"] for p in parents} == {"team"}
    assert sum(per_worker) == 6 and min(per_worker) >= 1, per_worker
    assert 1 <= len(versions) <= 2 and len({v.run_id for v in versions}) == len(versions), "\n".join(outputs)


def test_a_trial_registered_twice_keeps_its_first_version(tmp_path):
    """Two workers that finish together may both register the best trial: the one holding the
    higher version deletes it."""
    from stx.sweeps.study import _one_version_per_run
    from stx.tracking import pyfunc
    from stx.tracking.run import connect
    from tests.tracking.test_serve import _experiment, _new_run, tiny_package

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = connect(uri)
    run = _new_run(client, _experiment(client, uri, "race"), uri)
    package = tiny_package(tmp_path / "package")
    first, second = (pyfunc.log_and_register(run, package, "stx-tiny") for _ in range(2))
    registry = MlflowClient(uri, registry_uri=uri)
    assert _one_version_per_run(registry, "stx-tiny", run.run_id, first) == first  # the first worker keeps its own
    assert _one_version_per_run(registry, "stx-tiny", run.run_id, second) == first
    assert [v.version for v in registry.search_model_versions("name = 'stx-tiny'")] == [int(first)]


def test_a_sweep_that_loses_the_race_to_create_optunas_tables_opens_them(monkeypatch, tmp_path):
    """Two sweeps started together on a fresh database: Optuna creates its tables without a
    lock and the loser gets a duplicate-key error (seen on PostgreSQL); it must open the
    winner's tables, while any other error stays a one-line StxError."""
    import optuna

    from stx.errors import StxError
    from stx.sweeps.study import make_storage

    class IntegrityError(Exception):
        pass

    real = optuna.storages.RDBStorage
    calls = []

    def racing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise IntegrityError('duplicate key value violates unique constraint "pg_type_typname_nsp_index"')
        return real(*args, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    monkeypatch.setattr("stx.sweeps.study.time.sleep", lambda s: None)
    storage = make_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(calls) == 2 and storage.get_all_studies() == []

    def broken(*args, **kwargs):
        raise IntegrityError("some other constraint")

    monkeypatch.setattr(optuna.storages, "RDBStorage", broken)
    with pytest.raises(StxError, match="not reachable"):
        make_storage(f"sqlite:///{tmp_path / 'other.db'}")
