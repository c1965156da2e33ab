"""Reference predictors that bracket every result, on the same test design as the model.

* `mean_shift`: each fed control cell plus the training split's mean shift of its
  (perturbation, cell type, day): the simple bar every learned model must clear.
* `perturbed_mean`: the training split's mean perturbed profile of the group for every
  cell, ignoring the controls: a predictor that cannot react to its input.
* `truth`: each fed control cell plus its own true response (synthetic data only,
  `obsm["truth_response"]`): the noise ceiling.
* `control` (tests only): the fed controls unchanged: the floor.

For a held-out group (`data.heldout_groups`) the training split has no perturbed cells of
that group; `mean_shift` then uses the mean training shift of the same cell type over the
other time points (else of every group), `perturbed_mean` the mean training perturbed
profile of that cell type (else of every cell).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from stx.data.load import CellTable
from stx.data.split import TRAIN, Split
from stx.evaluate.design import Task
from stx.evaluate.predict import Predictions

Reference = Callable[[CellTable, Split, Sequence[Task]], Predictions]


def _train_means(table: CellTable, split: Split, task: Task) -> tuple[np.ndarray, np.ndarray]:
    """(training controls' mean, training perturbed cells' mean) for a task, falling back to
    the same cell type, then to every cell, where the group has none."""
    train = split.mask(TRAIN)
    ctrl = table.pert == table.spec.control_index
    real = table.pert == task.pert
    n_days = len(table.spec.days)
    same_type = table.cell_type == task.group // n_days
    own = (table.group == table.control_group(task.group), table.group == task.group)
    for where_c, where_r in (own, (same_type, same_type), (np.ones(table.n_cells, bool),) * 2):
        c, r = train & where_c & ctrl, train & where_r & real
        if c.any() and r.any():
            return table.emb[c].mean(0), table.emb[r].mean(0)
    return table.emb[train & ctrl].mean(0), table.emb[train & ctrl].mean(0)


def mean_shift(table: CellTable, split: Split, tasks: Sequence[Task]) -> Predictions:
    """Fed controls + the training mean shift of their group."""
    embs = []
    for task in tasks:
        c, r = _train_means(table, split, task)
        embs.append(table.emb[task.fed] + (r - c))
    return Predictions.from_tasks(tasks, embs, table.spec.embed_dim)


def perturbed_mean(table: CellTable, split: Split, tasks: Sequence[Task]) -> Predictions:
    """The training mean perturbed profile of the group, for every fed control cell."""
    embs = [np.broadcast_to(_train_means(table, split, t)[1], (len(t.fed), table.spec.embed_dim)).copy()
            for t in tasks]
    return Predictions.from_tasks(tasks, embs, table.spec.embed_dim)


def truth(table: CellTable, split: Split, tasks: Sequence[Task]) -> Predictions:
    """Fed controls + their own true responses (needs `table.truth_response`; the demo's
    truth is a same-time counterfactual, so not with data.control_time)."""
    if table.truth_response is None or table.control_day is not None:
        raise ValueError("the data carry no per-cell truth for this design")
    return Predictions.from_tasks(tasks, [table.emb[t.fed] + table.truth_response[t.fed] for t in tasks],
                                  table.spec.embed_dim)


def control(table: CellTable, split: Split, tasks: Sequence[Task]) -> Predictions:
    """The fed controls, unchanged."""
    return Predictions.from_tasks(tasks, [table.emb[t.fed].copy() for t in tasks], table.spec.embed_dim)


REFERENCES: dict[str, Reference] = {"mean_shift": mean_shift, "perturbed_mean": perturbed_mean, "truth": truth}


def available_references(table: CellTable) -> list[str]:
    """The references that apply to this data (`truth` only where it carries one)."""
    has_truth = table.truth_response is not None and table.control_day is None
    return [name for name in REFERENCES if name != "truth" or has_truth]
