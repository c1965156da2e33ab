"""`stx sweep`: an Optuna study whose trials are ordinary stx runs, nested under one parent
MLflow run, over any Optuna RDB storage (sqlite by default, PostgreSQL for teams)."""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import lightning as L

from stx.errors import StxError
from stx.tracking.run import RunPruned
from stx.tracking.store import DEFAULT_DIR, mask_secrets

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "random", "cmaes")
PRUNERS = ("median", "hyperband", "none")


@dataclass(frozen=True)
class SweepRequest:
    """Everything a worker process needs (picklable)."""

    variant: str
    n_trials: int
    config_path: str | None = None
    overrides: tuple[str, ...] = ()
    storage: str | None = None
    study: str | None = None
    workers: int = 1
    timeout: float | None = None
    sampler: str = "tpe"
    pruner: str = "median"
    resume: bool = False  # join an existing study of that name (the CLI default)
    tracking_uri: str = ""
    experiment: str | None = None


@dataclass(frozen=True)
class SweepSummary:
    """What a finished study produced."""

    study: str
    storage: str
    parent_run_id: str
    n_trials: dict[str, int]
    best_value: float | None
    best_params: dict[str, object]
    best_run_id: str | None
    champion: str | None
    seconds: float


def default_storage() -> str:
    """`sqlite:///mlruns/optuna.db`, next to the embedded MLflow store."""
    root = DEFAULT_DIR.resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'optuna.db'}"


SCHEMA_RACE_TRIES = 5  # opens of Optuna's storage while another process may be creating its tables


def make_storage(url: str):  # noqa: ANN201 - optuna.storages.RDBStorage
    """Optuna RDB storage with heartbeats: trials of a dead worker are failed and retried once."""
    import inspect

    from optuna import storages
    from optuna.exceptions import ExperimentalWarning

    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    attempt = 0
    while True:
        attempt += 1
        try:
            # heartbeats are "experimental" in Optuna's words; Optuna >= 4.9 renamed the stale-trial
            # hook, and older releases within our bounds have the old name
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                if "heartbeat_stale_trial_callback" in inspect.signature(storages.RDBStorage).parameters:
                    retry = {"heartbeat_stale_trial_callback": storages.RetryHeartbeatStaleTrialCallback(max_retry=1)}
                else:
                    retry = {"failed_trial_callback": storages.RetryFailedTrialCallback(max_retry=1)}
                return storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=20, grace_period=60,
                                           **retry)
        except Exception as err:
            # Optuna creates its tables without a lock: two sweeps started together on a fresh
            # database race, and the loser sees a duplicate type or table; by the next try the
            # winner has made them and opening them is all that is left
            if attempt < SCHEMA_RACE_TRIES and _schema_race(err):
                time.sleep(0.5 * attempt)
                continue
            first = mask_secrets(str(err)).splitlines()[0][:200]
            raise StxError(f"Optuna storage {mask_secrets(url)} is not reachable ({err.__class__.__name__}: "
                           f"{first}); check --storage") from None


def _schema_race(err: BaseException) -> bool:
    """True for the errors a concurrent first creation of Optuna's tables gives the loser."""
    text = str(err)
    return type(err).__name__ in {"IntegrityError", "ProgrammingError", "OperationalError"} and any(
        sign in text for sign in ("already exists", "duplicate key", "UniqueViolation"))


def make_sampler(name: str, seed: int):  # noqa: ANN201
    """Seeded sampler by name."""
    import optuna

    return {"tpe": lambda: optuna.samplers.TPESampler(seed=seed),
            "random": lambda: optuna.samplers.RandomSampler(seed=seed),
            "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=seed)}[name]()


def make_pruner(name: str):  # noqa: ANN201
    """Pruner by name; the median pruner waits for 2 finished trials and 1 validation."""
    import optuna

    return {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
            "hyperband": lambda: optuna.pruners.HyperbandPruner(),
            "none": lambda: optuna.pruners.NopPruner()}[name]()


class PruningReporter(L.Callback):
    """Reports each validation loss (the objective's, when it is a validation metric) to the
    trial and stops the run when the pruner says so."""

    def __init__(self, trial, key: str = "val/loss"):  # noqa: ANN001
        self.trial = trial
        self.key = key if key in ("val/loss", "val/energy_loss") else "val/loss"

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.key)
        if value is None or trainer.sanity_checking:
            return
        step = trainer.global_step
        self.trial.report(float(value), step)
        if self.trial.should_prune():
            raise RunPruned(f"pruned by the sweep at step {step} ({self.key} {float(value):.4f})")


