"""Deterministic train/val/test split, made before training and reused by evaluation.

By batch (mouse) when every stratum has at least 3 batches, so that held-out mice are
truly unseen; otherwise by cell, stratified by (condition, cell type, day). A stratum is
(condition, day) when batches are nested in days, else the condition alone.

`data.heldout_groups` then moves every perturbed cell of those groups to the test split:
the model never sees the perturbation there, only the groups' controls.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from stx.config import Config
from stx.data.load import CellTable
from stx.errors import DataError

TRAIN, VAL, TEST = 0, 1, 2
SPLIT_NAMES = ("train", "val", "test")
MIN_BATCHES = 3


@dataclass(frozen=True, eq=False)
class Split:
    """[N] split code per cell (TRAIN, VAL, TEST) and how it was made."""

    codes: np.ndarray
    mode: str
    detail: str
    heldout: frozenset[int] = frozenset()  # groups whose perturbed cells are all in the test split

    def mask(self, which: int) -> np.ndarray:
        """Boolean [N] mask of one split."""
        return self.codes == which

    def frame(self, table: CellTable) -> pd.DataFrame:
        """One row per cell: id, data set, split (what `data/split.csv` records)."""
        return pd.DataFrame({
            "obs_name": table.obs_names,
            "dataset": np.asarray(table.spec.datasets)[table.dataset],
            "split": np.asarray(SPLIT_NAMES)[self.codes],
        })


def _counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    n_test = max(1, round(n * test_fraction))
    n_val = max(1, round(n * val_fraction))
    while n_test + n_val >= n and n_val > 1:
        n_val -= 1
    while n_test + n_val >= n and n_test > 1:
        n_test -= 1
    return n_val, n_test


def _majority(codes: np.ndarray, unit: np.ndarray, n_units: int) -> np.ndarray:
    table = np.zeros((n_units, int(codes.max()) + 1), np.int64)
    np.add.at(table, (unit, codes), 1)
    return table.argmax(1)


def _batch_strata(table: CellTable, units: np.ndarray, n_units: int) -> np.ndarray | None:
    """Stratum of each batch, or None where some stratum has fewer than 3 batches."""
    pert = _majority(table.pert, units, n_units)
    day = _majority(table.day, units, n_units)
    for strata in (pert * len(table.spec.days) + day, pert):
        if np.bincount(strata)[np.unique(strata)].min() >= MIN_BATCHES:
            return strata
    return None


def heldout_group_codes(table: CellTable, names: tuple[str, ...]) -> frozenset[int]:
    """Group codes of `data.heldout_groups` entries "CELLTYPE:TIME" or "CELLTYPE" (every time)."""
    spec = table.spec
    codes: set[int] = set()
    for name in names:
        cell_type, sep, day = name.partition(":")
        if cell_type not in spec.cell_types:
            raise DataError(f"data.heldout_groups: cell type '{cell_type}' (in '{name}') not in the data; cell types: "
                            f"{', '.join(spec.cell_types)}")
        if sep and day not in spec.days:
            raise DataError(f"data.heldout_groups: time '{day}' (in '{name}') not in the data; time points: "
                            f"{', '.join(spec.days)}")
        c = spec.cell_types.index(cell_type)
        days = [spec.days.index(day)] if sep else range(len(spec.days))
        codes.update(c * len(spec.days) + d for d in days)
    return frozenset(codes)


def make_split(table: CellTable, cfg: Config) -> Split:
    """Assign every cell to train, val or test (see the module docstring)."""
    split = _split(table, cfg)
    heldout = heldout_group_codes(table, cfg.data.heldout_groups)
    if not heldout:
        return split
    codes = split.codes.copy()
    codes[np.isin(table.group, list(heldout)) & (table.pert != table.spec.control_index)] = TEST
    names = ", ".join(cfg.data.heldout_groups)
    return Split(codes, split.mode, f"{split.detail}; perturbed cells of {names} held out (test only)", heldout)


def _split(table: CellTable, cfg: Config) -> Split:
    dcfg = cfg.data
    codes = np.full(table.n_cells, TRAIN, np.int8)
    held_out = np.isin(table.dataset, [i for i, d in enumerate(table.spec.datasets) if cfg.role(d) == "test"])
    codes[held_out] = TEST
    pool = np.flatnonzero(~held_out)
    rng = np.random.default_rng(dcfg.split_seed)

    mode = dcfg.split
    strata = None
    if mode in ("auto", "batch") and dcfg.batch_col:
        units, unit_of_cell = np.unique(table.batch[pool], return_inverse=True)
        strata = _batch_strata(
            CellTable(**{**table.__dict__, "pert": table.pert[pool], "day": table.day[pool]}),
            unit_of_cell, len(units),
        ) if len(pool) else None
    if mode == "batch" and strata is None:
        raise DataError(
            f"data.split = 'batch' needs at least {MIN_BATCHES} batches ({dcfg.batch_col}) per "
            f"condition; set data.split = 'auto' or 'cell'"
        )
    if strata is not None:
        unit_codes = np.full(len(units), TRAIN, np.int8)
        for s in np.unique(strata):
            members = rng.permutation(np.flatnonzero(strata == s))
            n_val, n_test = _counts(len(members), dcfg.val_fraction, dcfg.test_fraction)
            unit_codes[members[:n_test]] = TEST
            unit_codes[members[n_test:n_test + n_val]] = VAL
        codes[pool] = unit_codes[unit_of_cell]
        test_batches = [table.spec.batches[b] for b in units[unit_codes == TEST]]
        return Split(codes, "batch", f"by {dcfg.batch_col}; test: {', '.join(test_batches)}")

    stratum = (table.pert[pool] * len(table.spec.cell_types) + table.cell_type[pool]) * \
        len(table.spec.days) + table.day[pool]
    for s in np.unique(stratum):
        members = pool[rng.permutation(np.flatnonzero(stratum == s))]
        if len(members) < 3:
            continue  # too few to split: all train
        n_val, n_test = _counts(len(members), dcfg.val_fraction, dcfg.test_fraction)
        codes[members[:n_test]] = TEST
        codes[members[n_test:n_test + n_val]] = VAL
    why = "" if mode == "cell" else f" (fewer than {MIN_BATCHES} batches per condition)"
    return Split(codes, "cell", f"by cell, stratified by condition, cell type and day{why}")
