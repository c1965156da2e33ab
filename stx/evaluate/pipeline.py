"""A run's held-out evaluation: the model's predictions and every reference predictor on one
test design, per-group tables, headline summaries, and the figures and files a run logs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from stx.config import Config
from stx.data.covariates import CovariatePlan
from stx.data.load import CellTable
from stx.data.split import Split
from stx.errors import StxError
from stx.evaluate.design import TestDesign
from stx.evaluate.plots import projection_for
from stx.evaluate.predict import Predictions, predict_tasks
from stx.evaluate.references import REFERENCES, available_references
from stx.evaluate.report import evaluate, small_groups, summarize

log = logging.getLogger(__name__)

MODEL = "model"


@dataclass(frozen=True)
class Evaluation:
    """The model's and every reference's per-group metrics and summaries."""

    predictions: Predictions
    by_group: pd.DataFrame  # every predictor's rows, column `predictor` (model, baseline, mean_shift, ...)
    metrics: dict[str, float]  # eval/<metric>: the model
    reference: dict[str, float]  # ref/<predictor>/<metric>

    def frame(self, predictor: str = MODEL) -> pd.DataFrame:
        """One predictor's per-group rows."""
        return self.by_group[self.by_group["predictor"] == predictor]


def device() -> str:
    """Where evaluation runs."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def evaluate_run(model: torch.nn.Module, table: CellTable, split: Split, design: TestDesign, plan: CovariatePlan,
                 cfg: Config, baseline: Predictions | None, cell_set_len: int) -> Evaluation:
    """Score the model (predicting in sets of `cell_set_len`) and every reference predictor
    (plus the pretrained `baseline`'s predictions, made before training; None when the
    model is the pretrained one) on the same design."""
    preds = predict_tasks(model.to(device()), table, design.tasks, cell_set_len, plan, device())
    if preds.n == 0:
        raise StxError("the test split has no group with both control and perturbed cells; "
                       "lower data.test_fraction or use data.split = 'cell'")
    predictors: dict[str, Predictions] = {MODEL: preds, "baseline": preds if baseline is None else baseline}
    for name in available_references(table):
        predictors[name] = REFERENCES[name](table, split, design.tasks)
    seed, min_cells = cfg.data.split_seed, cfg.data.min_group_cells
    frames = {name: evaluate(table, design, p, min_cells, seed) for name, p in predictors.items()}
    flagged = small_groups(frames[MODEL])
    if flagged:
        log.warning("%d test group(s) below data.min_group_cells = %d, left out of the headline means: %s",
                    len(flagged), min_cells, "; ".join(flagged))
    by_group = pd.concat([f.assign(predictor=name) for name, f in frames.items()], ignore_index=True)
    reference: dict[str, float] = {}
    for name, frame in frames.items():
        if name != MODEL:
            reference.update(summarize(frame, prefix=f"ref/{name}/"))
    return Evaluation(preds, by_group, summarize(frames[MODEL]), reference)


def cell_figure(table: CellTable, design: TestDesign, preds: Predictions, cfg: Config, out_dir: Path,
                subtitle: str | None = None) -> Path:
    """The held-out cells in 2-D (PCA or UMAP): conditions, cell types, time points."""
    from stx.evaluate.plots import plot_real_vs_predicted

    spec = table.spec
    real_rows = np.unique(np.concatenate([t.real for t in design.tasks])) if design.tasks else np.zeros(0, int)
    ctrl_rows = design.fed_rows()
    method = projection_for(cfg.tracking.projection, spec.embed_dim)
    labels = {
        "cell type": tuple(np.asarray(spec.cell_types)[table.cell_type[r]] for r in (ctrl_rows, real_rows,
                                                                                      preds.source)),
    }
    if spec.has_time:
        days = np.asarray(spec.days)
        labels[f"time ({cfg.data.time_col})"] = (days[table.day[ctrl_rows]], days[table.day[real_rows]],
                                                 days[preds.target_group(table) % len(spec.days)])
    perturbed = "/".join(p for p in spec.perts if p != spec.control)
    return plot_real_vs_predicted(table.emb[ctrl_rows], table.emb[real_rows], preds.emb, labels,
                                  (spec.control, perturbed), out_dir / f"cells_{method}.png", method=method,
                                  seed=cfg.trainer.seed, subtitle=subtitle)
