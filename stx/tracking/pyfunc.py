"""The registered model: an MLflow pyfunc that carries its own copy of the stx code.

It is logged with `loader_module="stx.tracking.pyfunc"`, the inference package as its data
(`model.json` and `weights.pt`, tensors only) and, in its `code/` folder (MLflow's
`code_paths`), a copy of the stx modules that loading and predicting import (`SERVED_MODULES`).
`mlflow.pyfunc.load_model` and `mlflow models serve` put `code/` first on `sys.path` and call
`_load_pyfunc(data_path)` from that copy, so the model serves where stx is not installed: its
requirements are the third-party packages loading and predicting import, pinned to the
versions it was logged with (stx-perturb is on no package index). A process that has already
imported stx keeps using it. `stx predict` never runs the model's code: it reads `model.json`
and `weights.pt` with the installed stx, so editing a model's artifacts cannot make it run
anything (the pyfunc route trusts the artifact store like any MLflow model with code).

`mlflow.pyfunc.load_model("models:/stx-lora/1").predict(frame)` takes a DataFrame with one
row per control cell: the embedding in columns `<embed_key>_0 .. <embed_key>_<D-1>` (or a
column `embedding` holding arrays), the target condition in `condition`, and the cell
type, time point, batch and covariate columns the model was trained with (their names are
in the signature). It returns the predicted embeddings in the same row order, formed into
sets exactly as `stx predict` forms them (`stx.evaluate.inference.predict_frame`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stx.errors import StxError
from stx.evaluate.inference import package_dir, predict_frame
from stx.model.package import InferencePackage, load_package


class STPyfunc:
    """What `_load_pyfunc` returns: a predict() over DataFrames."""

    def __init__(self, package: InferencePackage):
        self.package = package

    def embedding_columns(self) -> list[str]:
        """Names of the embedding's columns in the input frame."""
        return [f"{self.package.meta['embed_key']}_{i}" for i in range(self.package.model.spec.input_dim)]

    def predict(self, model_input: pd.DataFrame | dict, params: dict | None = None) -> pd.DataFrame:
        """Predicted embeddings, one row per input row, in input order."""
        frame = pd.DataFrame(model_input) if isinstance(model_input, dict) else model_input
        if "condition" not in frame:
            raise StxError("model input needs a 'condition' column with the target condition of each row")
        if "embedding" in frame:
            emb = np.stack(frame["embedding"].to_numpy()).astype(np.float32)
        else:
            columns = self.embedding_columns()
            missing = [c for c in columns if c not in frame]
            if missing:
                raise StxError(f"model input lacks embedding columns {missing[0]}..; expected {columns[0]} .. "
                               f"{columns[-1]} (or one 'embedding' column of arrays)")
            emb = frame[columns].to_numpy(np.float32)
        out = predict_frame(self.package, emb, frame, frame["condition"].astype(str).to_numpy())
        return pd.DataFrame(out, index=frame.index, columns=[f"pred_{c}" for c in self.embedding_columns()])


def _load_pyfunc(data_path: str) -> STPyfunc:
    """MLflow's loader-module entry point."""
    return STPyfunc(load_package(package_dir(Path(data_path))))


def input_example(package: InferencePackage, n: int = 4) -> pd.DataFrame:
    """A small valid input frame: zeros for the embedding, known values for every column."""
    meta = package.meta
    model = STPyfunc(package)
    frame = pd.DataFrame(np.zeros((n, package.model.spec.input_dim), np.float32), columns=model.embedding_columns())
    control = meta["control_pert"]
    frame["condition"] = next((p for p in package.perts if p != control), control)
    for name, vocab in package.model.spec.covariates:
        frame[name] = vocab[0]
    if meta.get("cell_type_key"):
        frame[meta["cell_type_key"]] = str((meta.get("cell_types") or ["all"])[0])
    return frame