def objective(req: SweepRequest, parent_run_id: str, trial) -> float:  # noqa: ANN001
    """One trial = one `run_experiment` with sampled overrides; returns the objective metric."""
    import optuna
    from mlflow import MlflowClient

    from stx.config import load_config
    from stx.experiment import run_experiment
    from stx.sweeps.space import as_overrides, search_space, suggest
    from stx.variants import resolve_variant

    start = time.perf_counter()
    base = load_config(req.config_path, req.overrides)
    values = suggest(trial, search_space(resolve_variant(req.variant), base.sweep.params, base.sweep.fixed))
    # trials keep their model package locally; only the best one is registered, when the study ends;
    # their cell figure is a PCA unless the config asks for UMAP by name (UMAP's cost is per trial)
    quick = ["tracking.projection=pca"] if base.tracking.projection == "auto" else []
    cfg = load_config(req.config_path, [*req.overrides, *as_overrides(base.sweep.fixed), *as_overrides(values),
                                        "tracking.register_model=false", *quick])
    callbacks = (PruningReporter(trial, base.sweep.objective),) if req.pruner != "none" else ()
    try:
        summary = run_experiment(cfg, req.variant, req.tracking_uri, experiment=req.experiment, progress=False,
                                 parent_run_id=parent_run_id, callbacks=callbacks, checked=_checked(cfg, req.variant),
                                 extra_tags={"stx.study": str(req.study), "stx.trial": str(trial.number)})
    except RunPruned:
        raise optuna.TrialPruned() from None
    except Exception as err:
        from stx.tracking.store import describe_error

        trial.set_user_attr("error", describe_error(err, 200))
        raise
    trial.set_user_attr("mlflow_run_id", summary.run_id)
    trial.set_user_attr("wall_time_s", time.perf_counter() - start)  # the whole trial, setup included
    # the run's own values first: they exist even when the store was away and the run held them
    metrics = {**summary.metrics, **summary.reference}
    if base.sweep.objective not in metrics and not summary.held:
        metrics = MlflowClient(req.tracking_uri).get_run(summary.run_id).data.metrics
    if base.sweep.objective not in metrics:
        raise StxError(f"sweep.objective '{base.sweep.objective}' was not logged by run {summary.run_id}")
    return float(metrics[base.sweep.objective])


# What preflight builds (data, velocity, split, test design) depends on the data and the
# inputs, not on what a sweep varies: a worker builds it once and its trials reuse it.
_CHECKED: dict[str, object] = {}


def _checked(cfg, variant_name: str):  # noqa: ANN001
    from stx.preflight import preflight, preflight_key
    from stx.variants import resolve_variant

    velocity = resolve_variant(variant_name).velocity
    key = preflight_key(cfg, velocity)
    if key not in _CHECKED:
        _CHECKED.clear()  # one data set held per worker
        _CHECKED[key] = preflight(cfg, velocity=velocity)
    return _CHECKED[key]


def _worker(req: SweepRequest, parent_run_id: str, storage_url: str, seed: int) -> None:
    """Run trials until the study has `n_trials` (shared across workers and machines)."""
    import optuna
    from optuna.study import MaxTrialsCallback

    # Optuna prints a traceback for every failed trial; stx says it in one line (the trial's
    # MLflow run holds the error and its traceback)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name=req.study, storage=make_storage(storage_url),
                              sampler=make_sampler(req.sampler, seed), pruner=make_pruner(req.pruner))
    try:
        study.optimize(partial(objective, req, parent_run_id), timeout=req.timeout, catch=(Exception,),
                       callbacks=[MaxTrialsCallback(req.n_trials, states=None), _report_failure])
    finally:
        _CHECKED.clear()


