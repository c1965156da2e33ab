"""`stx compare`: read runs from MLflow, write tables and figures, log them as a compare run."""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from stx.compare import figures
from stx.compare.query import RunRecord, check_same_data, experiment_runs, registry_runs
from stx.compare.tables import comparison_table, to_markdown
from stx.errors import StxError

log = logging.getLogger(__name__)

HISTORY_KEYS = ("train/loss", "val/loss", "grad_norm/global")


@dataclass(frozen=True)
class CompareResult:
    """Where the comparison went and what it found."""

    out_dir: Path
    table: pd.DataFrame
    run_id: str | None
    n_runs: int
    seconds: float


def _download(run: RunRecord, path: str, dst: Path) -> Path:
    import mlflow

    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run.run_id, artifact_path=path, dst_path=str(dst)))
    except Exception:
        raise StxError(f"run {run.run_id} ({run.variant}) has no artifact {path}; was it made by stx run "
                       f"and did it finish?") from None


def _experiment_ids(client, experiment: str | None) -> list[str] | None:  # noqa: ANN001
    if experiment is None:
        return None
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = [e.name for e in client.search_experiments(max_results=50)]
        raise StxError(f"experiment '{experiment}' not found; experiments: {', '.join(names) or 'none'}")
    return [found.experiment_id]


def gather(client, experiment: str | None, runs: str, allow_mixed: bool) -> list[RunRecord]:  # noqa: ANN001
    """The runs to compare (see `stx.compare.query`), checked for a common data set."""
    ids = _experiment_ids(client, experiment)
    if runs == "registry":
        records = registry_runs(client, ids)
        if not records:
            raise StxError("no registered stx-* model" + (f" from experiment '{experiment}'" if experiment else "")
                           + "; train one with 'stx run --variant lora', or compare all runs with --runs all")
    else:
        if ids is None:
            ids = [e.experiment_id for e in client.search_experiments(max_results=1000)]
        records = experiment_runs(client, ids)
        if not records:
            raise StxError(f"no finished stx runs in {f'experiment {experiment!r}' if experiment else 'the store'}")
    check_same_data(records, allow_mixed)
    return records


def compare(tracking_uri: str, out_dir: Path, experiment: str | None = None, baseline: str = "baseline",
            runs: str = "registry", allow_mixed: bool = False, projection: str = "umap",
            log_run: bool = True) -> CompareResult:
    """Build the comparison of the selected runs into `out_dir` (and a compare run in MLflow)."""
    from stx.tracking.run import connect

    start = time.perf_counter()
    client = connect(tracking_uri)
    records = gather(client, experiment, runs, allow_mixed)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        # per-group tables only for the runs shown (one per variant): reading stays O(variants)
        shown = _one_per_variant(records)
        by_group = {r.run_id: pd.read_csv(_download(r, "eval/metrics_by_group.csv", tmp_dir / r.run_id))
                    for r in shown.values()}
        table = comparison_table(records, by_group, baseline)
        table.to_csv(out_dir / "comparison.csv", index=False)
        (out_dir / "comparison.md").write_text(
            f"# stx comparison ({datetime.now():%Y-%m-%d %H:%M})\n\n{len(records)} runs from "
            f"{'the registry (champion, else newest version)' if runs == 'registry' else 'the experiment'}; "
            f"held-out test cells only.\n\n" + to_markdown(table, baseline))
        groups = pd.concat([f.assign(variant=next(r.variant for r in records if r.run_id == rid), run_id=rid)
                            for rid, f in by_group.items()], ignore_index=True)
        groups.to_csv(out_dir / "metrics_by_group.csv", index=False)
        _figures(client, shown, by_group, table, tmp_dir, out_dir, projection)
    run_id = _log_compare_run(client, records, out_dir, experiment) if log_run else None
    return CompareResult(out_dir, table, run_id, len(records), time.perf_counter() - start)


