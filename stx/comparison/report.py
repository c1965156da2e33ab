"""`stx compare`: read runs from MLflow, write tables and figures, log them as a compare run."""

from __future__ import annotations

import io
import logging
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from stx.comparison import figures
from stx.comparison.query import RunRecord, check_same_data, experiment_runs, registry_runs
from stx.comparison.tables import Row, build_rows, comparison_table, differences, steps_of, summary_lines, to_markdown
from stx.errors import StxError
from stx.evaluate.plots import projection_for

log = logging.getLogger(__name__)

HISTORY_KEYS = ("train/energy_loss", "val/energy_loss", "grad_norm/global")


@dataclass(frozen=True)
class CompareResult:
    """Where the comparison went and what it found."""

    out_dir: Path
    table: pd.DataFrame
    differences: pd.DataFrame
    summary: list[str]
    run_id: str | None
    n_runs: int
    seconds: float
    tracking_uri: str = ""


def _missing(run: RunRecord, path: str) -> StxError:
    return StxError(f"run {run.run_id} ({run.variant}) has no artifact {path}; was it made by stx run "
                    f"and did it finish?")


def _local_root(run: RunRecord) -> Path | None:
    """The run's artifact folder when the store keeps artifacts on this file system (read in
    place: no download, no run lookup), else None."""
    from mlflow.utils.file_utils import local_file_uri_to_path
    from mlflow.utils.uri import is_local_uri

    uri = run.artifact_uri
    return Path(local_file_uri_to_path(uri)) if is_local_uri(uri, is_tracking_or_registry_uri=False) else None


def _download(run: RunRecord, path: str, dst: Path) -> Path:
    """One artifact of a run: in place from a local artifact store, else downloaded into `dst`
    from the run's artifact location (taken from the search: no lookup of the run)."""
    root = _local_root(run)
    if root is not None:
        if not (root / path).is_file():
            raise _missing(run, path)
        return root / path
    import mlflow

    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{run.artifact_uri.rstrip('/')}/{path}",
                                                        dst_path=str(dst)))
    except Exception:
        raise _missing(run, path) from None


def group_tables(records: list[RunRecord], tmp: Path, workers: int = 8) -> dict[str, pd.DataFrame]:
    """run id -> its `eval/metrics_by_group.csv`: read in place from a local store, downloaded
    in parallel from a remote one; files with the same columns from runs on the same data are
    parsed in one pass (a file at a time costs more than the whole parse), then split by run."""
    name = "eval/metrics_by_group.csv"
    local = [r for r in records if _local_root(r) is not None]
    paths = {r.run_id: _download(r, name, tmp) for r in local}
    remote = [r for r in records if r.run_id not in paths]
    if remote:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(workers, len(remote))) as pool:
            got = pool.map(lambda r: (r.run_id, _download(r, name, tmp / r.run_id)), remote)
            paths.update(dict(got))
    return read_group_tables(paths, {r.run_id: r.data_sha256 for r in records})


def read_group_tables(paths: dict[str, Path], data: dict[str, str]) -> dict[str, pd.DataFrame]:
    """Per-run CSV tables as `pd.read_csv` reads each file, parsed in batches: the files of runs
    on one data set (`data`: run id -> digest) that share a header are joined and parsed once."""
    batches: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for run_id, path in paths.items():
        text = Path(path).read_text(encoding="utf-8")
        header, _, body = text.partition("\n")
        if not body.strip() or "\r" in text or '"' in text or "\n\n" in body or text.startswith("\ufeff"):
            # no rows, CRLF, quoted cells, blank lines or a byte-order mark: parsed on its own
            batches[(f"\0{run_id}", "")] = [(run_id, str(path))]
            continue
        batches.setdefault((header, data.get(run_id, "")), []).append((run_id, body if body.endswith("\n") else
                                                                        body + "\n"))
    out: dict[str, pd.DataFrame] = {}
    for (header, _), items in batches.items():
        if header.startswith("\0"):
            run_id, path = items[0]
            out[run_id] = pd.read_csv(path)
            continue
        frame = pd.read_csv(io.StringIO(header + "\n" + "".join(body for _, body in items)))
        start = 0
        for run_id, body in items:
            n = body.count("\n")
            out[run_id] = frame.iloc[start:start + n].reset_index(drop=True)
            start += n
    return {run_id: out[run_id] for run_id in paths}