def _report_failure(study, trial) -> None:  # noqa: ANN001 - Optuna's callback signature
    import optuna

    if trial.state == optuna.trial.TrialState.FAIL:
        log.warning("trial %d failed: %s", trial.number, trial.user_attrs.get("error", "see its MLflow run"))


def _spawned_worker(req: SweepRequest, parent_run_id: str, storage_url: str, seed: int) -> None:
    from stx.api import setup_logging

    setup_logging(False)
    _share_cpus(req.workers)
    _worker(req, parent_run_id, storage_url, seed)


def _share_cpus(workers: int) -> None:
    """Give each of `workers` processes its share of the cores: each would otherwise start one
    torch thread per core, and oversubscribed threads make the workers together several
    times slower than one (measured: 4 runs on 2 cores took 58 s instead of 24 s). An
    explicit OMP_NUM_THREADS wins."""
    import torch

    if "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // workers))


def run_sweep(req: SweepRequest) -> SweepSummary:
    """Create (or resume) the study, run the workers under a parent MLflow run, summarise."""
    import optuna

    from stx.config import load_config
    from stx.tracking.lineage import active_params
    from stx.tracking.run import tracked_run
    from stx.variants import resolve_variant

    start = time.perf_counter()
    cfg = load_config(req.config_path, req.overrides)
    storage_url = req.storage or default_storage()
    study_name = req.study or f"{req.variant}-{time.strftime('%Y%m%d-%H%M%S')}"
    req = SweepRequest(**{**req.__dict__, "study": study_name, "storage": storage_url,
                          "experiment": req.experiment or cfg.experiment_name()})
    storage = make_storage(storage_url)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    exists = study_name in {s.study_name for s in optuna.get_all_study_summaries(storage)}
    if exists and not req.resume:
        raise StxError(f"study '{study_name}' already exists in {mask_secrets(storage_url)}; drop --new to join it "
                       f"or choose another --study")
    if exists:
        log.info("joining study '%s' in %s", study_name, mask_secrets(storage_url))
    study = optuna.create_study(study_name=study_name, storage=storage, load_if_exists=True,
                                direction=cfg.sweep.resolved_direction(),
                                sampler=make_sampler(req.sampler, cfg.trainer.seed), pruner=make_pruner(req.pruner))
    if study.metric_names != [cfg.sweep.objective]:  # named in Optuna's dashboards and in stx's study plots
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([cfg.sweep.objective])
    tags = {"stx.kind": "sweep", "stx.study": study_name, "stx.storage": mask_secrets(storage_url),
            "stx.sweep_variant": req.variant}
    params = {"sweep.variant": req.variant, "sweep.n_trials": str(req.n_trials), "sweep.sampler": req.sampler,
              "sweep.pruner": req.pruner, "sweep.workers": str(req.workers), "sweep.objective": cfg.sweep.objective,
              "sweep.direction": study.direction.name.lower(),
              **{f"config.{k}": v for k, v in active_params(cfg, resolve_variant(req.variant)).items()
                 if not k.startswith("tracking.")}}
    with tracked_run(req.tracking_uri, req.experiment, f"sweep-{study_name}", tags, params) as parent:
        if req.workers <= 1:
            _worker(req, parent.run_id, storage_url, cfg.trainer.seed)
        else:
            context = multiprocessing.get_context("spawn")
            procs = [context.Process(target=_spawned_worker, args=(req, parent.run_id, storage_url,
                                                                   cfg.trainer.seed + k)) for k in range(req.workers)]
            for p in procs:
                p.start()
            for p in procs:
                p.join()
            failed = [p.exitcode for p in procs if p.exitcode != 0]
            if failed:
                raise RuntimeError(f"{len(failed)} sweep worker(s) exited with codes {failed}")
        study = optuna.load_study(study_name=study_name, storage=storage)
        return _summarise(study, req, parent, storage_url, start)


