"""Covariates as model inputs: the time point and extra categorical obs columns.

Each becomes a learned input added to every cell's token, like arc-state's batch
embedding, starting at zero so that a pretrained model computes exactly what it did.
Extra covariates are categories (one free embedding per value). The time point, by default
(`model.time_encoding = "axis"`), is a position on one learned direction
(`stx.model.st.TimeAxis`): time is one-dimensional, and a model that moves along one axis
as the days pass pools the evidence of neighbouring time points instead of fitting each
day's sampling noise on its own (docs/models.md has the measurements, on a world where the
time course is one movement and on one where it is not). `"category"` gives each time point
a free embedding. Either way a time point never seen in training cannot be predicted, and
stx refuses it.

The time input of a set is the time of its *target* cells (in the usual design the same as
its control cells'); extra covariates are read per control cell, like the batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from stx.config import Config
from stx.data.load import CellTable
from stx.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CovariatePlan:
    """Which covariates the model sees, in input order, and where their codes come from."""

    names: tuple[str, ...] = ()  # the obs column of each input
    vocabs: tuple[tuple[str, ...], ...] = ()
    time: bool = False  # the first input is the target time point (codes = DataSpec.days)
    extra: tuple[int, ...] = ()  # columns of CellTable.covariates for the other inputs

    @property
    def spec(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """(name, vocabulary) per input, as ModelSpec.covariates holds them."""
        return tuple(zip(self.names, self.vocabs, strict=True))

    def codes(self, table: CellTable, ctrl_rows: np.ndarray, day: np.ndarray) -> np.ndarray:
        """[..., K] input codes for control cells `ctrl_rows` [...] predicted at time codes `day` [...]."""
        parts = [day[..., None]] if self.time else []
        if self.extra:
            parts.append(table.covariates[ctrl_rows][..., list(self.extra)])
        if not parts:
            return np.zeros((*np.shape(ctrl_rows), 0), np.int64)
        return np.concatenate([np.broadcast_to(p, (*np.shape(ctrl_rows), p.shape[-1])) for p in parts], -1)


def plan_covariates(table: CellTable, cfg: Config) -> CovariatePlan:
    """The time point (when `model.time_input`) and `data.covariates`; one-valued ones are dropped."""
    spec = table.spec
    names, vocabs, extra = [], [], []
    time = bool(cfg.model.time_input and spec.has_time)
    if time and len(spec.days) < 2:
        log.warning("data.time_col '%s' has one value (%s): the time input is dropped", cfg.data.time_col,
                    spec.days[0])
        time = False
    if time:
        names.append(str(cfg.data.time_col))
        vocabs.append(spec.days)
    for k, (name, vocab) in enumerate(spec.covariates):
        if len(vocab) < 2:
            log.warning("covariate '%s' (data.covariates) has one value (%s): it is dropped", name, vocab[0])
            continue
        names.append(name)
        vocabs.append(vocab)
        extra.append(k)
    return CovariatePlan(tuple(names), tuple(vocabs), time, tuple(extra))


def check_covariates(table: CellTable, plan: CovariatePlan, trained: np.ndarray, used: np.ndarray) -> None:
    """Refuse covariate values of the `used` cells (val/test) that no `trained` cell has: their
    embeddings would never have been learned."""
    spec = table.spec
    columns = ([("time", spec.days, table.day)] if plan.time else []) + [
        (spec.covariates[k][0], spec.covariates[k][1], table.covariates[:, k]) for k in plan.extra]
    for name, vocab, codes in columns:
        unseen = sorted(set(np.unique(codes[used]).tolist()) - set(np.unique(codes[trained]).tolist()))
        if unseen:
            key = "data.time_col" if name == "time" else "data.covariates"
            shown = ", ".join(vocab[c] for c in unseen[:10])
            raise DataError(f"{table.files[0]}: {key} values {shown} of obs column "
                            f"'{plan.names[0] if name == 'time' else name}' occur only in held-out cells, never in "
                            f"training: the model cannot learn them (move those cells to training or drop the column)")


# A time course that is one movement plus sampling noise leaves a residual off its best line
# about the size of that noise (ratio ~1; 0.4-2.6 measured on the demo's line-shaped worlds);
# the time-switch world, whose days point in different directions, scores 3.6-30.
OFF_AXIS_RATIO = 4.0


def _mean_noise(x: np.ndarray) -> float:
    return float(x.var(0, ddof=1).sum() / len(x))


def off_axis_cell_types(table: CellTable, trained: np.ndarray) -> list[tuple[str, str, float]]:
    """(perturbation, cell type, ratio) where the training time course is not one movement:
    the part of the days' mean shifts off their best line, over the sampling noise of those
    means, above OFF_AXIS_RATIO. Needs 3 or more time points with training cells."""
    spec = table.spec
    n_days = len(spec.days)
    if n_days < 3:
        return []
    ctrl = table.pert == spec.control_index
    group = table.group  # a property: computed once here, not per (perturbation, cell type, day)
    found = []
    for p in np.unique(table.pert[trained & ~ctrl]).tolist():
        for ct in range(len(spec.cell_types)):
            shifts, noise = [], []
            for d in range(n_days):
                g = ct * n_days + d
                c = trained & ctrl & (group == table.control_group(g))
                r = trained & (table.pert == p) & (group == g)
                if c.sum() >= 2 and r.sum() >= 2:
                    shifts.append(table.emb[r].mean(0) - table.emb[c].mean(0))
                    noise.append(_mean_noise(table.emb[r]) + _mean_noise(table.emb[c]))
            if len(shifts) < 3:
                continue
            x = np.stack(shifts).astype(np.float64)
            sv = np.linalg.svd(x - x.mean(0), compute_uv=False)
            ratio = float(sv[1] ** 2 / max(np.mean(noise), 1e-12))
            if ratio > OFF_AXIS_RATIO:
                found.append((spec.perts[p], spec.cell_types[ct], ratio))
    return found


def warn_off_axis(table: CellTable, trained: np.ndarray, time_col: str) -> None:
    """One warning naming the cell types whose time course model.time_encoding = "axis" misfits."""
    found = off_axis_cell_types(table, trained)
    if found:
        shown = ", ".join(f"{ct} under {p} ({ratio:.1f}x)" for p, ct, ratio in found[:8])
        log.warning("data.time_col '%s': the response of %d cell type(s) does not move along one direction over time "
                    "(%s; the residual off one line, over its sampling noise): model.time_encoding = 'axis' assumes "
                    "it does and may misplace unseen time points; consider model.time_encoding = 'category'",
                    time_col, len(found), shown + (", ..." if len(found) > 8 else ""))
