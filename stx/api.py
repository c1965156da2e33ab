"""The Python API: what the CLI does, as functions that return typed results.

    import stx
    summary = stx.run("lora", overrides={"trainer.max_steps": 200})
    result = stx.compare(experiment=summary.experiment, runs="all")
    stx.predict(summary.model_uri, "cells.h5ad", "predicted.h5ad")

Every function takes the same inputs as its command (a config file or the embedded
default, `overrides` as {key: value} or ["key=value"], a tracking URI or the usual
precedence) and returns the object the command prints from. User mistakes raise
`stx.StxError` with the same one-line message the CLI prints.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from stx.errors import StxError

if TYPE_CHECKING:
    from stx.comparison.report import CompareResult
    from stx.config import Config
    from stx.evaluate.inference import PredictResult
    from stx.experiment import RunSummary
    from stx.sweeps.study import SweepSummary

Overrides = Mapping[str, object] | Iterable[str] | None


def setup_logging(verbose: bool = False) -> None:
    """stx's console logging: its own progress lines, libraries only when something is wrong."""
    import os
    import warnings

    from rich.logging import RichHandler

    handler = RichHandler(show_path=False, show_time=False, markup=False, rich_tracebacks=False)
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(message)s", force=True)
    logging.getLogger("stx").setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # MLflow's own retry warnings would bury stx's one-line error; stx reports store problems itself
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # per-retry lines while a server restarts
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    warnings.filterwarnings("ignore", message=r".*(isinstance\(treespec|litlogger|does not have many workers).*")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(mlflow|anndata|scanpy).*")


def as_overrides(overrides: Overrides) -> tuple[str, ...]:
    """{key: value} or ["key=value"] -> ("key=value", ...) with values written as TOML."""
    if overrides is None:
        return ()
    if isinstance(overrides, Mapping):
        from stx.sweeps.space import as_overrides as toml_overrides

        return tuple(toml_overrides(dict(overrides)))
    if isinstance(overrides, str):
        raise StxError(f"overrides: expected {{key: value}} or a list of 'key=value', got the string {overrides!r}")
    return tuple(overrides)


def load(config: str | Path | None = None, overrides: Overrides = None, seed: int | None = None) -> Config:
    """The validated config: a TOML file (or the embedded default) with overrides applied."""
    from stx.config import load_config

    extra = as_overrides(overrides) + ((f"trainer.seed={seed}",) if seed is not None else ())
    return load_config(config, extra)


def run(variant: str = "lora", config: str | Path | None = None, overrides: Overrides = None, *,
        seed: int | None = None, tracking_uri: str | None = None, experiment: str | None = None,
        devices: int | None = None) -> RunSummary:
    """Fine-tune (or, for baseline, only evaluate) one variant, tracked in MLflow (`stx run`)."""
    from stx.experiment import run_experiment
    from stx.preflight import preflight
    from stx.tracking.run import connect
    from stx.tracking.store import resolve_tracking_uri
    from stx.variants import resolve_variant

    chosen = resolve_variant(variant)
    cfg = load(config, overrides, seed)
    checked = preflight(cfg, velocity=chosen.velocity)
    uri = resolve_tracking_uri(tracking_uri)
    connect(uri)
    return run_experiment(cfg, chosen.name, uri, experiment=experiment, devices=devices, checked=checked)