def _experiment_ids(client, experiment: str | None) -> list[str] | None:  # noqa: ANN001
    if experiment is None:
        return None
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = [e.name for e in client.search_experiments(max_results=50)]
        raise StxError(f"experiment '{experiment}' not found; experiments: {', '.join(names) or 'none'}")
    return [found.experiment_id]


def gather(client, experiment: str | None, runs: str, allow_mixed: bool,  # noqa: ANN001
           trials: bool = False) -> list[RunRecord]:
    """The runs to compare (see `stx.comparison.query`), checked for a common data set."""
    ids = _experiment_ids(client, experiment)
    if runs == "registry":
        records = registry_runs(client, ids)
        if not records:
            raise StxError("no registered stx-* model" + (f" from experiment '{experiment}'" if experiment else "")
                           + "; train one with 'stx run --variant lora', or compare all runs with --runs all")
    else:
        if ids is None:
            ids = [e.experiment_id for e in client.search_experiments(max_results=1000)]
        records = experiment_runs(client, ids, trials)
        if not records:
            raise StxError(f"no finished stx runs in {f'experiment {experiment!r}' if experiment else 'the store'}")
    check_same_data(records, allow_mixed)
    _warn_unlike(records, runs)
    return records


# What a registered champion may have been trained with differently from its neighbours.
UNLIKE: tuple[tuple[str, Callable[[RunRecord], object]], ...] = (
    ("steps", steps_of),
    ("trainer.lr", lambda r: r.params.get("trainer.lr")),
    ("model.lora.r", lambda r: r.params.get("model.lora.r")),
    ("model.velocity.lambda", lambda r: r.params.get("model.velocity.lambda")),
    ("data", lambda r: r.data_sha256[:12] or None),
)


def _warn_unlike(records: list[RunRecord], runs: str) -> None:
    """Say when rows were trained differently: a variant split into one row per configuration,
    or registry versions trained with different steps, learning rate, rank, lambda or data."""
    from stx.comparison.tables import config_of

    by_variant: dict[str, set[str]] = {}
    for record in records:
        by_variant.setdefault(record.variant, set()).add(config_of(record))
    split = [v for v, configs in by_variant.items() if len(configs) > 1]
    if split:
        log.warning("runs of %s were trained with different configurations: each configuration is its own row "
                    "(named with its steps and config digest), never pooled", ", ".join(split))
    if runs != "registry":
        return
    trained = [r for r in records if r.variant != "baseline"]
    unlike = []
    for label, value in UNLIKE:
        seen = {r.variant: str(v) for r in trained if (v := value(r)) not in (None, "")}
        if len(set(seen.values())) > 1:
            unlike.append(f"{label} (" + ", ".join(f"{v} {x}" for v, x in sorted(seen.items())) + ")")
    if unlike:
        log.warning("the registered versions compared were trained differently: %s; a champion from a short "
                    "sweep trial is not comparable with full runs", "; ".join(unlike))


