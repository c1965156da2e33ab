"""A short human summary of loaded data and its split (`stx data validate`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from stx.data.load import CellTable
from stx.data.split import SPLIT_NAMES, Split


def counts_table(table: CellTable, split: Split) -> pd.DataFrame:
    """Cells per (cell type[, day]) x (split, condition)."""
    spec = table.spec
    frame = pd.DataFrame({
        "cell type": np.asarray(spec.cell_types)[table.cell_type],
        "day": np.asarray(spec.days)[table.day],
        "split": pd.Categorical(np.asarray(SPLIT_NAMES)[split.codes], categories=SPLIT_NAMES),
        "condition": pd.Categorical(np.asarray(spec.perts)[table.pert], categories=spec.perts),
    })
    rows = ["cell type", "day"] if spec.has_time else ["cell type"]
    counts = frame.groupby([*rows, "split", "condition"], observed=False).size()
    wide = counts.unstack(["split", "condition"], fill_value=0)
    wide = wide.loc[:, (wide != 0).any(axis=0)]
    return wide.loc[(wide != 0).any(axis=1)]


def headline(table: CellTable, split: Split) -> list[str]:
    """A few lines: files, sizes, vocabularies and the split."""
    spec = table.spec
    per_split = np.bincount(split.codes, minlength=3)
    per_pert = np.bincount(table.pert, minlength=len(spec.perts))
    key = "X" if spec.embed_key == "X" else f"obsm['{spec.embed_key}']"
    lines = [
        f"{', '.join(str(f) for f in table.files)}",
        f"{table.n_cells} cells, {key} with {spec.embed_dim} dims",
        "conditions: " + ", ".join(f"{p} {n}" for p, n in zip(spec.perts, per_pert, strict=True))
        + f" (control {spec.control})",
        f"{len(spec.cell_types)} cell types, {len(spec.batches)} batches"
        + (f", days {', '.join(spec.days)}" if spec.has_time else ""),
        f"split {split.detail}",
        "cells: " + ", ".join(f"{n} {c}" for n, c in zip(SPLIT_NAMES, per_split, strict=True)),
    ]
    for cell_type, day, why in table.skipped_groups:
        where = f"{cell_type}, day {day}" if spec.has_time else cell_type
        lines.append(f"skipped group ({where}): {why}")
    return lines


def batch_confounding(table: CellTable, batch_col: str | None) -> str | None:
    """A warning when batches and conditions cannot be told apart, else None."""
    spec = table.spec
    if not batch_col or len(spec.batches) < 2:
        return None
    pairs = np.unique(np.stack([table.batch, table.pert]), axis=1)
    conditions_per_batch = np.bincount(pairs[0], minlength=len(spec.batches))
    if conditions_per_batch.max() > 1:
        return None
    batches_per_condition = np.bincount(pairs[1], minlength=len(spec.perts))
    lonely = [spec.perts[p] for p in range(len(spec.perts)) if batches_per_condition[p] == 1]
    if lonely:
        return (f"{', '.join(lonely)}: every cell is in one {batch_col} batch, which holds no other condition: "
                f"batch and condition are fully confounded, so a batch effect is indistinguishable from the "
                f"perturbation's effect")
    counts = ", ".join(f"{p} {n}" for p, n in zip(spec.perts, batches_per_condition, strict=True))
    return (f"each {batch_col} batch holds a single condition (batches per condition: {counts}): batch effects "
            f"average out only across batches, and the test split holds out whole batches")
