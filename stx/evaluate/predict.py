"""Predict perturbed cells from control cells, set by set, for every group of a split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from stx.data import keys
from stx.data.load import CellTable


@dataclass(frozen=True, eq=False)
class Predictions:
    """One row per predicted cell: its source control cell, target perturbation, embedding."""

    source: np.ndarray  # [M] rows of the control cells in the CellTable
    pert: np.ndarray  # [M] target perturbation codes
    emb: np.ndarray  # [M, D] predicted embeddings

    @property
    def n(self) -> int:
        """Number of predicted cells."""
        return len(self.source)


@torch.no_grad()
def predict_sets(model: nn.Module, emb: np.ndarray, batch: np.ndarray, pert: int, cell_set_len: int,
                 device: torch.device | str = "cpu", sets_per_call: int = 64) -> np.ndarray:
    """Predict the perturbed state of each control cell in `emb` [n, D].

    Cells are cut into sets of `cell_set_len` in order; the last set is filled up by
    wrapping around to the first cells and the duplicates are dropped afterwards.
    """
    n = len(emb)
    n_sets = -(-n // cell_set_len)
    order = np.arange(n_sets * cell_set_len) % n
    x = torch.from_numpy(emb[order]).to(device).reshape(n_sets, cell_set_len, -1)
    b = torch.from_numpy(batch[order]).to(device).reshape(n_sets, cell_set_len)
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, n_sets, sets_per_call):
        chunk = {
            keys.CTRL_EMB: x[i:i + sets_per_call],
            keys.BATCH_INDEX: b[i:i + sets_per_call],
            keys.PERT_INDEX: torch.full((len(x[i:i + sets_per_call]),), pert, dtype=torch.long, device=device),
        }
        out.append(model(chunk).float().cpu())
    model.train(was_training)
    return torch.cat(out).reshape(n_sets * cell_set_len, -1)[:n].numpy()


def predict_split(model: nn.Module, table: CellTable, mask: np.ndarray, cell_set_len: int,
                  device: torch.device | str = "cpu") -> Predictions:
    """For each group in `mask`, predict every perturbation present there from its controls."""
    ctrl = table.spec.control_index
    group = table.group
    sources, perts, embs = [], [], []
    for g in np.unique(group[mask]):
        in_group = mask & (group == g)
        controls = np.flatnonzero(in_group & (table.pert == ctrl))
        if len(controls) == 0:
            continue
        for p in np.unique(table.pert[in_group]):
            if p == ctrl:
                continue
            embs.append(predict_sets(model, table.emb[controls], table.batch[controls], int(p),
                                     cell_set_len, device))
            sources.append(controls)
            perts.append(np.full(len(controls), p))
    if not sources:
        d = table.spec.embed_dim
        return Predictions(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, d), np.float32))
    return Predictions(np.concatenate(sources), np.concatenate(perts), np.concatenate(embs).astype(np.float32))
