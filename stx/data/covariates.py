"""Covariates as model inputs: the time point and extra categorical obs columns.

Each becomes a learned embedding added to every cell's token, like arc-state's batch
embedding, starting at zero so that a pretrained model computes exactly what it did. The
time point is a *category*, not a number: time courses have a few discrete points, the
response can change direction between them (the demo's Burn response turns between day 10
and day 19), and a scalar encoding would impose a smoothness the data do not promise. The
price: a time point never seen in training cannot be predicted, and stx refuses it.

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