def default_out(experiment: str | None, runs: str, trials: bool = False) -> Path:
    """`results/<experiment>-<mode>[-trials]`: a registry compare never overwrites an all-runs
    one, nor a compare with sweep trials one without."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment or "all-experiments")
    return Path("results") / f"{name}-{runs}{'-trials' if trials else ''}"


# Every file a compare may write: a new compare removes the old ones it did not write again
# (cells_umap.png after a --projection pca compare), and nothing else in the folder.
OUTPUTS = ("comparison.md", "comparison.csv", "differences.csv", "metrics_by_group.csv", "loss_curves.png",
           "grad_norm_curves.png", "metric_bars.png", "energy_ratio_heatmap.png", "cells_umap.png", "cells_pca.png",
           "trajectories.png")


def publish(stage: Path, out: Path) -> None:
    """Move a complete comparison from `stage` into `out`, replacing the previous one's files."""
    import shutil

    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:
        (out / name).unlink(missing_ok=True)
    for path in sorted(stage.iterdir()):
        shutil.move(str(path), out / path.name)


def compare(tracking_uri: str, out_dir: Path | None = None, experiment: str | None = None, runs: str = "registry",
            allow_mixed: bool = False, projection: str = "auto", log_run: bool = True,
            trials: bool = False) -> CompareResult:
    """Build the comparison of the selected runs into `out_dir` (and a compare run in MLflow)."""
    from stx.tracking.run import connect

    start = time.perf_counter()
    client = connect(tracking_uri)
    records = gather(client, experiment, runs, allow_mixed, trials)
    out_dir = out_dir or default_out(experiment, runs, trials)
    with tempfile.TemporaryDirectory() as tmp, _one_blas_thread():
        tmp_dir = Path(tmp)
        stage = tmp_dir / "out"  # written here, published into out_dir when complete
        stage.mkdir()
        by_run = group_tables(records, tmp_dir)
        rows = build_rows(records, by_run)
        table, diffs = comparison_table(rows), differences(rows)
        held_table = comparison_table(rows, heldout=True)
        held_diffs = differences(rows, heldout=True)
        table.to_csv(stage / "comparison.csv", index=False)
        diffs.to_csv(stage / "differences.csv", index=False)
        source = "the registry (champion, else newest version of each model)" if runs == "registry" \
            else "every finished run of the experiment"
        (stage / "comparison.md").write_text(
            f"# stx comparison ({datetime.now():%Y-%m-%d %H:%M})\n\n{len(records)} runs from {source}; held-out "
            f"test cells only; rows are variants (seeds pooled) and reference predictors scored on the same test "
            f"design. Intervals: 95% percentile bootstrap over test groups and seeds, the same for every row.\n\n"
            + to_markdown(table, diffs, held_table, held_diffs))
        pd.concat([r.groups.assign(row=r.name) for r in rows], ignore_index=True).to_csv(
            stage / "metrics_by_group.csv", index=False)
        _figures(client, rows, table, tmp_dir, stage, projection)
        publish(stage, out_dir)
    run_id = _log_compare_run(client, records, out_dir, experiment) if log_run else None
    return CompareResult(out_dir, table, diffs, summary_lines(table, diffs), run_id, len(records),
                         time.perf_counter() - start, tracking_uri)


def _one_blas_thread():  # a context manager
    """Small matrices only (bootstrap replicates, a PCA of a few thousand cells): BLAS threads
    cost more in hand-offs than they save, 5x on two busy cores."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def newest_run(row: Row) -> RunRecord | None:
    """The row's most recent run (the one drawn in curves and cell figures)."""
    return max(row.runs, key=lambda r: r.start_time, default=None) if row.kind == "variant" else None


