"""Predicting with a trained model outside a run: `stx predict` and the registered pyfunc.

Both go through `predict_frame`, so they form the same sets and give the same answers:
control cells are grouped by cell type and time point (the columns the model was trained
with), ordered by batch within a group (so a set mostly holds one batch, as in training),
cut into sets of the model's trained set size, and every row gets its prediction back in
input order. A group smaller than a set is cycled to fill it (each cell predicted once).

Models are loaded by stx's own loader: a registered model's files are downloaded and only
`model.json` (JSON) and `weights.pt` (tensors, `weights_only`) are read. No code or pickle
from the artifact store runs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from stx.errors import StxError
from stx.model.package import InferencePackage, load_package

if TYPE_CHECKING:
    import anndata as ad

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def package_dir(model_dir: Path) -> Path:
    """The stx package inside a logged MLflow model folder (or the folder itself)."""
    if (model_dir / "model.json").is_file():
        return model_dir
    found = sorted(model_dir.glob("*/model.json")) + sorted(model_dir.glob("*/*/model.json"))
    if not found:
        raise StxError(f"{model_dir}: not an stx model (no model.json)")
    return found[0].parent


def load_model_uri(uri: str, tracking_uri: str) -> InferencePackage:
    """A local model folder, `models:/NAME/VERSION|@ALIAS`, `runs:/ID/model`, or a bare run id."""
    local = Path(uri)
    if local.is_dir():
        return load_package(package_dir(local))
    if RUN_ID.match(uri):
        uri = f"runs:/{uri}/model"
    if not uri.startswith(("models:/", "runs:/")):
        raise StxError(f"--model {uri}: expected models:/NAME/VERSION, runs:/RUN_ID/model, a run id or a folder")
    import tempfile

    import mlflow

    from stx.tracking.run import connect

    connect(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            where = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        except Exception as err:
            raise StxError(f"--model {uri}: cannot load it from {tracking_uri} ({err.__class__.__name__}: "
                           f"{str(err).splitlines()[0][:200]})") from None
        package = load_package(package_dir(where))
        run_id = uri.split("/")[1] if uri.startswith("runs:/") else _mlmodel_run_id(where / "MLmodel")
    package.meta["model_uri"] = uri
    if run_id:
        package.meta["run_id"] = run_id
    return package


def _mlmodel_run_id(path: Path) -> str | None:
    """The training run an MLflow model names in its `MLmodel` (yaml, read safely), if any."""
    import yaml

    if not path.is_file():
        return None
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return None
    found = content.get("run_id") if isinstance(content, dict) else None
    return str(found) if found else None


def predict_frame(package: InferencePackage, emb: np.ndarray, obs: pd.DataFrame,
                  conditions: np.ndarray) -> np.ndarray:
    """Predictions [n, D] for cells `emb` [n, D] with annotations `obs` (n rows), row i under
    `conditions[i]`, in input order."""
    meta = package.meta
    n = len(emb)
    spec = package.model.spec
    if emb.ndim != 2 or emb.shape[1] != spec.input_dim:
        raise StxError(f"expected embeddings of shape [cells, {spec.input_dim}], got {emb.shape}")
    if not np.isfinite(emb).all():
        raise StxError("the embeddings contain NaN or inf values")
    group_cols = [c for c in (meta.get("cell_type_key"), meta.get("time_col")) if c and c in obs]
    groups = obs[group_cols].astype(str).agg("|".join, axis=1).to_numpy() if group_cols else np.zeros(n, object)
    batch_col = meta.get("batch_col")
    batches = obs[batch_col].astype(str).to_numpy() if batch_col and batch_col in obs else None
    inputs = [name for name, _ in spec.covariates]
    out = np.zeros((n, spec.output_dim), np.float32)
    keys = pd.DataFrame({"c": conditions, "g": groups}).groupby(["c", "g"], sort=False).indices
    for (condition, _), rows in keys.items():
        rows = rows[np.argsort(batches[rows], kind="stable")] if batches is not None else rows
        covariates = {name: obs[name].to_numpy()[rows] for name in inputs if name in obs}
        out[rows] = package.predict(emb[rows], str(condition), None if batches is None else batches[rows],
                                    covariates=covariates)
    return out


def embedding_anndata(emb: np.ndarray, obs: pd.DataFrame, key: str, var_names: Sequence[str] | None = None
                      ) -> ad.AnnData:
    """Predicted embeddings where the input had them (`X`, or `obsm[key]` with no X), with one
    var per embedding dimension: `var_names` (the input's, for `X`) or `<key>_0 .. <key>_<D-1>`,
    so `n_vars` is the embedding's width and its dimensions keep their names."""
    import anndata as ad

    var = pd.DataFrame(index=pd.Index([str(v) for v in var_names] if var_names is not None
                                      else [f"{key}_{i}" for i in range(emb.shape[1])]))
    if key == "X":
        return ad.AnnData(X=emb, obs=obs, var=var)
    return ad.AnnData(obs=obs, var=var, obsm={key: emb})


@dataclass(frozen=True)
class PredictResult:
    """What `stx predict` wrote (what it prints from)."""

    path: Path
    n_cells: int  # predicted cells: control cells x target conditions (x target times)
    embed_key: str  # where the embeddings are: "X" or obsm[embed_key]
    conditions: tuple[str, ...]
    model_uri: str
    run_id: str  # the training run ("" for a local model folder)
    variant: str


def predict_file(package: InferencePackage, data_path: Path, out: Path, condition: str | None = None,
                 time: str | None = None) -> PredictResult:
    """Predict every control cell of `data_path` under each target condition; write `out`.

    Rows come out in the input's order of control cells, one block per target condition
    (and target time); `obs["source_cell"]` names each row's input cell and `uns["stx"]` the
    model. Each cell is predicted at its own time point, at `time` if given, or, for a model
    trained with data.control_time, at every later time point it was trained on.
    """
    from stx import __version__
    from stx.data.builtin import write_h5ad_atomic
    from stx.data.load import _labels, open_h5ad, read_matrix, read_obs, read_var_names

    if out.resolve() == data_path.resolve():
        raise StxError(f"--out {out} is the input file: predictions would replace the data; choose another path")
    meta = package.meta
    with open_h5ad(data_path) as handle:
        obs = read_obs(handle, data_path)
        emb = read_matrix(handle, data_path, meta["embed_key"])
        var_names = read_var_names(handle, data_path) if meta["embed_key"] == "X" else None
    pert_col, control = meta["pert_col"], meta["control_pert"]
    is_control = (_labels(obs[pert_col]) == control) if pert_col in obs else np.ones(len(obs), bool)
    if not is_control.any():
        raise StxError(f"{data_path}: no control cells ('{control}' in obs['{pert_col}']) to predict from")
    targets = [condition] if condition else [p for p in package.perts if p != control]
    for target in targets:
        if target not in package.perts:
            raise StxError(f"condition '{target}' unknown to this model; it knows: {', '.join(package.perts)}")
    source = np.flatnonzero(is_control)
    time_col = meta.get("time_col")
    times = [time] if time else [d for d in meta.get("days", []) if d != meta.get("control_time")] \
        if meta.get("control_time") else [None]
    if time and time_col and meta.get("days") and time not in meta["days"]:
        raise StxError(f"--time {time}: the model was trained on time points {', '.join(meta['days'])}")
    blocks = [(t, c) for c in targets for t in times]
    rows = np.tile(source, len(blocks))
    labels = np.repeat([c for _, c in blocks], len(source))
    cells = obs.iloc[rows].copy()
    if time_col and times != [None]:
        cells[time_col] = np.repeat([t for t, _ in blocks], len(source)).astype(str)
    preds = predict_frame(package, emb[rows], cells, labels)
    keep = [c for c in (meta.get("cell_type_key"), time_col, meta.get("batch_col")) if c and c in cells]
    frame = cells[keep].copy()
    frame.insert(0, "source_cell", obs.index[rows].astype(str))
    frame[pert_col] = pd.Categorical(labels)
    frame.index = [f"pred{i}" for i in range(len(frame))]
    key = meta["embed_key"]
    adata = embedding_anndata(preds, frame, key, var_names)
    adata.uns["stx"] = {"model_variant": str(meta.get("variant")), "control": control,
                        "model_uri": str(meta.get("model_uri", "")), "run_id": str(meta.get("run_id", "")),
                        "stx_version": __version__,
                        "trained_with": str(meta.get("stx_version", "")),
                        "config_digest": str(meta.get("config_digest", "")),
                        "cell_set_len": int(meta["cell_set_len"])}
    write_h5ad_atomic(adata, out)
    return PredictResult(out, len(frame), key, tuple(targets), adata.uns["stx"]["model_uri"],
                         adata.uns["stx"]["run_id"], adata.uns["stx"]["model_variant"])