def run_all(config: str | Path | None = None, overrides: Overrides = None, *, seeds: int = 1,
            tracking_uri: str | None = None, experiment: str | None = None, devices: int | None = None,
            on_run: object = None) -> tuple[list[RunSummary], CompareResult]:
    """The five variants, `seeds` runs each, then the comparison of those runs (`stx run
    --variant all`). `on_run(summary)` is called after each run (the CLI prints it)."""
    from stx.experiment import run_experiment
    from stx.preflight import preflight
    from stx.tracking.run import connect
    from stx.tracking.store import resolve_tracking_uri
    from stx.variants import STUDY_VARIANTS

    if seeds < 1:
        raise StxError("seeds must be at least 1")
    cfg = load(config, overrides)
    checked = preflight(cfg, velocity=True)
    uri = resolve_tracking_uri(tracking_uri)
    connect(uri)
    experiment = experiment or cfg.experiment_name()
    summaries = []
    for offset in range(seeds):
        for name in STUDY_VARIANTS:
            seeded = load(config, overrides, cfg.trainer.seed + offset)
            summary = run_experiment(seeded, name, uri, experiment=experiment, devices=devices, checked=checked)
            if summary is not None:
                summaries.append(summary)
                if callable(on_run):
                    on_run(summary)
    result = compare(experiment=experiment, runs="all", tracking_uri=uri, projection=cfg.tracking.projection)
    return summaries, result


def resume(run_id: str = "last", *, tracking_uri: str | None = None, experiment: str | None = None,
           devices: int | None = None) -> RunSummary:
    """Continue a killed run from its newest checkpoint, into the same MLflow run."""
    from stx.experiment import resume_experiment
    from stx.tracking.store import resolve_tracking_uri

    return resume_experiment(run_id, resolve_tracking_uri(tracking_uri), devices, experiment)


def abandon(run_id: str = "last", *, tracking_uri: str | None = None, experiment: str | None = None) -> str:
    """End a run that cannot be resumed as KILLED (`stx run --abandon`); returns its id."""
    from stx.experiment import abandon_run
    from stx.tracking.store import resolve_tracking_uri

    return abandon_run(run_id, resolve_tracking_uri(tracking_uri), experiment)


def compare(experiment: str | None = None, runs: str = "registry", out: str | Path | None = None, *,
            tracking_uri: str | None = None, allow_mixed: bool = False, projection: str = "auto",
            log_run: bool = True, trials: bool = False) -> CompareResult:
    """Variant-versus-reference tables and figures from MLflow (`stx compare`); sweep trials
    only with `trials`."""
    from stx.comparison.report import compare as build
    from stx.tracking.store import resolve_tracking_uri

    if runs not in ("registry", "all"):
        raise StxError(f"runs: expected 'registry' or 'all', got {runs!r}")
    return build(resolve_tracking_uri(tracking_uri), Path(out) if out else None, experiment=experiment, runs=runs,
                 allow_mixed=allow_mixed, projection=projection, log_run=log_run, trials=trials)


def sweep(variant: str, n_trials: int, config: str | Path | None = None, overrides: Overrides = None, *,
          storage: str | None = None, study: str | None = None, workers: int = 1, timeout: float | None = None,
          sampler: str = "tpe", pruner: str = "median", tracking_uri: str | None = None,
          experiment: str | None = None, new: bool = False) -> SweepSummary:
    """An Optuna study over the variant's hyperparameters; joins `study` if it exists (`stx sweep`)."""
    from stx.sweeps.study import SweepRequest, run_sweep
    from stx.tracking.store import resolve_tracking_uri
    from stx.variants import resolve_variant

    name = resolve_variant(variant).name
    if name == "baseline":
        raise StxError("the baseline variant has nothing to tune; sweep lora or another fine-tuning variant")
    extra = as_overrides(overrides)
    load(config, extra)  # config errors before anything is created
    return run_sweep(SweepRequest(name, n_trials, str(config) if config else None, extra, storage, study, workers,
                                  timeout, sampler, pruner, not new, resolve_tracking_uri(tracking_uri), experiment))


def predict(model: str, data: str | Path, out: str | Path, condition: str | None = None, time: str | None = None,
            *, tracking_uri: str | None = None) -> PredictResult:
    """Predict the perturbed state of every control cell of `data` (`stx predict`) into `out`."""
    from stx.evaluate.inference import load_model_uri, predict_file
    from stx.tracking.store import resolve_tracking_uri

    out = Path(out)
    if out.suffix != ".h5ad":
        raise StxError(f"{out}: the output file must end in .h5ad")
    package = load_model_uri(str(model), resolve_tracking_uri(tracking_uri))
    return predict_file(package, Path(data), out, condition, time)
