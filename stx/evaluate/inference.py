"""`stx predict`: load a model by URI and predict the control cells of an `.h5ad`."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from stx.errors import StxError
from stx.model.package import InferencePackage, load_package

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def load_model_uri(uri: str, tracking_uri: str) -> InferencePackage:
    """A local model folder, `models:/NAME/VERSION|@ALIAS`, `runs:/ID/model`, or a bare run id."""
    local = Path(uri)
    if local.is_dir():
        return load_package(local / "artifacts" / "stx_model" if (local / "MLmodel").exists() else local)
    if RUN_ID.match(uri):
        uri = f"runs:/{uri}/model"
    if not uri.startswith(("models:/", "runs:/")):
        raise StxError(f"--model {uri}: expected models:/NAME/VERSION, runs:/RUN_ID/model, a run id or a folder")
    import mlflow

    from stx.tracking.run import connect

    connect(tracking_uri)
    try:
        loaded = mlflow.pyfunc.load_model(uri)
    except Exception as err:
        raise StxError(f"--model {uri}: cannot load it from {tracking_uri} ({err.__class__.__name__}: "
                       f"{str(err).splitlines()[0][:200]})") from None
    return loaded.unwrap_python_model().package


def predict_file(package: InferencePackage, data_path: Path, out: Path, condition: str | None = None) -> int:
    """Predict every control cell of `data_path` under each target condition; write `out`."""
    import anndata as ad
    import pandas as pd

    from stx.data.builtin import write_h5ad_atomic
    from stx.data.load import _labels, open_h5ad, read_matrix, read_obs

    meta = package.meta
    with open_h5ad(data_path) as handle:
        obs = read_obs(handle, data_path)
        emb = read_matrix(handle, data_path, meta["embed_key"])
    if not np.isfinite(emb).all():
        raise StxError(f"{data_path}: embeddings contain NaN or inf values")
    pert_col, control = meta["pert_col"], meta["control_pert"]
    is_control = (_labels(obs[pert_col]) == control) if pert_col in obs else np.ones(len(obs), bool)
    if not is_control.any():
        raise StxError(f"{data_path}: no control cells ('{control}' in obs['{pert_col}']) to predict from")
    targets = [condition] if condition else [p for p in package.perts if p != control]
    source = np.flatnonzero(is_control)
    group_cols = [c for c in (meta.get("cell_type_key"), meta.get("time_col")) if c and c in obs]
    batch_col = meta.get("batch_col")
    groups = obs.iloc[source][group_cols].astype(str).agg("|".join, axis=1).to_numpy() if group_cols \
        else np.zeros(len(source), dtype=object)
    rows, labels, preds = [], [], []
    inputs = [name for name, _ in package.model.spec.covariates]
    for target in targets:
        for group in pd.unique(groups):
            cells = source[groups == group]
            batches = obs.iloc[cells][batch_col].astype(str).to_numpy() if batch_col in obs else None
            covariates = {name: obs.iloc[cells][name].to_numpy() for name in inputs if name in obs}
            preds.append(package.predict(emb[cells], target, batches, covariates=covariates))
            rows.append(cells)
            labels += [target] * len(cells)
    rows_all = np.concatenate(rows)
    frame = obs.iloc[rows_all][[c for c in (meta.get("cell_type_key"), meta.get("time_col"), batch_col)
                                if c and c in obs]].copy()
    frame.insert(0, "source_cell", obs.index[rows_all].astype(str))
    frame[pert_col] = pd.Categorical(labels)
    frame.index = [f"pred{i}" for i in range(len(frame))]
    key = meta["embed_key"]
    result = np.concatenate(preds).astype(np.float32)
    adata = ad.AnnData(X=result, obs=frame) if key == "X" else ad.AnnData(obs=frame, obsm={key: result})
    adata.uns["stx"] = {"model_variant": str(meta.get("variant")), "control": control}
    write_h5ad_atomic(adata, out)
    return len(frame)
