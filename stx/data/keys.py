"""Names of the tensors in a training batch, shared by the data layer and the model.

Every batch is a dict of these keys. Shapes: B sets per batch, S cells per set, D embedding
dimensions.
"""

from __future__ import annotations

CTRL_EMB = "ctrl_cell_emb"  # [B, S, D] control-cell embeddings (model input)
PERT_CELL_EMB = "pert_cell_emb"  # [B, S, D] real perturbed-cell embeddings (target)
PERT_INDEX = "pert_index"  # [B] perturbation of each set (index into DataSpec.perts)
BATCH_INDEX = "batch_index"  # [B, S] batch of each control cell (index into DataSpec.batches)
CELL_TYPE_INDEX = "cell_type_index"  # [B] cell type of each set
DAY_INDEX = "day_index"  # [B] time point of each set (index into DataSpec.days)
CTRL_CELL_INDEX = "ctrl_cell_index"  # [B, S] rows of the control cells in the CellTable
PERT_CELL_INDEX = "pert_cell_index"  # [B, S] rows of the target cells in the CellTable
COVARIATES = "covariate_index"  # [B, S, K] codes of the covariate inputs (time point, extra columns)
HAS_TARGET = "has_target"  # [B] False for sets drawn only for the velocity prior (no perturbed cells to match)
VELOCITY = "velocity"  # [B, S, D] RNA velocity the predicted shift should align with (velocity variants)
VELOCITY_WEIGHT = "velocity_weight"  # [B, S] velocity confidence of those cells

BATCH_KEYS = (
    CTRL_EMB,
    PERT_CELL_EMB,
    PERT_INDEX,
    BATCH_INDEX,
    CELL_TYPE_INDEX,
    DAY_INDEX,
    CTRL_CELL_INDEX,
    PERT_CELL_INDEX,
    COVARIATES,
    HAS_TARGET,
)
