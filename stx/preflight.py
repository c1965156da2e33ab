"""Every check `stx data validate` makes, run by `stx run` before the training stack is
imported: a data or checkpoint mistake is reported in seconds, not after torch, Lightning
and MLflow have loaded. Nothing here imports Lightning, transformers or MLflow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from stx.config import Config
from stx.data.covariates import CovariatePlan, check_covariates, plan_covariates, warn_off_axis
from stx.data.load import CellTable, load_cells
from stx.data.split import TRAIN, Split, make_split
from stx.errors import StxError
from stx.evaluate.design import TestDesign, check_design, make_design


@dataclass(frozen=True, eq=False)
class Checked:
    """What the checks built on the way, reused by the run instead of being built again."""

    table: CellTable
    split: Split
    plan: CovariatePlan
    design: TestDesign
    checkpoint: dict[str, object]  # input_dim, output_dim, cell_set_len, perts of the checkpoint


def preflight(cfg: Config, velocity: bool = False) -> Checked:
    """Load and check the data, the split, the inputs, the test design and the checkpoint."""
    table = load_cells(cfg, velocity=velocity)
    split = make_split(table, cfg)
    plan = plan_covariates(table, cfg)
    check_covariates(table, plan, split.mask(TRAIN), ~split.mask(TRAIN))
    if plan.time and cfg.model.time_encoding == "axis":
        warn_off_axis(table, split.mask(TRAIN), str(cfg.data.time_col))
    design = make_design(table, split, cfg.data.split_seed, split.heldout)
    check_design(design, table, cfg.data.min_group_cells)
    check_output_dir(Path(cfg.tracking.output_dir))
    return Checked(table, split, plan, design, check_checkpoint(cfg, table))


def preflight_key(cfg: Config, velocity: bool = False) -> str:
    """Everything `preflight` reads from a config: two configs with the same key build the same
    `Checked` (a sweep's trials differ in ranks, rates and loss weights, not here)."""
    v = cfg.model.velocity
    return json.dumps({
        "datasets": cfg.datasets, "training": cfg.training, "data": cfg.data.model_dump(mode="json"),
        "checkpoint": cfg.model.checkpoint, "time_input": cfg.model.time_input, "output_dir": cfg.tracking.output_dir,
        "velocity": [v.velocity_key, v.min_confidence, v.projection, v.loadings_key] if velocity else None,
    }, sort_keys=True, default=str)


def check_output_dir(folder: Path) -> None:
    """tracking.output_dir is a folder stx can write (run folders and checkpoints go there)."""
    from stx.tracking.store import probe_writable

    try:
        probe_writable(folder)
    except OSError as err:
        raise StxError(f"{folder.resolve()}: cannot write run folders there (tracking.output_dir; "
                       f"{err.strerror or err}): point tracking.output_dir at a writable folder") from None


def check_checkpoint(cfg: Config, table: CellTable) -> dict[str, object]:
    """The checkpoint exists, reads, and fits the data: its input and output width equal the
    embedding's (a mismatch names both numbers and the remedies)."""
    from stx.model.checkpoint import checkpoint_dir, read_run_dir

    run_dir = checkpoint_dir(cfg.model.checkpoint)
    hp, _, perts, batches = read_run_dir(Path(run_dir))
    spec = table.spec
    key = "X" if spec.embed_key == "X" else f"obsm['{spec.embed_key}']"
    dims = int(hp.get("input_dim", -1)), int(hp.get("output_dim", -1))
    if spec.embed_dim not in dims or dims[0] != dims[1]:
        raise StxError(f"{key} has {spec.embed_dim} dims but the checkpoint {cfg.model.checkpoint} expects {dims[0]} "
                       f"(input) and predicts {dims[1]}: choose another embedding (data.embed_key), a checkpoint "
                       f"trained on a {spec.embed_dim}-dim embedding (model.checkpoint), or train one on your own "
                       f"data (experiments/pretrain_mini/pretrain.py shows how)")
    return {"input_dim": dims[0], "output_dim": dims[1], "cell_set_len": int(hp.get("cell_set_len", 0)),
            "perts": perts, "batches": batches}
