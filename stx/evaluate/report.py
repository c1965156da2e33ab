"""Per-group evaluation tables, their summaries, and the predictions `.h5ad` a run logs."""

from __future__ import annotations

import logging
import weakref

import anndata as ad
import numpy as np
import pandas as pd

from stx.config import DataConfig
from stx.data.load import CellTable
from stx.evaluate import metrics
from stx.evaluate.design import Task, TestDesign
from stx.evaluate.inference import embedding_anndata
from stx.evaluate.metrics import (
    ALL_METRICS,
    TARGETS,
    Observed,
    cell_metrics,
    group_metrics,
    meets_target,
    observe,
    temporal_coherence,
)
from stx.evaluate.predict import Predictions

log = logging.getLogger(__name__)

# Per table: each group's `Observed`, shared by every predictor scored on that table (a run
# calls `evaluate` once for the model and once for each reference predictor).
_OBSERVED: weakref.WeakKeyDictionary[CellTable, dict[tuple, Observed]] = weakref.WeakKeyDictionary()

GROUP_COLUMNS = ["perturbation", "cell_type", "day", "n_fed", "n_reference", "n_real", "small", "heldout"]


def _observed(table: CellTable, task: Task, ref: np.ndarray, real: np.ndarray, seed: int) -> Observed:
    """`observe(ref, real, seed)` for a task, computed once per table and reused (keyed by the
    task's rows: a table's arrays are not changed after loading)."""
    memo = _OBSERVED.setdefault(table, {})
    key = (task.reference.tobytes(), task.real.tobytes(), seed, metrics.ENERGY_MAX_CELLS)
    if key not in memo:
        memo[key] = observe(ref, real, seed)
    return memo[key]


def evaluate(table: CellTable, design: TestDesign, preds: Predictions, min_cells: int = 1,
             seed: int = 0) -> pd.DataFrame:
    """One row per (perturbation, cell type, day) of the test design with every metric.

    `small` flags groups with fewer than `min_cells` fed or reference controls or real
    perturbed cells; `heldout` flags groups never trained on (data.heldout_groups).
    """
    spec = table.spec
    n_days = len(spec.days)
    targets = preds.target_group(table)
    lookup = {(int(s), int(p), int(g)): i for i, (s, p, g) in enumerate(zip(preds.source, preds.pert, targets,
                                                                             strict=True))}
    rows, deltas = [], {}
    for task in design.tasks:
        index = [lookup.get((int(s), task.pert, task.group)) for s in task.fed]
        if not len(task.fed) or not len(task.real) or not len(task.reference) or any(i is None for i in index):
            continue
        fed, ref, real = table.emb[task.fed], table.emb[task.reference], table.emb[task.real]
        pred = preds.emb[np.asarray(index)]
        cell_type, day = table.group_name(task.group)
        row = {"perturbation": spec.perts[task.pert], "cell_type": cell_type, "day": day,
               "n_fed": len(fed), "n_reference": len(ref), "n_real": len(real),
               "small": bool(min(len(fed), len(ref), len(real)) < min_cells), "heldout": task.heldout}
        observed = _observed(table, task, ref, real, seed)
        row.update(group_metrics(fed, ref, real, pred, seed=seed, observed=observed), temporal_coherence=np.nan)
        if table.truth_response is not None and table.control_day is None:  # a same-time counterfactual
            row.update(cell_metrics(fed, pred, table.truth_response[task.fed], seed=seed))
        row["_key"] = (task.pert, task.group // n_days, task.group % n_days)
        deltas[row["_key"]] = (pred.mean(0) - fed.mean(0), observed.d_real)  # (d_pred, d_real)
        rows.append(row)
    if spec.has_time:
        fill_temporal_coherence(rows, deltas)
    if not rows:
        return pd.DataFrame(columns=[*GROUP_COLUMNS, *ALL_METRICS])
    return pd.DataFrame(rows).drop(columns="_key")


def fill_temporal_coherence(rows: list[dict], deltas: dict[tuple, tuple[np.ndarray, np.ndarray]]) -> None:
    """Set each row's `temporal_coherence` from its shifts and those of the previous time point
    of the same perturbation and cell type (rows keyed by `_key` = (pert, cell type, day index);
    `deltas`: key -> (d_pred, d_real))."""
    for row in rows:
        p, c, d = row["_key"]
        earlier = [k for k in deltas if k[0] == p and k[1] == c and k[2] < d]
        if earlier:
            (dp1, dr1), (dp2, dr2) = deltas[max(earlier, key=lambda k: k[2])], deltas[(p, c, d)]
            row["temporal_coherence"] = temporal_coherence(dp1, dp2, dr1, dr2)


def summarize(frame: pd.DataFrame, prefix: str = "eval/") -> dict[str, float]:
    """Means over the headline groups (`<prefix><metric>`: neither small nor held out), the
    share of them meeting each target, and the held-out groups' means (`<prefix>heldout/`)."""
    out: dict[str, float] = {}
    usable = ~frame["small"].astype(bool) if "small" in frame else pd.Series(True, index=frame.index)
    heldout = frame["heldout"].astype(bool) if "heldout" in frame else pd.Series(False, index=frame.index)
    for name, rows in (("", usable & ~heldout), ("heldout/", usable & heldout)):
        for metric in ALL_METRICS:
            values = frame.loc[rows, metric].astype(float) if metric in frame else pd.Series(dtype=float)
            values = values[np.isfinite(values)]
            if len(values) == 0:
                continue
            out[f"{prefix}{name}{metric}"] = float(values.mean())
            if metric in TARGETS and not name:
                out[f"{prefix}frac_{metric}_target"] = float(np.mean([meets_target(metric, v) for v in values]))
    out[f"{prefix}n_groups"] = float((usable & ~heldout).sum())
    return out


def small_groups(frame: pd.DataFrame) -> list[str]:
    """"Fib, day 14 (fed 3, reference 2, real 40)" for every flagged group."""
    rows = frame[frame["small"].astype(bool)] if "small" in frame else frame.iloc[:0]
    return [f"{r.cell_type}, day {r.day} (fed {r.n_fed}, reference {r.n_reference}, real {r.n_real})"
            for r in rows.itertuples()]


def predictions_anndata(table: CellTable, preds: Predictions, dcfg: DataConfig,
                        provenance: dict[str, str] | None = None) -> ad.AnnData:
    """Predictions as AnnData: one row per predicted cell, provenance in obs and uns (DESIGN §5)."""
    spec = table.spec
    obs = pd.DataFrame({
        "source_cell": table.obs_names[preds.source].astype(str),
        dcfg.pert_col: pd.Categorical(np.asarray(spec.perts)[preds.pert]),
    })
    if dcfg.cell_type_key:
        obs[dcfg.cell_type_key] = pd.Categorical(np.asarray(spec.cell_types)[table.cell_type[preds.source]])
    if dcfg.time_col:  # the time predicted for (with data.control_time not the source cell's own)
        obs[dcfg.time_col] = pd.Categorical(np.asarray(spec.days)[preds.target_group(table) % len(spec.days)])
    if dcfg.batch_col:
        obs[dcfg.batch_col] = pd.Categorical(np.asarray(spec.batches)[table.batch[preds.source]])
    obs.index = [f"pred{i}" for i in range(preds.n)]
    adata = embedding_anndata(preds.emb, obs, spec.embed_key)
    adata.uns["stx"] = {"control": spec.control, "embed_key": spec.embed_key, **(provenance or {})}
    return adata

