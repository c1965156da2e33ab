"""`run_experiment(cfg, variant)`: the only place that wires config, data, model, training,
tracking and evaluation together. `stx run` and `stx sweep` trials both call it."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from stx import __version__
from stx.config import Config, to_toml
from stx.data.covariates import CovariatePlan
from stx.data.load import CellTable, file_sha256
from stx.data.split import Split
from stx.errors import StxError
from stx.evaluate.design import TestDesign
from stx.evaluate.predict import Predictions
from stx.preflight import Checked, preflight
from stx.tracking.buffer import MetricBuffer
from stx.tracking.lineage import active_params, dataset_inputs, run_description, standard_tags
from stx.tracking.outbox import FILENAME as OUTBOX
from stx.tracking.outbox import Outbox
from stx.variants import Variant, resolve_variant

log = logging.getLogger(__name__)

RUN_DIR_ENV = "STX_RUN_DIR"  # tells DDP worker processes where rank 0 keeps checkpoints


@dataclass(frozen=True)
class RunSummary:
    """What a finished run produced."""

    run_id: str
    run_name: str
    experiment: str
    tracking_uri: str
    artifact_uri: str
    metrics: dict[str, float]
    reference: dict[str, float]
    model_version: str | None
    variant: str
    wall_time_s: float
    held: str | None = None  # the outbox, when the store did not take everything (`stx sync` it)

    @property
    def model_uri(self) -> str | None:
        """`models:/stx-<variant>/<version>` of the registered model (None when not registered)."""
        return f"models:/stx-{self.variant}/{self.model_version}" if self.model_version else None


def _is_worker() -> bool:
    """True in a DDP process other than rank 0 (Lightning starts them with LOCAL_RANK set)."""
    return int(os.environ.get("LOCAL_RANK", "0")) != 0 or int(os.environ.get("NODE_RANK", "0")) != 0


def _git_commit(where: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _data_digest(table: CellTable) -> str:
    digests = [file_sha256(f) for f in table.files]
    if len(digests) == 1:
        return digests[0]
    import hashlib

    return hashlib.sha256("".join(digests).encode()).hexdigest()


def build_model(cfg: Config, variant: Variant, table: CellTable, plan: CovariatePlan) -> torch.nn.Module:
    """Pretrained checkpoint -> new vocabularies and covariate inputs -> fine-tuning modules -> freezing."""
    from stx.model.adapt import adapt_to_data
    from stx.model.checkpoint import load_pretrained
    from stx.model.lora import apply_lora, freeze_for_finetuning
    from stx.model.mhc import apply_mhc
    from stx.model.st import StateTransition

    relu = None if cfg.model.output_relu == "auto" else bool(cfg.model.output_relu)
    # the baseline is the pretrained function exactly: its gate stays closed
    model = adapt_to_data(load_pretrained(cfg.model.checkpoint), table.spec, output_relu=relu,
                          covariates=plan.spec, cell_skip=cfg.model.cell_skip,
                          cell_skip_init=cfg.model.cell_skip_init if variant.lora else 0.0,
                          time_axis=plan.time and cfg.model.time_encoding == "axis")
    if variant.scratch:  # the same architecture from a random start, every weight trained
        model = StateTransition(model.spec)
        for name, param in model.named_parameters():
            param.requires_grad_(not name.endswith("embed_tokens.weight"))
        return model
    if variant.mhc:  # wrap before LoRA: peft's suffix matching still finds q_proj inside `block`
        apply_mhc(model.transformer_backbone, cfg.model.mhc)
    if variant.lora:
        apply_lora(model, cfg.model.lora)
        freeze_for_finetuning(model, cfg.model.lora.train_head)
    else:
        model.requires_grad_(False)
    return model


@dataclass(frozen=True, eq=False)
class Prepared:
    """Everything a run builds before training: data, split, test design, inputs, model, losses."""

    table: CellTable
    split: Split
    design: TestDesign
    plan: CovariatePlan
    model: torch.nn.Module
    aux: tuple


def run_experiment(cfg: Config, variant_name: str, tracking_uri: str, experiment: str | None = None,
                   devices: int | None = None, progress: bool = True, parent_run_id: str | None = None,
                   extra_tags: dict[str, str] | None = None, callbacks: tuple = (),
                   checked: Checked | None = None) -> RunSummary | None:
    """Train (unless baseline), evaluate on the held-out split, and track everything.

    `parent_run_id` nests the run (sweep trials); `callbacks` are extra Lightning callbacks
    (a sweep's pruning reporter); `checked` is what `stx.preflight` already built for this
    data (reused, not rebuilt). Returns None in DDP worker processes, which only train.
    """

    variant = resolve_variant(variant_name)
    start = time.perf_counter()
    prep = _prepare(cfg, variant, checked)

    if _is_worker():
        _train(cfg, prep, Path(os.environ[RUN_DIR_ENV]), devices, None, False, True)
        return None

    from stx.model.st import count_parameters
    from stx.tracking.run import tracked_run

    trainable, total = count_parameters(prep.model)
    experiment = experiment or cfg.experiment_name()
    run_name = f"{variant.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    table = prep.table
    tags = {
        "stx.variant": variant.name,
        "stx.version": __version__,
        "stx.dataset": ",".join(f.name for f in table.files),
        "stx.data_sha256": _data_digest(table),
        "stx.config": cfg.source,
        "stx.split": prep.split.mode,
        "stx.config_digest": config_digest(cfg, variant),
        "stx.steps": str(cfg.trainer.max_steps if variant.train else 0),
    }
    where = Path(cfg.source).parent if not cfg.source.startswith("<") else Path.cwd()
    commit = _git_commit(where)
    if commit:
        tags["stx.git_commit"] = commit
    tags.update(standard_tags(commit, run_description(cfg, variant, table)))
    params = {**active_params(cfg, variant), "variant": variant.name, "n_trainable_params": str(trainable),
              "n_total_params": str(total)}
    tags.update(extra_tags or {})

    with tracked_run(tracking_uri, experiment, run_name, tags, params, parent_run_id,
                     system_metrics=cfg.tracking.system_metrics) as run:
        run.client.log_inputs(run.run_id, datasets=dataset_inputs(table, prep.split, cfg))
        out_dir = Path(cfg.tracking.output_dir).resolve() / run.run_id
        out_dir.mkdir(parents=True, exist_ok=True)
        run.outbox = Outbox(out_dir / OUTBOX, run.run_id)
        # what --resume needs, recorded before the first step: the config and the run folder
        (out_dir / "config").mkdir(exist_ok=True)
        (out_dir / "config" / "resolved.toml").write_text(to_toml(cfg))
        run.log_artifact(out_dir / "config" / "resolved.toml", "config")
        run.set_tags({"stx.output_dir": str(out_dir)})
        run.log_metrics({"trainable_fraction": trainable / total})
        metrics, reference, version = _execute(cfg, variant, prep, run, out_dir, devices, progress, callbacks, start)
        artifact_uri = run.artifact_uri()
    return RunSummary(run.run_id, run_name, experiment, tracking_uri, artifact_uri, metrics, reference,
                      version, variant.name, time.perf_counter() - start, _held(run))


def _held(run) -> str | None:  # noqa: ANN001
    return str(run.outbox.path) if run.pending else None


def _prepare(cfg: Config, variant: Variant, checked: Checked | None = None) -> Prepared:
    """Seed, then data, split, test design, inputs (`stx.preflight`, unless already
    `checked`), model and loss terms: identical for a fresh and a resumed run, and every data
    error surfaces here, before training."""
    from stx.train.sets import check_memory, seed_everything

    seed_everything(cfg.trainer.seed)
    if checked is None or (variant.velocity and checked.table.velocity is None):
        checked = preflight(cfg, velocity=variant.velocity)
    table, split, plan, design = checked.table, checked.split, checked.plan, checked.design
    model = build_model(cfg, variant, table, plan)
    backbone = model.transformer_backbone.config
    check_memory(cfg.trainer, backbone.hidden_size, backbone.num_hidden_layers, backbone.num_attention_heads)
    return Prepared(table, split, design, plan, model, velocity_terms(cfg, variant, table))


def _execute(cfg, variant, prep: Prepared, run, out_dir, devices, progress, callbacks, start,  # noqa: ANN001
             resume_from: Path | None = None, skip_logged: dict[str, int] | None = None):
    """Train, evaluate, log artifacts and register, inside an open run."""
    os.environ[RUN_DIR_ENV] = str(out_dir)
    sink = run.send_rows
    if skip_logged:  # a resumed run: steps already in the store are not sent twice
        def sink(rows):  # noqa: ANN001
            run.send_rows([r for r in rows if r[2] > skip_logged.get(r[0], -1)])
    buffer = MetricBuffer(sink=sink, background=True)
    # the baseline variant is the pretrained model: its own predictions are the reference
    baseline = _baseline_predictions(cfg, variant, prep) if variant.train else None
    try:
        fit_result = _train(cfg, prep, out_dir, devices, buffer, progress, variant.train, callbacks, resume_from)
    except BaseException:  # keep what the failed run did log; do not keep a user waiting after Ctrl-C
        _settle_metrics(buffer, run, min(cfg.tracking.outage_grace_s, 10.0))
        raise
    _settle_metrics(buffer, run, cfg.tracking.outage_grace_s)
    metrics, reference = _evaluate_and_log(cfg, variant, prep, run, out_dir, buffer, fit_result, start, baseline,
                                           skip_logged or {})
    package = _package(cfg, variant, prep, out_dir)  # kept locally even unregistered: a sweep registers its best
    version = register(package, run, variant) if cfg.tracking.register_model else None
    return metrics, reference, version


def _baseline_predictions(cfg: Config, variant: Variant, prep: Prepared) -> Predictions:
    """The pretrained model's test predictions (the `baseline` reference of every run), made
    before training: LoRA, covariate inputs and mHC all start as the identity, so the model
    is still the pretrained function; a scratch model is not, so it gets its own copy."""
    from stx.evaluate.pipeline import device
    from stx.evaluate.predict import predict_tasks
    from stx.variants import VARIANTS

    model = build_model(cfg, VARIANTS["baseline"], prep.table, prep.plan) if variant.scratch else prep.model
    return predict_tasks(model.to(device()), prep.table, prep.design.tasks, int(model.spec.cell_set_len), prep.plan,
                         device())


def _settle_metrics(buffer: MetricBuffer, run, grace_s: float) -> None:  # noqa: ANN001
    """Give an unreachable store `grace_s` seconds to come back, then hold the rest locally."""
    if buffer.down_since is not None:
        log.warning("waiting up to %.0f s for the tracking store to answer (tracking.outage_grace_s)", grace_s)
    rest = buffer.close(grace_s)
    if rest:
        run.go_offline(f"{len(rest)} metric values not accepted within {grace_s:.0f} s")
        run.hold(rest)


def resume_experiment(run_ref: str, tracking_uri: str, devices: int | None = None,
                      experiment: str | None = None) -> RunSummary:
    """Continue a killed run (`RUN_ID` or `last`) from its newest checkpoint, into the same MLflow run."""
    import tempfile

    from stx.config import load_config
    from stx.tracking.run import connect, tracked_run

    client = connect(tracking_uri)
    run = _find_resumable(client, run_ref, experiment)
    tags = run.data.tags
    variant = resolve_variant(tags["stx.variant"])
    out_dir = Path(tags.get("stx.output_dir", ""))
    if (out_dir / OUTBOX).exists():
        raise StxError(f"run {run.info.run_id} finished training; its records wait in {out_dir / OUTBOX}: send them "
                       f"with 'stx sync {out_dir}'")
    ckpt = out_dir / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise StxError(f"run {run.info.run_id} has no checkpoint to resume from ({ckpt}); it stopped before its "
                       f"first checkpoint (trainer.checkpoint_every_n_steps): close it with 'stx run --abandon "
                       f"{run.info.run_id}' and start again")
    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(run.info.run_id, "config/resolved.toml", tmp)
        cfg = load_config(local)
    start = time.perf_counter()
    prep = _prepare(cfg, variant)
    logged = {key: max((m.step for m in client.get_metric_history(run.info.run_id, key)), default=-1)
              for key in run.data.metrics}
    name = client.get_experiment(run.info.experiment_id).name
    log.info("resuming %s (%s) from %s", run.info.run_id, variant.name, ckpt)
    with tracked_run(tracking_uri, name, run.info.run_name, {}, {}, existing_run_id=run.info.run_id) as handle:
        handle.outbox = Outbox(out_dir / OUTBOX, handle.run_id)
        metrics, reference, version = _execute(cfg, variant, prep, handle, out_dir, devices, True, (), start,
                                               resume_from=ckpt, skip_logged=logged)
        artifact_uri = handle.artifact_uri()
    return RunSummary(run.info.run_id, run.info.run_name, name, tracking_uri, artifact_uri, metrics, reference,
                      version, variant.name, time.perf_counter() - start, _held(handle))


def abandon_run(run_ref: str, tracking_uri: str, experiment: str | None = None) -> str:
    """End a run that cannot be resumed (killed before its first checkpoint, or its machine
    gone) as KILLED, with the reason in `stx.error`; returns its id."""
    from stx.tracking.run import connect

    client = connect(tracking_uri)
    run = _find_resumable(client, run_ref, experiment)
    client.set_tag(run.info.run_id, "stx.error", "abandoned with stx run --abandon (it could not be resumed)")
    client.set_terminated(run.info.run_id, "KILLED")
    return run.info.run_id


def _find_resumable(client, run_ref: str, experiment: str | None):  # noqa: ANN001
    from mlflow.exceptions import MlflowException

    if run_ref != "last":
        try:
            run = client.get_run(run_ref)
        except MlflowException:
            raise StxError(f"--resume {run_ref}: no such run in this tracking store") from None
    else:
        exps = [client.get_experiment_by_name(experiment)] if experiment else client.search_experiments()
        ids = [e.experiment_id for e in exps if e is not None]
        found = client.search_runs(ids, "tags.`stx.variant` != '' and attributes.status != 'FINISHED'",
                                   max_results=1, order_by=["attributes.start_time DESC"]) if ids else []
        if not found:
            raise StxError("--resume last: no unfinished stx run to resume")
        run = found[0]
    if run.info.status == "FINISHED":
        raise StxError(f"run {run.info.run_id} already finished; nothing to resume")
    if "stx.variant" not in run.data.tags:
        raise StxError(f"run {run.info.run_id} was not made by stx run")
    return run


def velocity_terms(cfg: Config, variant: Variant, table: CellTable) -> tuple:
    """The velocity loss term of the velocity variants (empty otherwise)."""
    from stx.train.objective import velocity_term

    if not variant.velocity:
        return ()
    vcfg = cfg.model.velocity
    use_magnitude = vcfg.mu > 0 and (table.velocity_calibrated or vcfg.force_magnitude)
    if vcfg.mu > 0 and not use_magnitude:
        log.warning("the velocity comes from scVelo's transition-matrix projection (unit displacements), so its "
                    "magnitude is not calibrated: the magnitude term (model.velocity.mu = %g) is off; set "
                    "model.velocity.force_magnitude = true to keep it", vcfg.mu)
    if vcfg.warmup_steps >= cfg.trainer.max_steps:
        log.warning("model.velocity.warmup_steps (%d) >= trainer.max_steps (%d): the velocity term never reaches "
                    "model.velocity.lambda (it ends at %.0f%% of it)", vcfg.warmup_steps, cfg.trainer.max_steps,
                    100 * cfg.trainer.max_steps / max(vcfg.warmup_steps, 1))
    return (velocity_term(vcfg, use_magnitude, table.spec.control_index),)


def _train(cfg: Config, prep: Prepared, out_dir: Path, devices: int | None, buffer: MetricBuffer | None,
           progress: bool, train: bool = True, callbacks: tuple = (), resume_from: Path | None = None):
    from stx.tracking.buffer import MetricBuffer
    from stx.train.sets import SetSource, make_loaders

    buffer = buffer or MetricBuffer()
    vcfg = cfg.model.velocity
    source = SetSource(vcfg.source, prep.plan, unseen_tasks=bool(prep.aux) and vcfg.unseen_groups)
    if not train:  # the baseline: one validation of the pretrained model, and no training stack imported
        from stx.evaluate.pipeline import device
        from stx.train.objective import validation_loss

        _, val_loader = make_loaders(prep.table, prep.split, cfg.trainer, source)
        if val_loader is not None:
            loss, energy = validation_loss(prep.model.to(device()), list(val_loader), prep.aux, 0, device())
            buffer.add_many({"val/loss": loss, "val/energy_loss": energy}, 0)
            buffer.flush()
        return None
    from stx.model.mhc import mhc_layers
    from stx.train.callbacks import MHCMonitor
    from stx.train.fit import fit
    from stx.train.module import STSystem

    system = STSystem(prep.model, cfg.trainer, buffer, aux=prep.aux)

    layers = mhc_layers(prep.model)
    extra = (MHCMonitor(system.buffer, layers, cfg.trainer.log_every_n_steps),) if layers else ()
    extra = (*extra, *callbacks)
    return fit(system, prep.table, prep.split, cfg.trainer, out_dir, devices=devices, progress=progress,
               extra_callbacks=extra, source=source, resume_from=resume_from)


def _evaluate_and_log(cfg, variant, prep: Prepared, run, out_dir, buffer, fit_result, start,  # noqa: ANN001
                      baseline: Predictions, logged: dict[str, int]) -> tuple[dict[str, float], dict[str, float]]:
    from stx.data.builtin import write_h5ad_atomic
    from stx.evaluate.pipeline import cell_figure, evaluate_run
    from stx.evaluate.plots import plot_curves
    from stx.evaluate.report import predictions_anndata
    from stx.train.stability import stability_summary

    table, split = prep.table, prep.split
    result = evaluate_run(prep.model, table, split, prep.design, prep.plan, cfg, baseline,
                          set_len(cfg, variant, prep.model))
    summary = {**result.metrics, **result.reference}
    summary.update(stability_summary(buffer.values("grad_norm/global"), buffer.values("train/loss"),
                                     cfg.trainer.grad_clip))
    if fit_result is not None:
        summary["train/wall_time_s"] = fit_result.wall_time_s
        if np.isfinite(fit_result.best_val):
            summary["val/best_loss"] = fit_result.best_val
    summary["run/wall_time_s"] = time.perf_counter() - start
    # at step 0: the MLflow UI draws step-0 metrics as bars per run and per group; a resumed
    # run that got this far before logs none of them twice
    run.log_metrics({k: v for k, v in summary.items() if k not in logged}, step=0)

    data_dir = out_dir / "data"
    data_dir.mkdir(exist_ok=True)
    split.frame(table).to_csv(data_dir / "split.csv", index=False)
    run.log_artifact(data_dir / "split.csv", "data")

    eval_dir = out_dir / "eval"
    eval_dir.mkdir(exist_ok=True)
    result.by_group.to_csv(eval_dir / "metrics_by_group.csv", index=False)
    run.log_artifact(eval_dir / "metrics_by_group.csv", "eval")
    pred_dir = out_dir / "predictions"
    pred_dir.mkdir(exist_ok=True)
    # the model this run logs (registered later, under stx.registered_model) loads by this URI
    provenance = {"run_id": run.run_id, "model_uri": f"runs:/{run.run_id}/model" if cfg.tracking.register_model
                  else "", "variant": variant.name, "stx_version": __version__}
    write_h5ad_atomic(predictions_anndata(table, result.predictions, cfg.data, provenance),
                      pred_dir / "predictions.h5ad")
    run.log_artifact(pred_dir / "predictions.h5ad", "predictions")

    ckpt_dir = out_dir / "checkpoints"
    ckpt_dir.mkdir(exist_ok=True)
    if fit_result is None:  # baseline: the adapted pretrained weights are the checkpoint
        torch.save({"state_dict": prep.model.state_dict(), "stx_variant": variant.name}, ckpt_dir / "last.ckpt")
    for name in ("last.ckpt", "best.ckpt"):
        if (ckpt_dir / name).exists():
            run.log_artifact(ckpt_dir / name, "checkpoints")

    plots = out_dir / "plots"
    plots.mkdir(exist_ok=True)
    history = buffer.history
    shown = f"run {run.run_id[:8]} ({variant.name}, seed {cfg.trainer.seed})"
    plot_curves(history, ["train/loss", "val/loss", "val/energy_loss"], plots / "loss.png",
                f"{variant.name}: loss on training and validation sets", subtitle=shown)
    clip = cfg.trainer.grad_clip
    plot_curves(history, ["grad_norm/global"], plots / "grad_norm.png",
                f"{variant.name}: global gradient norm (before clipping)", log_y=True,
                hline=(clip, f"clipping threshold {clip:g}") if clip else None, subtitle=shown)
    cell_figure(table, prep.design, result.predictions, cfg, plots, subtitle=shown)
    run.log_artifact(plots, "plots")
    run.log_images(sorted(plots.glob("*.png")))
    return result.metrics, result.reference


def _package(cfg: Config, variant: Variant, prep: Prepared, out_dir: Path) -> Path:
    """The inference package (LoRA merged, what predicting needs) in the run's folder."""
    from stx.model.lora import merge_lora
    from stx.model.package import save_package

    model = merge_lora(prep.model.cpu().eval())
    spec = prep.table.spec
    meta = {
        "variant": variant.name, "cell_set_len": set_len(cfg, variant, prep.model),
        "embed_key": cfg.data.embed_key, "pert_col": cfg.data.pert_col,
        "control_pert": cfg.data.control_pert, "cell_type_key": cfg.data.cell_type_key,
        "batch_col": cfg.data.batch_col, "time_col": cfg.data.time_col, "stx_version": __version__,
        "covariate_columns": list(prep.plan.names), "time_input": prep.plan.time,
        "cell_types": list(spec.cell_types), "days": list(spec.days), "config_digest": config_digest(cfg, variant),
        "control_time": cfg.data.control_time, "steps": cfg.trainer.max_steps if variant.train else 0,
        "data_sha256": _data_digest(prep.table), "data_files": [f.name for f in prep.table.files],
        "mhc": cfg.model.mhc.model_dump() if variant.mhc else None,
    }
    return save_package(model, meta, out_dir / "model_package")


def register(package: Path, run, variant: Variant) -> str | None:  # noqa: ANN001
    """Register a run's package as `stx-<variant>`, its version tagged with the experiment, data,
    steps and config digest (`stx.tracking.registry`)."""
    import json

    from mlflow.exceptions import MlflowException

    meta = json.loads((package / "model.json").read_text())
    tags = {"stx.variant": variant.name, "stx.experiment": run.experiment_name,
            "stx.experiment_id": run.experiment_id, "stx.data_sha256": meta["data_sha256"],
            "stx.steps": str(meta["steps"]), "stx.config_digest": meta["config_digest"], "stx.run_id": run.run_id}
    description = (f"{variant.name} ({variant.summary}) trained {meta['steps']} steps on "
                   f"{', '.join(meta['data_files'])} in experiment '{tags['stx.experiment']}', run {run.run_id}.")
    name = f"stx-{variant.name}"
    try:
        return run.register_model(package, name, tags, description)
    except MlflowException as err:
        if err.error_code != "PERMISSION_DENIED":  # a 403, as JSON or as auth's plain-text reply
            raise
        # the training and its records are intact: the run stays FINISHED, and says why it has no model
        reason = (f"the tracking server refused to register a version of {name} (permission denied): ask its admin "
                  f"to grant you EDIT on it (docker/team-access.py); the model package is in {package}")
        log.warning("%s", reason)
        run.set_tags({"stx.registration_error": reason})
        return None


def set_len(cfg: Config, variant: Variant, model: torch.nn.Module) -> int:
    """Cells per set when predicting: what the model was trained with. The baseline is the
    checkpoint as it is, so it predicts with the checkpoint's own set size (as arc-state runs it)."""
    return cfg.trainer.cell_set_len if variant.train else int(model.spec.cell_set_len)


def config_digest(cfg: Config, variant: Variant) -> str:
    """12 hex digits naming the settings that change what a run of `variant` learns (its active
    params: not its seed, where it logs, or the sections it does not use, so two baselines that
    differ only in model.lora.r share it): runs of one configuration share it, so comparisons
    can pool their seeds."""
    import hashlib
    import json

    from stx.tracking.lineage import active_params

    flat = {k: v for k, v in active_params(cfg, variant).items()
            if not k.startswith("tracking.") and k not in ("trainer.seed", "trainer.devices")}
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:12]
