"""The registered pyfunc: logged without re-reading the run's metric histories, carrying its own
copy of stx, and loading where no stx is installed (`mlflow models serve` from a clean env)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.entities import LoggedModelStatus, Metric, Param
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from stx.tracking import pyfunc
from stx.tracking.run import TrackedRun, connect
from stx.tracking.store import default_artifact_root

POISON = "the installed stx must not be used"


def poisoned_venv(root: Path) -> Path:
    """A venv that sees every package of this interpreter but `stx`: its own site-packages,
    which comes first, holds an `stx` that refuses to be imported. Its bin/ has `uvicorn`,
    which `mlflow models serve` runs from PATH. Returns the venv's python."""
    root = root.resolve()
    venv.create(root, system_site_packages=True, with_pip=False)
    python = root / "bin" / "python"
    site = root / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    (site / "stx").mkdir(parents=True)
    (site / "stx" / "__init__.py").write_text(f"raise ImportError({POISON!r})\n")
    (root / "bin" / "uvicorn").write_text(f"#!{python}\nimport sys\nfrom uvicorn.main import main\nsys.exit(main())\n")
    (root / "bin" / "uvicorn").chmod(0o755)
    check = subprocess.run([str(python), "-c", "import stx"], cwd=root, env=venv_env(root), capture_output=True,
                           text=True)
    assert check.returncode != 0 and POISON in check.stderr, check.stderr
    return python


def venv_env(root: Path, **extra: str) -> dict[str, str]:
    """The environment of a process in venv `root`: its bin/ first, nothing from PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return {**env, "PATH": f"{root / 'bin'}{os.pathsep}{env.get('PATH', '')}", "VIRTUAL_ENV": str(root), **extra}


def tiny_package(out: Path) -> Path:
    from stx.model.package import save_package
    from stx.model.st import ModelSpec, StateTransition

    spec = ModelSpec(input_dim=8, output_dim=8, hidden_dim=16, pert_names=("Sham", "Burn"), dropout=0.0,
                     covariates=(("day", ("10", "14")),),
                     backbone={"intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                               "num_key_value_heads": 2, "head_dim": 8, "vocab_size": 8})
    return save_package(StateTransition(spec), {"embed_key": "X_state", "pert_col": "condition", "control_pert": "Sham",
                                                "cell_set_len": 8, "time_col": "day"}, out)


def _experiment(client: MlflowClient, uri: str, name: str) -> str:
    """An experiment whose artifacts live beside the store (never in ./mlruns of the cwd)."""
    return client.create_experiment(name, artifact_location=default_artifact_root(uri))


def _new_run(client: MlflowClient, experiment_id: str, uri: str) -> TrackedRun:
    """A run as training leaves it: params, curves over 10 steps, summaries at step 0."""
    run = client.create_run(experiment_id)
    client.log_batch(run.info.run_id, params=[Param("model.lora.r", "16")],
                     metrics=[Metric(f"train/m{i}", float(s), 1000 + s, s) for i in range(20) for s in range(10)]
                     + [Metric(f"eval/m{i}", 0.5, 2000, 0) for i in range(5)])
    return TrackedRun(client, run.info.run_id, experiment_id, uri, "serve")


def count_history_reads(mp: pytest.MonkeyPatch) -> list[str]:
    """The metric keys whose history the store is asked for, from now on."""
    reads: list[str] = []
    original = SqlAlchemyStore.get_metric_history

    def counted(self, run_id, metric_key, *args, **kwargs):
        reads.append(metric_key)
        return original(self, run_id, metric_key, *args, **kwargs)

    mp.setattr(SqlAlchemyStore, "get_metric_history", counted)
    return reads


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A tiny model logged and registered for a run by `log_and_register`, as `stx run` does."""
    root = tmp_path_factory.mktemp("serve")
    uri = f"sqlite:///{root}/mlflow.db"
    client = connect(uri)
    handle = _new_run(client, _experiment(client, uri, "serve"), uri)
    with pytest.MonkeyPatch.context() as mp:
        reads = count_history_reads(mp)
        version = pyfunc.log_and_register(handle, tiny_package(root / "package"), "stx-tiny",
                                          {"stx.experiment": "serve", "stx.steps": 10}, "a tiny model")
    return uri, client, handle.run_id, version, reads, root


def test_registering_reads_no_metric_history(logged):
    *_, reads, _ = logged
    # MLflow's own way (log_model inside the active run) reads all 25 histories
    assert reads == []


