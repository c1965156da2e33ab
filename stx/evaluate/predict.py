"""Predict perturbed cells from control cells, set by set, for every task of a test design."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from stx.data import keys
from stx.data.covariates import CovariatePlan
from stx.data.load import CellTable
from stx.evaluate.design import Task


@dataclass(frozen=True, eq=False)
class Predictions:
    """One row per predicted cell: its source control cell, target perturbation, embedding."""

    source: np.ndarray  # [M] rows of the control cells in the CellTable
    pert: np.ndarray  # [M] target perturbation codes
    emb: np.ndarray  # [M, D] predicted embeddings
    group: np.ndarray | None = None  # [M] target group (differs from the source's with data.control_time)

    def target_group(self, table: CellTable) -> np.ndarray:
        """[M] the group each prediction is for."""
        return table.group[self.source] if self.group is None else self.group

    @property
    def n(self) -> int:
        """Number of predicted cells."""
        return len(self.source)

    @classmethod
    def empty(cls, dim: int) -> Predictions:
        """No predictions."""
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, dim), np.float32), np.zeros(0, np.int64))

    @classmethod
    def from_tasks(cls, tasks: Sequence[Task], embs: Sequence[np.ndarray], dim: int,
                   rows: Sequence[np.ndarray] | None = None) -> Predictions:
        """One block per task: its fed cells (or `rows`, the same cells in another order)."""
        if not tasks:
            return cls.empty(dim)
        rows = rows or [t.fed for t in tasks]
        return cls(np.concatenate(rows), np.concatenate([np.full(len(r), t.pert) for t, r in zip(tasks, rows,
                                                                                                strict=True)]),
                   np.concatenate(embs).astype(np.float32),
                   np.concatenate([np.full(len(r), t.group) for t, r in zip(tasks, rows, strict=True)]))


@torch.no_grad()
def predict_sets(model: nn.Module, emb: np.ndarray, batch: np.ndarray, pert: int, cell_set_len: int,
                 device: torch.device | str = "cpu", sets_per_call: int = 64,
                 covariates: np.ndarray | None = None) -> np.ndarray:
    """Predict the perturbed state of each control cell in `emb` [n, D].

    Cells are cut into sets of `cell_set_len` in order. A group smaller than a set, and the
    last, partial set, are filled by cycling through the same cells again; the repeats are
    dropped from the output (each cell is predicted once, in a set of the trained size).
    `covariates` [n, K] are the cells' covariate codes.
    """
    n = len(emb)
    n_sets = -(-n // cell_set_len)
    order = np.arange(n_sets * cell_set_len) % n
    x = torch.from_numpy(np.ascontiguousarray(emb[order])).to(device).reshape(n_sets, cell_set_len, -1)
    b = torch.from_numpy(batch[order]).to(device).reshape(n_sets, cell_set_len)
    cov = np.zeros((n, 0), np.int64) if covariates is None else covariates
    c = torch.from_numpy(np.ascontiguousarray(cov[order])).to(device).reshape(n_sets, cell_set_len, -1)
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, n_sets, sets_per_call):
        chunk = {
            keys.CTRL_EMB: x[i:i + sets_per_call],
            keys.BATCH_INDEX: b[i:i + sets_per_call],
            keys.COVARIATES: c[i:i + sets_per_call],
            keys.PERT_INDEX: torch.full((len(x[i:i + sets_per_call]),), pert, dtype=torch.long, device=device),
        }
        out.append(model(chunk).float().cpu())
    model.train(was_training)
    return torch.cat(out).reshape(n_sets * cell_set_len, -1)[:n].numpy()


def predict_tasks(model: nn.Module, table: CellTable, tasks: Sequence[Task], cell_set_len: int,
                  plan: CovariatePlan | None = None, device: torch.device | str = "cpu") -> Predictions:
    """The model's prediction of each task's fed control cells (sets formed within the task's
    group, cells ordered by batch so a set mostly holds one batch)."""
    plan = plan or CovariatePlan()
    n_days = len(table.spec.days)
    ordered, embs = [], []
    for task in tasks:
        rows = task.fed[np.argsort(table.batch[task.fed], kind="stable")]
        day = np.full(len(rows), task.group % n_days)  # the target time, not the controls' own
        embs.append(predict_sets(model, table.emb[rows], table.batch[rows], task.pert, cell_set_len, device,
                                 covariates=plan.codes(table, rows, day)))
        ordered.append(rows)
    return Predictions.from_tasks(tasks, embs, table.spec.embed_dim, ordered)
