"""What a run records about where it came from, the way the MLflow UI expects it: datasets
through `log_inputs` (the Dataset column and filters), the standard user/source/commit
tags, a description, and only the config sections the variant uses as params."""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

from stx.config import Config, flatten
from stx.data.load import CellTable, file_sha256
from stx.data.split import SPLIT_NAMES, Split
from stx.variants import Variant

CONTEXT = {"train": "train", "val": "validation", "test": "test"}


def dataset_inputs(table: CellTable, split: Split, cfg: Config) -> list:
    """One MLflow dataset per file and split it feeds (train, validation, test): its name
    says which, its digest is the file's sha256 combined with the cells in that split, its
    source is the file, its schema what stx reads."""
    import hashlib
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.types import ColSpec, Schema

    dcfg = cfg.data
    columns = [c for c in (dcfg.pert_col, dcfg.cell_type_key, dcfg.batch_col, dcfg.time_col, *dcfg.covariates) if c]
    where = "X" if dcfg.embed_key == "X" else f"obsm['{dcfg.embed_key}']"
    schema = Schema([*(ColSpec("string", f"obs['{c}']") for c in columns),
                     ColSpec("float", f"{where}: {table.spec.embed_dim} dims")])
    out = []
    for index, (name, path) in enumerate(zip(table.spec.datasets, table.files, strict=True)):
        with warnings.catch_warnings():  # MLflow warns that it guessed a local file source, which it did right
            warnings.simplefilter("ignore")
            source = resolve_dataset_source(str(Path(path).resolve()))
        file_digest = file_sha256(path)
        for code, context in enumerate(SPLIT_NAMES):
            cells = table.obs_names[(table.dataset == index) & (split.codes == code)]
            if not len(cells):
                continue
            digest = hashlib.sha256((file_digest + context + "\n".join(map(str, cells))).encode()).hexdigest()[:20]
            dataset = MetaDataset(source=source, name=f"{name}: {context} ({len(cells)} cells)", digest=digest,
                                  schema=schema)._to_mlflow_entity()
            out.append(DatasetInput(dataset, tags=[InputTag("mlflow.data.context", CONTEXT[context])]))
    return out


def standard_tags(commit: str | None, description: str) -> dict[str, str]:
    """mlflow.user, source name and type, git commit, and the run's description."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME") or _login()
    command = " ".join(["stx", *sys.argv[1:]]) if Path(sys.argv[0]).name in ("stx", "__main__.py") else \
        f"{Path(sys.argv[0]).name} (stx Python API)"
    tags = {"mlflow.user": user, "mlflow.source.name": command[:500], "mlflow.source.type": "LOCAL",
            "mlflow.note.content": description}
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return "unknown"


def run_description(cfg: Config, variant: Variant, table: CellTable) -> str:
    """One paragraph: what was trained on what, how long, and where the held-out cells are."""
    files = ", ".join(Path(f).name for f in table.files)
    what = f"{variant.name}: {variant.summary}"
    if not variant.train:
        return f"{what}; evaluated as is on the held-out cells of {files}."
    t = cfg.trainer
    return (f"{what}; {t.max_steps} steps at lr {t.lr:g}, batch {t.batch_size} sets of {t.cell_set_len} cells, "
            f"seed {t.seed}, on {files} (checkpoint {cfg.model.checkpoint}).")


def active_params(cfg: Config, variant: Variant) -> dict[str, str]:
    """The resolved config as params, without the sections this variant does not use
    (a baseline run has no `model.lora.r`) and without `sweep.*` (the sweep's parent has them)."""
    unused = ["sweep."]
    if not variant.lora:
        unused.append("model.lora.")
    if not variant.mhc:
        unused.append("model.mhc.")
    if not variant.velocity:
        unused.append("model.velocity.")
    return {k: v for k, v in flatten(cfg).items() if not k.startswith(tuple(unused))}