def test_the_model_is_the_runs_output_and_registered_with_its_tags(logged):
    _, client, run_id, version, *_ = logged
    assert version == "1"
    run = client.get_run(run_id)
    model_uri = run.data.tags["stx.model_uri"]
    assert run.data.tags["stx.registered_model"] == "models:/stx-tiny/1"
    model = client.get_logged_model(model_uri.removeprefix("models:/"))
    # the run page lists the model; the model page links back to the run and its version
    assert [o.model_id for o in run.outputs.model_outputs] == [model.model_id]
    assert model.source_run_id == run_id and model.status == LoggedModelStatus.READY
    assert model.params == {"model.lora.r": "16"}
    assert {m.key for m in model.metrics} == {f"eval/m{i}" for i in range(5)}  # the run's summaries at step 0
    assert [(v["name"], str(v["version"])) for v in json.loads(model.tags["mlflow.modelVersions"])] == [("stx-tiny", "1")]
    assert len(client.get_metric_history(run_id, "eval/m0")) == 1  # nothing logged twice on the run
    mv = client.get_model_version("stx-tiny", "1")
    assert mv.run_id == run_id and mv.description == "a tiny model"
    assert mv.tags == {"stx.experiment": "serve", "stx.steps": "10"}
    assert client.get_registered_model("stx-tiny").description.startswith("stx tiny:")
    info = mlflow.models.get_model_info("models:/stx-tiny/1")
    assert info.signature is not None and info.saved_input_example_info is not None
    assert info.flavors["python_function"]["loader_module"] == "stx.tracking.pyfunc"
    assert info.run_id == run_id and info.model_id == model.model_id  # MLmodel names its run


def test_the_model_carries_its_code_and_requires_no_stx(logged):
    *_, root = logged
    local = Path(mlflow.artifacts.download_artifacts("models:/stx-tiny/1", dst_path=str(root / "download")))
    requirements = (local / "requirements.txt").read_text().split()
    assert not [r for r in requirements if r.lower().startswith("stx")]
    assert requirements == pyfunc.requirements() and requirements[0] == f"mlflow-skinny=={mlflow.__version__}"
    assert "torch==" in " ".join(requirements) and "+" not in " ".join(requirements)
    files = {p.relative_to(local / "code" / "stx").as_posix() for p in (local / "code").rglob("*") if p.is_file()}
    assert files == set(pyfunc.SERVED_MODULES)  # no checkpoints, bytecode, training code


def test_a_callers_own_fluent_run_is_left_alone(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = connect(uri)
    experiment = _experiment(client, uri, "callers")
    handle = _new_run(client, experiment, uri)
    history_reads = count_history_reads(monkeypatch)
    with mlflow.start_run(experiment_id=experiment) as callers:
        mlflow.log_metric("theirs", 1.0)
        version = pyfunc.log_and_register(handle, tiny_package(tmp_path / "package"), "stx-callers")
        assert mlflow.active_run().info.run_id == callers.info.run_id
    assert history_reads == []
    assert client.get_model_version("stx-callers", version).run_id == handle.run_id
    assert len(client.get_run(handle.run_id).outputs.model_outputs) == 1
    outputs = client.get_run(callers.info.run_id).outputs
    assert outputs is None or not outputs.model_outputs


LOAD = """
import builtins, importlib.metadata, json, sys
seen = set()
_import = builtins.__import__

def record(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and str((globals or {}).get("__name__", "")).startswith("stx"):
        seen.add(name.split(".")[0])
    return _import(name, globals, locals, fromlist, level)

builtins.__import__ = record
import mlflow

model = mlflow.pyfunc.load_model(sys.argv[1])
out = model.predict(model.input_example)
import stx.model.mhc  # loaded for models trained with mHC
import stx

dists = importlib.metadata.packages_distributions()
third = sorted({d for top in seen - {"stx"} - set(sys.stdlib_module_names) for d in dists.get(top, [top])})
print(json.dumps({"stx": stx.__file__, "shape": list(out.shape), "imports": third}))
"""


def test_the_model_loads_from_its_own_code_where_stx_is_not_installed(logged, tmp_path):
    uri, *_ = logged
    python = poisoned_venv(tmp_path / "venv")
    result = subprocess.run([str(python), "-c", LOAD, "models:/stx-tiny/1"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300,
                            env=venv_env(tmp_path / "venv", MLFLOW_TRACKING_URI=uri, MLFLOW_REGISTRY_URI=uri))
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert "/code/stx/__init__.py" in loaded["stx"] and loaded["shape"] == [4, 8]
    # the requirements are exactly what loading and predicting import
    assert loaded["imports"] == sorted(pyfunc.SERVING_DEPENDENCIES)
