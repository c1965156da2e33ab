"""The held-out test design every predictor is scored on: which test controls are fed to
the predictors, which define the real shift, and which (group, perturbation) pairs are
predicted.

In each test group the control cells are split once, deterministically (seeded by
`data.split_seed`), into two halves: `fed` (the input of every predictor: the model, its
references) and `reference` (seen by no predictor; the baseline of the real shift). See
`stx.evaluate.metrics` for why. With data.control_time the controls of a cell type at that
time are split once and serve every later time point of the cell type.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stx.data.load import CellTable
from stx.data.split import TEST, Split


@dataclass(frozen=True)
class Task:
    """One (group, perturbation) to predict: from `fed` control rows, compared with `real` rows."""

    group: int
    pert: int
    fed: np.ndarray
    reference: np.ndarray
    real: np.ndarray
    heldout: bool


@dataclass(frozen=True, eq=False)
class TestDesign:
    """Test cells by role and the tasks built from them."""

    fed: np.ndarray  # [N] bool: test controls given to predictors
    reference: np.ndarray  # [N] bool: test controls that define the real shift
    tasks: tuple[Task, ...]

    def fed_rows(self) -> np.ndarray:
        """Rows of every fed control cell."""
        return np.flatnonzero(self.fed)


def make_design(table: CellTable, split: Split, seed: int = 0,
                heldout_groups: frozenset[int] = frozenset()) -> TestDesign:
    """Split each test group's controls in two halves and list the (group, perturbation) tasks."""
    ctrl = table.spec.control_index
    test = split.mask(TEST)
    group = table.group
    fed = np.zeros(table.n_cells, bool)
    reference = np.zeros(table.n_cells, bool)
    halves: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for g in np.unique(group[test & (table.pert == ctrl)]):
        controls = np.flatnonzero(test & (group == g) & (table.pert == ctrl))
        # a group's own seed: adding or removing another group does not reshuffle this one
        order = np.random.default_rng([seed, int(g)]).permutation(controls)
        half = (len(order) + 1) // 2
        halves[int(g)] = np.sort(order[:half]), np.sort(order[half:])
        fed[order[:half]] = True
        reference[order[half:]] = True
    tasks = []
    for g in np.unique(group[test & (table.pert != ctrl)]):
        source = halves.get(int(table.control_group(int(g))))
        if source is None:
            continue
        for p in np.unique(table.pert[test & (group == g) & (table.pert != ctrl)]):
            tasks.append(Task(int(g), int(p), source[0], source[1],
                              np.flatnonzero(test & (group == g) & (table.pert == p)), int(g) in heldout_groups))
    return TestDesign(fed, reference, tuple(tasks))


def check_design(design: TestDesign, table: CellTable, min_cells: int) -> None:
    """Refuse a test split in which no group has enough cells for the control split."""
    from stx.errors import DataError

    def size(task: Task) -> int:
        return min(len(task.fed), len(task.reference), len(task.real))

    if design.tasks and any(size(t) >= min_cells for t in design.tasks):
        return
    groups = ", ".join(f"{table.spec.group_label(*table.group_name(t.group))} (fed {len(t.fed)}, reference "
                       f"{len(t.reference)}, perturbed {len(t.real)})" for t in design.tasks[:6]) or "none"
    raise DataError(f"the test split has no group with at least {min_cells} control cells in each half and "
                    f"{min_cells} perturbed cells: {groups}; raise data.test_fraction, use data.split = 'cell', or "
                    f"lower data.min_group_cells")
