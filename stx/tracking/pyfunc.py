"""The registered model: an MLflow pyfunc around an stx inference package.

`mlflow.pyfunc.load_model("models:/stx-lora/1").predict(frame)` takes a DataFrame with one
row per control cell: the embedding in columns `0..D-1` (or a column `embedding` holding
arrays) and the target condition in a column `condition` (optional `batch`), and returns a
DataFrame of predicted embeddings in the same row order.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from stx import __version__
from stx.errors import StxError
from stx.model.package import InferencePackage, load_package

ARTIFACT_KEY = "stx_model"
# logged as "models from code" (no cloudpickle): this file only calls set_model(STPyfunc())
MODEL_CODE = str(Path(__file__).with_name("pyfunc_model.py"))


# predict() has no type hints on purpose (see there). MLflow advises adding them when the class
# is defined, through its own `simplefilter("once")` that outranks any filter: record the
# warning here instead of printing it.
with warnings.catch_warnings(record=True):
    class STPyfunc(mlflow.pyfunc.PythonModel):
        """Loads the package once; predicts per condition, set by set."""

        package: InferencePackage | None = None

        def load_context(self, context: Any) -> None:
            self.package = load_package(Path(context.artifacts[ARTIFACT_KEY]))

        # no type hints here: MLflow would turn them into a (wrong) input schema
        def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
            frame = pd.DataFrame(model_input) if isinstance(model_input, dict) else model_input
            if "condition" not in frame:
                raise StxError("model input needs a 'condition' column with the target condition of each row")
            inputs = [name for name, _ in self.package.model.spec.covariates]
            if "embedding" in frame:
                emb = np.stack(frame["embedding"].to_numpy()).astype(np.float32)
            else:
                other = [c for c in ("condition", "batch", *inputs) if c in frame]
                emb = frame.drop(columns=other).to_numpy(np.float32)
            out = np.zeros_like(emb)
            conditions = frame["condition"].astype(str).to_numpy()
            batches = frame["batch"].astype(str).to_numpy() if "batch" in frame else None
            for condition in np.unique(conditions):
                rows = conditions == condition
                covariates = {name: frame[name].to_numpy()[rows] for name in inputs if name in frame}
                out[rows] = self.package.predict(emb[rows], condition, None if batches is None else batches[rows],
                                                 covariates=covariates)
            return pd.DataFrame(out, index=frame.index)


def log_and_register(run: Any, package: Path, name: str) -> str | None:
    """Log `package` as run `run`'s pyfunc model and register it as `name`; the new version.

    MLflow logs models into the active fluent run, so the run is made active here; it is
    ended with its final status by whoever closes the run (`tracked_run`, `stx sync`).
    """
    if mlflow.active_run() is None or mlflow.active_run().info.run_id != run.run_id:
        mlflow.start_run(run_id=run.run_id)
    info = mlflow.pyfunc.log_model(name="model", python_model=MODEL_CODE, artifacts={ARTIFACT_KEY: str(package)},
                                   registered_model_name=name,
                                   pip_requirements=[f"stx=={__version__}"])
    version = str(info.registered_model_version) if info.registered_model_version is not None else None
    run.set_tags({"stx.registered_model": f"models:/{name}/{version}", "stx.model_uri": info.model_uri})
    return version