def signature(package: InferencePackage):
    """Embedding columns and `condition` required; the covariates the model was trained with
    required (as text: a time point 14 is the label "14"); cell type and batch optional (they
    only decide how cells are grouped into sets)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    meta = package.meta
    model = STPyfunc(package)
    inputs = [ColSpec("float", c) for c in model.embedding_columns()] + [ColSpec("string", "condition")]
    inputs += [ColSpec("string", name) for name, _ in package.model.spec.covariates]
    inputs += [ColSpec("string", c, required=False) for c in (meta.get("cell_type_key"), meta.get("batch_col"))
               if c and c not in {name for name, _ in package.model.spec.covariates}]
    outputs = [ColSpec("float", f"pred_{c}") for c in model.embedding_columns()]
    return ModelSignature(Schema(inputs), Schema(outputs))


# The third-party distributions that loading and predicting import (stx.tracking.pyfunc,
# stx.evaluate.inference and .predict, stx.model.package, .st, .backbone, .checkpoint and .mhc,
# stx.data.load, stx.config); tests/tracking/test_serve.py checks the list against the
# imports of a real load and predict. Their own dependencies come with them.
SERVING_DEPENDENCIES = ("numpy", "pandas", "pydantic", "scipy", "torch")

# The modules of stx that loading and predicting import (the same test checks it): the
# model's copy of stx is these files only, each one an upload to the artifact store.
SERVED_MODULES = ("__init__.py", "errors.py", "config.py",
                  "data/__init__.py", "data/keys.py", "data/covariates.py", "data/load.py", "data/split.py",
                  "evaluate/__init__.py", "evaluate/design.py", "evaluate/inference.py", "evaluate/predict.py",
                  "model/__init__.py", "model/st.py", "model/backbone.py", "model/dropout.py", "model/package.py",
                  "model/checkpoint.py", "model/mhc.py",
                  "tracking/__init__.py", "tracking/pyfunc.py")


def requirements() -> list[str]:
    """What serving the model installs: MLflow's scoring server (`mlflow-skinny`: the `mlflow`
    command, pyfunc and its REST server, without the tracking server, UI and SQL store) and
    `SERVING_DEPENDENCIES`, pinned to the installed versions (without a local tag:
    `torch==2.13.0`, not `2.13.0+cpu`). Not stx itself: the model carries its code, and
    `stx-perturb` is on no package index (`stx` there is another project)."""
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in ("mlflow-skinny", *SERVING_DEPENDENCIES)]


def code_copy(dest: Path) -> Path:
    """Copy `SERVED_MODULES` of the installed stx package (editable or not) to `dest/stx`:
    no training, sweep or comparison code, no shipped checkpoints, no bytecode."""
    import shutil

    import stx

    source = Path(stx.__file__).resolve().parent
    for module in SERVED_MODULES:
        (dest / "stx" / module).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / module, dest / "stx" / module)
    return dest / "stx"


def _save_and_upload(client: Any, model: Any, run_id: str, package: Path, loaded: InferencePackage) -> None:
    """Write the pyfunc into a temporary folder and upload it as logged model `model`'s artifacts.

    `mlflow.pyfunc.log_model` would do the same, but it records the run in `MLmodel` only when
    it is also told to link the model to the run, and linking re-reads the history of every
    metric of the run (one request per metric). Saving it ourselves keeps `run_id` in `MLmodel`
    and reads nothing. The model is marked READY once its files are there, FAILED otherwise."""
    import tempfile

    import mlflow
    from mlflow.entities import LoggedModelStatus
    from mlflow.models import Model

    try:
        with tempfile.TemporaryDirectory(prefix="stx-model-") as tmp:
            code = code_copy(Path(tmp) / "code")
            local = Path(tmp) / "model"
            mlflow.pyfunc.save_model(
                str(local), loader_module="stx.tracking.pyfunc", data_path=str(package), code_paths=[str(code)],
                pip_requirements=requirements(), signature=signature(loaded), input_example=input_example(loaded),
                mlflow_model=Model(artifact_path=model.artifact_location, model_uuid=model.model_id, run_id=run_id,
                                   model_id=model.model_id))
            client.log_model_artifacts(model.model_id, str(local))
    except BaseException:
        client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)


def log_and_register(run: Any, package: Path, name: str, tags: dict[str, str] | None = None,
                     description: str | None = None) -> str | None:
    """Log `package` as run `run`'s pyfunc model, register it as `name` with version `tags`
    and a description; returns the new version.

    The logged model is created for the run (`source_run_id`, the run's params), filled by
    `_save_and_upload` (its `MLmodel` names the run), linked to the run as its output (what the
    run page lists), given the run's step-0 summaries as its metrics, and registered from
    `models:/<model_id>` (the version's run is the model's source run). MLflow's own
    `log_model` inside the run would instead read the history of every metric of the run to
    find the values at step 0: about 80 requests per run, ~50 s against an authenticated server.
    """
    import mlflow
    from mlflow.entities import LoggedModelOutput, Metric

    loaded = load_package(package)
    record = run.client.get_run(run.run_id)
    model = mlflow.initialize_logged_model(name="model", source_run_id=run.run_id, experiment_id=run.experiment_id,
                                           params=record.data.params)
    _save_and_upload(run.client, model, run.run_id, package, loaded)
    model_uri = f"models:/{model.model_id}"
    run.client.log_outputs(run.run_id, [LoggedModelOutput(model.model_id, step=0)])
    # the run's summaries (latest value at step 0: eval/*, ref/*) become the model's metrics too,
    # as MLflow would copy them, from the run already read rather than from every history
    summaries = [Metric(m.key, m.value, m.timestamp, 0, model_id=model.model_id, run_id=run.run_id)
                 for m in map(Metric.from_proto, record.data.to_proto().metrics) if m.step == 0]
    if summaries:
        run.client.log_batch(run.run_id, metrics=summaries)
    version = str(mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in (tags or {}).items()}
                                        ).version)
    from stx.tracking.registry import describe_version

    describe_version(run.client, name, version, {}, description)
    run.set_tags({"stx.registered_model": f"models:/{name}/{version}", "stx.model_uri": model_uri})
    return version


__all__ = ["STPyfunc", "_load_pyfunc", "log_and_register"]
