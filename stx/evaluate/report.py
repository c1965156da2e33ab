"""Per-group evaluation tables, their summaries, the mean-shift reference, and the
predictions `.h5ad` a run logs."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

from stx.config import DataConfig
from stx.data.load import CellTable
from stx.data.split import TEST, TRAIN, Split
from stx.evaluate.metrics import METRICS, TARGETS, group_metrics, meets_target, temporal_coherence
from stx.evaluate.predict import Predictions


def evaluate(table: CellTable, split: Split, preds: Predictions, seed: int = 0) -> pd.DataFrame:
    """One row per (perturbation, cell type, day) of the test split with every metric."""
    spec = table.spec
    test = split.mask(TEST)
    ctrl = spec.control_index
    rows = []
    shifts: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = {}
    for p in np.unique(preds.pert):
        for g in np.unique(table.group[preds.source[preds.pert == p]]):
            in_group = test & (table.group == g)
            control = table.emb[in_group & (table.pert == ctrl)]
            real = table.emb[in_group & (table.pert == p)]
            pred = preds.emb[(preds.pert == p) & (table.group[preds.source] == g)]
            if len(real) == 0 or len(control) == 0 or len(pred) == 0:
                continue
            cell_type, day = table.group_name(int(g))
            values = group_metrics(control, real, pred, seed=seed)
            mu_c = control.mean(0)
            shifts[(int(p), int(g) // len(spec.days), int(g) % len(spec.days))] = (
                pred.mean(0) - mu_c, real.mean(0) - mu_c)
            rows.append({"perturbation": spec.perts[p], "cell_type": cell_type, "day": day,
                         "n_control": len(control), "n_real": len(real), **values,
                         "temporal_coherence": np.nan, "_key": (int(p), int(g) // len(spec.days),
                                                                int(g) % len(spec.days))})
    # temporal coherence: consecutive days of the same perturbation and cell type
    if spec.has_time:
        for row in rows:
            p, c, d = row["_key"]
            previous = [k for k in shifts if k[0] == p and k[1] == c and k[2] < d]
            if previous:
                prev = max(previous, key=lambda k: k[2])
                (dp1, dr1), (dp2, dr2) = shifts[prev], shifts[(p, c, d)]
                row["temporal_coherence"] = temporal_coherence(dp1, dp2, dr1, dr2)
    frame = pd.DataFrame(rows).drop(columns="_key", errors="ignore")
    if frame.empty:
        return pd.DataFrame(columns=["perturbation", "cell_type", "day", "n_control", "n_real", *METRICS])
    return frame


def summarize(frame: pd.DataFrame, prefix: str = "eval/") -> dict[str, float]:
    """Means over groups (`eval/<metric>`) and the share of groups meeting each target."""
    out: dict[str, float] = {}
    for metric in METRICS:
        values = frame[metric].astype(float) if metric in frame else pd.Series(dtype=float)
        values = values[np.isfinite(values)]
        if len(values) == 0:
            continue
        out[f"{prefix}{metric}"] = float(values.mean())
        if metric in TARGETS:
            out[f"{prefix}frac_{metric}_target"] = float(np.mean([meets_target(metric, v) for v in values]))
    out[f"{prefix}n_groups"] = float(len(frame))
    return out


def mean_shift_predictions(table: CellTable, split: Split) -> Predictions:
    """The simple bar: each test control cell plus the training split's mean shift of its
    (perturbation, cell type, day)."""
    ctrl = table.spec.control_index
    train, test = split.mask(TRAIN), split.mask(TEST)
    sources, perts, embs = [], [], []
    for g in np.unique(table.group[test]):
        controls = np.flatnonzero(test & (table.group == g) & (table.pert == ctrl))
        train_ctrl = table.emb[train & (table.group == g) & (table.pert == ctrl)]
        for p in np.unique(table.pert[test & (table.group == g)]):
            train_real = table.emb[train & (table.group == g) & (table.pert == p)]
            if p == ctrl or len(controls) == 0:
                continue
            shift = (train_real.mean(0) - train_ctrl.mean(0)) if len(train_real) and len(train_ctrl) else 0.0
            sources.append(controls)
            perts.append(np.full(len(controls), p))
            embs.append(table.emb[controls] + shift)
    if not sources:
        return Predictions(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, table.spec.embed_dim)))
    return Predictions(np.concatenate(sources), np.concatenate(perts), np.concatenate(embs).astype(np.float32))


def predictions_anndata(table: CellTable, preds: Predictions, dcfg: DataConfig) -> ad.AnnData:
    """Predictions as AnnData: one row per predicted cell, provenance in obs (DESIGN §5)."""
    spec = table.spec
    obs = pd.DataFrame({
        "source_cell": table.obs_names[preds.source].astype(str),
        dcfg.cell_type_key: pd.Categorical(np.asarray(spec.cell_types)[table.cell_type[preds.source]]),
        dcfg.pert_col: pd.Categorical(np.asarray(spec.perts)[preds.pert]),
    })
    if dcfg.time_col:
        obs[dcfg.time_col] = pd.Categorical(np.asarray(spec.days)[table.day[preds.source]])
    if dcfg.batch_col:
        obs[dcfg.batch_col] = pd.Categorical(np.asarray(spec.batches)[table.batch[preds.source]])
    obs.index = [f"pred{i}" for i in range(preds.n)]
    if spec.embed_key == "X":
        adata = ad.AnnData(X=preds.emb, obs=obs)
    else:
        adata = ad.AnnData(obs=obs, obsm={spec.embed_key: preds.emb})
    adata.uns["stx"] = {"control": spec.control, "embed_key": spec.embed_key}
    return adata
