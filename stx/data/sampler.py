"""Cell-set sampling as ST trains: pairs of (control set, perturbed set) from one group.

A task is (group, perturbation, batch of the perturbed cells). Each step draws
`batch_size` tasks, weighted by their number of perturbed cells, and for each task
`cell_set_len` perturbed cells and `cell_set_len` control cells of the same group (cell
type x day; with data.control_time, the same cell type at that time), from the same batch
where that batch has enough control cells, else from the whole group. Index pools are
flat tensors with offsets, built once; a step is a handful of vectorised tensor ops, with
no pandas or AnnData in the loop.

With `unseen_tasks`, groups that have control cells but no perturbed cells of a
perturbation in this split (held-out groups) also get tasks: their sets carry no target
(`HAS_TARGET` False), so only target-free losses (the velocity prior) see them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from stx.data import keys
from stx.data.covariates import CovariatePlan
from stx.data.load import CellTable


@dataclass(frozen=True)
class _Pools:
    offsets: torch.Tensor  # [T] start of each task's pool in `flat`
    lengths: torch.Tensor  # [T]
    flat: torch.Tensor  # [sum of lengths] cell rows


def _pools(members: list[np.ndarray]) -> _Pools:
    lengths = np.array([len(m) for m in members], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    flat = np.concatenate(members) if members else np.zeros(0, np.int64)
    return _Pools(torch.from_numpy(offsets), torch.from_numpy(lengths), torch.from_numpy(flat.astype(np.int64)))


class SetSampler:
    """Draws batches of cell-set pairs from the cells selected by `mask`.

    `include_control` adds control->control tasks (the model should map a control set to
    itself), as ST does with its control perturbation.
    """

    def __init__(self, table: CellTable, mask: np.ndarray, batch_size: int, cell_set_len: int,
                 seed: int = 0, include_control: bool = True, min_batch_controls: int | None = None,
                 velocity_source: str = "control", covariates: CovariatePlan | None = None,
                 unseen_tasks: bool = False):
        self.table = table
        self.batch_size = batch_size
        self.cell_set_len = cell_set_len
        self.emb = torch.from_numpy(table.emb)
        self.batch = torch.from_numpy(table.batch)
        self.velocity = None if table.velocity is None else torch.from_numpy(table.velocity)
        self.velocity_weight = None if table.velocity_weight is None else torch.from_numpy(table.velocity_weight)
        self.velocity_source = velocity_source
        plan = covariates or CovariatePlan()
        self._time_input = plan.time
        self._extra = torch.from_numpy(table.covariates[:, list(plan.extra)].copy()) if plan.extra else None
        self.generator = torch.Generator().manual_seed(seed)
        min_batch_controls = min_batch_controls or max(1, cell_set_len // 4)

        ctrl = table.spec.control_index
        rows = np.flatnonzero(mask)
        group = table.group[rows]
        tasks: list[tuple[int, int, int]] = []
        targets: list[np.ndarray] = []
        controls: list[np.ndarray] = []
        has_target: list[bool] = []
        perturbations = sorted(set(np.unique(table.pert[rows]).tolist()) - {ctrl})
        order = np.lexsort((table.batch[rows], table.pert[rows], group))
        rows, group = rows[order], group[order]
        is_ctrl = table.pert[rows] == ctrl
        controls_of = {int(g): rows[is_ctrl & (group == g)] for g in np.unique(group[is_ctrl])}
        # target groups: every group with cells here, and (for the prior) any whose controls are here
        candidates = set(np.unique(group).tolist())
        if unseen_tasks:
            all_groups = np.unique(table.group)
            candidates |= {int(g) for g in all_groups if int(table.control_group(int(g))) in controls_of}
        for g in sorted(candidates):
            group_ctrl = controls_of.get(int(table.control_group(int(g))), np.zeros(0, np.int64))
            if len(group_ctrl) == 0:
                continue
            in_group = rows[group == g]
            for p in np.unique(table.pert[in_group]):
                if p == ctrl and not include_control:
                    continue
                cells = in_group[table.pert[in_group] == p]
                for b in np.unique(table.batch[cells]):
                    target = cells[table.batch[cells] == b]
                    same_batch = group_ctrl[table.batch[group_ctrl] == b]
                    if p == ctrl:
                        source = group_ctrl  # a control set maps to other control cells
                    else:
                        source = same_batch if len(same_batch) >= min_batch_controls else group_ctrl
                    tasks.append((int(g), int(p), int(b)))
                    targets.append(target)
                    controls.append(source)
                    has_target.append(True)
            baseline_group = table.control_day is not None and int(table.control_group(int(g))) == int(g)
            if unseen_tasks and not baseline_group:
                present = set(np.unique(table.pert[in_group]).tolist())
                for p in sorted(set(perturbations) - present):
                    tasks.append((int(g), int(p), -1))
                    targets.append(group_ctrl)  # a placeholder: these sets have no target
                    controls.append(group_ctrl)
                    has_target.append(False)
        if not any(has_target):
            raise ValueError("no (group, perturbation) with both control and perturbed cells in this split")
        self.tasks = np.asarray(tasks, np.int64)  # [T, 3] group, pert, batch (-1: no target)
        weights = np.array([len(t) for t in targets], np.float64)
        has = np.asarray(has_target)
        weights[~has] = weights[has].mean()  # a target-free task is drawn as often as an average one
        self.weights = torch.from_numpy(weights)
        self._has_target = torch.from_numpy(has)
        self._targets = _pools(targets)
        self._controls = _pools(controls)
        n_days = len(table.spec.days)
        self._task_pert = torch.from_numpy(self.tasks[:, 1].copy())
        self._task_cell_type = torch.from_numpy(self.tasks[:, 0] // n_days)
        self._task_day = torch.from_numpy(self.tasks[:, 0] % n_days)

    @property
    def n_tasks(self) -> int:
        """Number of (group, perturbation, batch) tasks."""
        return len(self.tasks)

    def _draw(self, pools: _Pools, task: torch.Tensor) -> torch.Tensor:
        u = torch.rand(len(task), self.cell_set_len, generator=self.generator)
        pick = (u * pools.lengths[task, None]).long()
        return pools.flat[pools.offsets[task, None] + pick]

    def sample(self) -> dict[str, torch.Tensor]:
        """One batch: the tensors named in `stx.data.keys`."""
        task = torch.multinomial(self.weights, self.batch_size, replacement=True, generator=self.generator)
        pert_rows = self._draw(self._targets, task)
        ctrl_rows = self._draw(self._controls, task)
        out = {
            keys.CTRL_EMB: self.emb[ctrl_rows],
            keys.COVARIATES: self._covariates(task, ctrl_rows),
            keys.HAS_TARGET: self._has_target[task],
            keys.PERT_CELL_EMB: self.emb[pert_rows],
            keys.PERT_INDEX: self._task_pert[task],
            keys.BATCH_INDEX: self.batch[ctrl_rows],
            keys.CELL_TYPE_INDEX: self._task_cell_type[task],
            keys.DAY_INDEX: self._task_day[task],
            keys.CTRL_CELL_INDEX: ctrl_rows,
            keys.PERT_CELL_INDEX: pert_rows,
        }
        if self.velocity is not None:
            rows = ctrl_rows if self.velocity_source == "control" else pert_rows
            out[keys.VELOCITY] = self.velocity[rows]
            out[keys.VELOCITY_WEIGHT] = self.velocity_weight[rows]
        return out

    def _covariates(self, task: torch.Tensor, ctrl_rows: torch.Tensor) -> torch.Tensor:
        parts = [self._task_day[task][:, None, None].expand(*ctrl_rows.shape, 1)] if self._time_input else []
        if self._extra is not None:
            parts.append(self._extra[ctrl_rows])
        return torch.cat(parts, -1) if parts else torch.zeros((*ctrl_rows.shape, 0), dtype=torch.long)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            yield self.sample()

    def fixed_batches(self, n: int) -> list[dict[str, torch.Tensor]]:
        """`n` batches drawn once (validation uses the same sets at every evaluation)."""
        return [self.sample() for _ in range(n)]
