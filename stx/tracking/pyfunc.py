"""The registered model: an MLflow pyfunc whose code is the installed stx package.

It is logged with `loader_module="stx.tracking.pyfunc"` and the inference package as its
data: MLflow calls `_load_pyfunc(data_path)` from the installed stx, which reads only
`model.json` and `weights.pt` (tensors only). No code file and no pickle travels through
the artifact store, so editing a model's artifacts cannot run code where it is loaded.

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

from stx import DISTRIBUTION, __version__
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


def requirements() -> list[str]:
    """What serving the model installs: exactly this project (its distribution name is ours
    alone on the public index; `stx` there is an unrelated project)."""
    return [f"{DISTRIBUTION}=={__version__}"]


def log_and_register(run: Any, package: Path, name: str, tags: dict[str, str] | None = None,
                     description: str | None = None) -> str | None:
    """Log `package` as run `run`'s pyfunc model, register it as `name` with version `tags`
    and a description; returns the new version.

    MLflow logs models into the active fluent run, so the run is made active here; it is
    ended with its final status by whoever closes the run (`tracked_run`, `stx sync`).
    """
    import mlflow

    if mlflow.active_run() is None or mlflow.active_run().info.run_id != run.run_id:
        mlflow.start_run(run_id=run.run_id)
    loaded = load_package(package)
    info = mlflow.pyfunc.log_model(name="model", loader_module="stx.tracking.pyfunc", data_path=str(package),
                                   registered_model_name=name, pip_requirements=requirements(),
                                   signature=signature(loaded), input_example=input_example(loaded))
    version = str(info.registered_model_version) if info.registered_model_version is not None else None
    if version is not None:
        from stx.tracking.registry import describe_version

        describe_version(run.client, name, version, tags or {}, description)
    run.set_tags({"stx.registered_model": f"models:/{name}/{version}", "stx.model_uri": info.model_uri})
    return version


__all__ = ["STPyfunc", "_load_pyfunc", "log_and_register"]