def _figures(client, rows: list[Row], table: pd.DataFrame, tmp: Path, out: Path, projection: str) -> None:  # noqa: ANN001
    from stx.comparison.render import draw_all
    from stx.evaluate.plots import pyplot

    pyplot()  # imported once, here: the forked workers share it
    shown = {row.name: run for row in rows if (run := newest_run(row)) is not None}
    histories = {name: {k: [(m.step, m.value) for m in client.get_metric_history(r.run_id, k)] for k in HISTORY_KEYS}
                 for name, r in shown.items()}
    note = "newest run of each variant"
    clips = {float(r.params.get("trainer.grad_clip", 0) or 0) for r in shown.values()}
    clip = clips.pop() if len(clips) == 1 else 0.0

    cells, here = [], []  # here: drawn by this process, not by a forked worker
    if shown:
        # read before any worker starts: downloads share the parent's connections
        try:
            control, perturbed, real_shift, predicted, shifts, method = _cells(shown, tmp, projection)
        except StxError as err:
            log.warning("cell-level figures not drawn: %s", err)
        else:
            def grid() -> None:
                figures.prediction_grid(control, perturbed, predicted, out / f"cells_{method}.png", method=method)

            # UMAP runs numba's OpenMP, which aborts in a child forked from a process that used it
            (here if method == "umap" else cells).append(grid)
            cells.append(lambda: figures.trajectories(shifts, real_shift, out / "trajectories.png"))
    draws = [  # the costliest first (500 runs, 2 cores: 1.5, 1.1, 1.1, 0.8, 0.7 and 0.5 s)
        lambda: figures.group_heatmaps({r.name: r.groups for r in rows}, "energy_ratio",
                                       out / "energy_ratio_heatmap.png"),
        *cells,
        lambda: figures.metric_bars(table, out / "metric_bars.png"),
        lambda: figures.curves(histories, ["train/energy_loss", "val/energy_loss"], out / "loss_curves.png",
                               f"energy loss ({note}; dashed: validation)"),
        lambda: figures.curves(histories, ["grad_norm/global"], out / "grad_norm_curves.png",
                               f"global gradient norm before clipping ({note})", log_y=True,
                               hline=(clip, f"clipping threshold {clip:g}") if clip else None),
    ]
    draw_all(draws, here=here)


def _cells(shown: dict[str, RunRecord], tmp: Path, projection: str):
    """Real test cells (from the runs' own config and split) and each row's predictions and shifts:
    predicted = mean(P) - mean(fed controls), real = mean(R) - mean(the other test controls)."""
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
    groups = table.group
    predicted, shifts, fed = {}, {}, np.zeros(table.n_cells, bool)
    for name, record in shown.items():
        pred = ad.read_h5ad(_download(record, "predictions/predictions.h5ad", tmp / record.run_id))
        emb = np.asarray(pred.X if key == "X" else pred.obsm[key])
        rows = np.array([index[s] for s in pred.obs["source_cell"].astype(str)])
        fed[rows] = True
        predicted[name] = emb
        target = groups[rows]
        if cfg.data.time_col and cfg.data.time_col in pred.obs:  # the time predicted for (data.control_time)
            day = {d: i for i, d in enumerate(table.spec.days)}
            target = table.cell_type[rows] * len(table.spec.days) + np.array(
                [day[str(d)] for d in pred.obs[cfg.data.time_col].astype(str)])
        shifts[name] = {table.group_name(int(g)): emb[target == g].mean(0) - table.emb[rows[target == g]].mean(0)
                        for g in np.unique(target)}
    reference = control & ~fed
    real_shift = {}
    for g in np.unique(groups[test]):
        c, r = reference & (groups == table.control_group(int(g))), perturbed & (groups == g)
        if c.any() and r.any():
            real_shift[table.group_name(int(g))] = table.emb[r].mean(0) - table.emb[c].mean(0)
    method = projection_for(projection, table.spec.embed_dim)
    return table.emb[control], table.emb[perturbed], real_shift, predicted, shifts, method


def _log_compare_run(client, records: list[RunRecord], out_dir: Path, experiment: str | None) -> str:  # noqa: ANN001
    from stx.tracking.run import ensure_experiment

    experiments = {r.experiment_id for r in records}
    if experiment or len(experiments) == 1:  # the compare run lands beside the runs it compares
        exp_id = experiments.pop() if len(experiments) == 1 else records[0].experiment_id
    else:
        exp_id = ensure_experiment(client, "stx-compare", client.tracking_uri)
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