def _register_best(req: SweepRequest, run_id: str) -> str | None:
    """Register the best trial's model (trials do not register theirs, so the registry holds
    one version per sweep, not one per trial)."""
    from mlflow import MlflowClient

    from stx.experiment import register
    from stx.tracking.run import tracked_run
    from stx.variants import resolve_variant

    client = MlflowClient(req.tracking_uri, registry_uri=req.tracking_uri)
    run = client.get_run(run_id)
    # a second worker (or a rejoined sweep) that finds the same best trial reuses its version
    model = f"stx-{resolve_variant(req.variant).name}"
    existing = _versions_of(client, model, run_id)
    if existing:
        return str(existing[0])
    package = Path(run.data.tags.get("stx.output_dir", "")) / "model_package"
    if not (package / "model.json").is_file():
        log.warning("the best trial's model package %s is not on this machine (the trial ran elsewhere): register it "
                    "there with stx.experiment.register, or rerun the trial's config with stx run", package)
        return None
    name = client.get_experiment(run.info.experiment_id).name
    with tracked_run(req.tracking_uri, name, run.info.run_name, {}, {}, existing_run_id=run_id) as handle:
        version = register(package, handle, resolve_variant(req.variant))
        if version is None:
            return None
        kept = _one_version_per_run(client, model, run_id, version)
        if kept != version:
            handle.set_tags({"stx.registered_model": f"models:/{model}/{kept}"})
        return kept


def _versions_of(client, model: str, run_id: str) -> list[int]:  # noqa: ANN001
    """The versions of `model` registered from run `run_id`, oldest first."""
    return sorted(int(v.version) for v in client.search_model_versions(f"name = '{model}' and run_id = '{run_id}'"))


def _one_version_per_run(client, model: str, run_id: str, ours: str) -> str:  # noqa: ANN001
    """Two workers that finish together can both find the same best trial unregistered and both
    register it (the registry has no compare-and-set): the lower version stays, and the worker
    that made the other deletes its own. Returns the version that stays."""
    from mlflow.exceptions import MlflowException

    versions = _versions_of(client, model, run_id)
    first = str(versions[0]) if versions else ours
    if first != ours:
        try:
            client.delete_model_version(model, ours)
        except MlflowException as err:
            log.warning("version %s of %s registers the same trial as version %s and could not be deleted (%s); "
                        "delete it in the MLflow UI", ours, model, first, str(err).splitlines()[0][:200])
    return first


def _summarise(study, req: SweepRequest, parent, storage_url: str, start: float) -> SweepSummary:  # noqa: ANN001
    import optuna
    from mlflow import MlflowClient

    from stx.sweeps.plots import study_plots

    states = {s.name: 0 for s in optuna.trial.TrialState}
    for t in study.trials:
        states[t.state.name] += 1
    out = Path(req.tracking_uri.removeprefix("sqlite:///")).parent / "sweeps" / study.study_name \
        if req.tracking_uri.startswith("sqlite:///") else Path("stx_outputs") / "sweeps" / study.study_name
    out.mkdir(parents=True, exist_ok=True)
    study.trials_dataframe().to_csv(out / "trials.csv", index=False)
    study_plots(study, out)
    parent.log_artifact(out, "sweep")
    parent.log_metrics({f"trials/{k.lower()}": v for k, v in states.items() if v})
    best_value = best_run = champion = None
    best_params: dict[str, object] = {}
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if completed:
        best = study.best_trial
        best_value, best_params = best.value, dict(best.params)
        best_run = best.user_attrs.get("mlflow_run_id")
        parent.log_metrics({"best_value": best_value})
        parent.log_params({f"best.{k}": str(v) for k, v in best_params.items()})
        version = _register_best(req, best_run) if best_run else None
        if version:
            from stx.tracking.registry import CHAMPION, champion_alias
            from stx.variants import resolve_variant

            name = f"stx-{resolve_variant(req.variant).name}"
            client = MlflowClient(req.tracking_uri, registry_uri=req.tracking_uri)
            client.set_registered_model_alias(name, CHAMPION, version)
            client.set_registered_model_alias(name, champion_alias(parent.experiment_id), version)
            champion = f"models:/{name}@champion (version {version})"
        parent.set_tags({"stx.best_run": best_run or "", "stx.champion": champion or ""})
    return SweepSummary(study.study_name, mask_secrets(storage_url), parent.run_id,
                        {k: v for k, v in states.items() if v}, best_value, best_params, best_run, champion,
                        time.perf_counter() - start)