def _one_per_variant(records: list[RunRecord]) -> dict[str, RunRecord]:
    shown: dict[str, RunRecord] = {}
    for record in records:
        shown.setdefault(record.variant, record)
    return shown


def _figures(client, shown: dict[str, RunRecord], by_group: dict[str, pd.DataFrame], table: pd.DataFrame,  # noqa: ANN001
             tmp: Path, out: Path, projection: str) -> None:
    histories = {v: {k: [(m.step, m.value) for m in client.get_metric_history(r.run_id, k)] for k in HISTORY_KEYS}
                 for v, r in shown.items()}
    figures.curves(histories, ["train/loss", "val/loss"], out / "loss_curves.png", "loss, all variants")
    figures.curves(histories, ["grad_norm/global"], out / "grad_norm_curves.png",
                   "global gradient norm (before clipping)", log_y=True)
    figures.metric_bars(table, out / "metric_bars.png")
    figures.group_heatmaps({v: by_group[r.run_id] for v, r in shown.items()}, "direction_cos",
                           out / "direction_cos_heatmap.png")
    try:
        real_control, real_perturbed, real_shift, predicted, shifts = _cells(shown, tmp)
    except StxError as err:
        log.warning("cell-level figures skipped: %s", err)
        return
    figures.prediction_grid(real_control, real_perturbed, predicted, out / "umap_grid.png", method=projection)
    figures.trajectories(shifts, real_shift, out / "trajectories.png")


def _cells(shown: dict[str, RunRecord], tmp: Path):
    """Real test cells (from the runs' own config and split) and each variant's predictions."""
    import anndata as ad

    from stx.config import load_config
    from stx.data.load import load_cells

    first = next(iter(shown.values()))
    if len({r.data_sha256 for r in shown.values()}) > 1:
        raise StxError("the runs shown were trained on different data sets (--allow-mixed)")
    cfg = load_config(_download(first, "config/resolved.toml", tmp / "cfg"))
    table = load_cells(cfg)
    split = pd.read_csv(_download(first, "data/split.csv", tmp / "split"))
    test = split["split"].to_numpy() == "test"
    control = test & (table.pert == table.spec.control_index)
    perturbed = test & ~control
    index = {name: i for i, name in enumerate(table.obs_names)}
    key = table.spec.embed_key
    real_shift = {}
    groups = table.group
    for g in np.unique(groups[test]):
        c, r = control & (groups == g), perturbed & (groups == g)
        if c.any() and r.any():
            real_shift[table.group_name(int(g))] = table.emb[r].mean(0) - table.emb[c].mean(0)
    predicted, shifts = {}, {}
    for variant, record in shown.items():
        pred = ad.read_h5ad(_download(record, "predictions/predictions.h5ad", tmp / record.run_id))
        emb = pred.X if key == "X" else pred.obsm[key]
        predicted[variant] = np.asarray(emb)
        rows = np.array([index[s] for s in pred.obs["source_cell"].astype(str)])
        shifts[variant] = {}
        for g in np.unique(groups[rows]):
            sel = groups[rows] == g
            c = control & (groups == g)
            if c.any():
                shifts[variant][table.group_name(int(g))] = np.asarray(emb)[sel].mean(0) - table.emb[c].mean(0)
    return table.emb[control], table.emb[perturbed], real_shift, predicted, shifts


def _log_compare_run(client, records: list[RunRecord], out_dir: Path, experiment: str | None) -> str:  # noqa: ANN001
    from stx.tracking.run import ensure_experiment

    name = experiment or "stx-compare"
    exp_id = records[0].experiment_id if experiment else ensure_experiment(client, name, client.tracking_uri)
    compared = ",".join(r.run_id for r in records)[:5000]
    run = client.create_run(exp_id, run_name=f"compare-{datetime.now():%Y%m%d-%H%M%S}",
                            tags={"stx.kind": "compare", "stx.compared_runs": compared})
    try:
        client.log_artifacts(run.info.run_id, str(out_dir), "compare")
        client.set_terminated(run.info.run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    return run.info.run_id
