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
from stx.config import Config, flatten, to_toml
from stx.data.load import CellTable, file_sha256, load_cells
from stx.data.split import TEST, Split, make_split
from stx.errors import StxError
from stx.tracking.buffer import MetricBuffer
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


def build_model(cfg: Config, variant: Variant, table: CellTable) -> torch.nn.Module:
    """Pretrained checkpoint -> new vocabularies -> fine-tuning modules -> freezing."""
    from stx.model.adapt import adapt_to_data
    from stx.model.checkpoint import load_pretrained
    from stx.model.lora import apply_lora, freeze_for_finetuning
    from stx.model.mhc import apply_mhc

    relu = None if cfg.model.output_relu == "auto" else bool(cfg.model.output_relu)
    model = adapt_to_data(load_pretrained(cfg.model.checkpoint), table.spec, output_relu=relu)
    if variant.mhc:  # wrap before LoRA: peft's suffix matching still finds q_proj inside `block`
        apply_mhc(model.transformer_backbone, cfg.model.mhc)
    if variant.lora:
        apply_lora(model, cfg.model.lora)
        freeze_for_finetuning(model)
    else:
        model.requires_grad_(False)
    return model


def run_experiment(cfg: Config, variant_name: str, tracking_uri: str, experiment: str | None = None,
                   devices: int | None = None, progress: bool = True, parent_run_id: str | None = None,
                   extra_tags: dict[str, str] | None = None, callbacks: tuple = ()) -> RunSummary | None:
    """Train (unless baseline), evaluate on the held-out split, and track everything.

    `parent_run_id` nests the run (sweep trials); `callbacks` are extra Lightning callbacks
    (a sweep's pruning reporter). Returns None in DDP worker processes, which only train.
    """

    variant = resolve_variant(variant_name)
    start = time.perf_counter()
    table, split, model, aux = _prepare(cfg, variant)

    if _is_worker():
        _train(cfg, model, table, split, Path(os.environ[RUN_DIR_ENV]), devices, None, False, True, aux)
        return None

    from stx.model.st import count_parameters
    from stx.tracking.run import tracked_run

    trainable, total = count_parameters(model)
    experiment = experiment or cfg.experiment_name()
    run_name = f"{variant.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    tags = {
        "stx.variant": variant.name,
        "stx.version": __version__,
        "stx.dataset": ",".join(f.name for f in table.files),
        "stx.data_sha256": _data_digest(table),
        "stx.config": cfg.source,
        "stx.split": split.mode,
    }
    where = Path(cfg.source).parent if not cfg.source.startswith("<") else Path.cwd()
    if commit := _git_commit(where):
        tags["stx.git_commit"] = commit
    params = {**flatten(cfg), "variant": variant.name, "n_trainable_params": str(trainable),
              "n_total_params": str(total)}
    tags.update(extra_tags or {})

    with tracked_run(tracking_uri, experiment, run_name, tags, params, parent_run_id) as run:
        out_dir = Path(cfg.tracking.output_dir).resolve() / run.run_id
        out_dir.mkdir(parents=True, exist_ok=True)
        run.outbox = Outbox(out_dir / OUTBOX, run.run_id)
        # what --resume needs, recorded before the first step: the config and the run folder
        (out_dir / "config").mkdir(exist_ok=True)
        (out_dir / "config" / "resolved.toml").write_text(to_toml(cfg))
        run.log_artifact(out_dir / "config" / "resolved.toml", "config")
        run.set_tags({"stx.output_dir": str(out_dir)})
        run.log_metrics({"trainable_fraction": trainable / total})
        metrics, reference, version = _execute(cfg, variant, model, table, split, run, out_dir, devices, progress,
                                               aux, callbacks, start)
        artifact_uri = run.artifact_uri()
    return RunSummary(run.run_id, run_name, experiment, tracking_uri, artifact_uri, metrics, reference,
                      version, variant.name, time.perf_counter() - start, _held(run))


def _held(run) -> str | None:  # noqa: ANN001
    return str(run.outbox.path) if run.pending else None


def _prepare(cfg: Config, variant: Variant) -> tuple[CellTable, Split, torch.nn.Module, tuple]:
    """Seed, then data, split, model and loss terms: identical for a fresh and a resumed run."""
    import lightning as L

    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    table = load_cells(cfg, velocity=variant.velocity)
    split = make_split(table, cfg)
    return table, split, build_model(cfg, variant, table), velocity_terms(cfg, variant, table)


def _execute(cfg, variant, model, table, split, run, out_dir, devices, progress, aux, callbacks, start,  # noqa: ANN001
             resume_from: Path | None = None, skip_logged: dict[str, int] | None = None):
    """Train, evaluate, log artifacts and register, inside an open run."""
    os.environ[RUN_DIR_ENV] = str(out_dir)
    sink = run.send_rows
    if skip_logged:  # a resumed run: steps already in the store are not sent twice
        def sink(rows):  # noqa: ANN001
            run.send_rows([r for r in rows if r[2] > skip_logged.get(r[0], -1)])
    buffer = MetricBuffer(sink=sink, background=True)
    try:
        fit_result = _train(cfg, model, table, split, out_dir, devices, buffer, progress, variant.train, aux,
                            callbacks, resume_from)
    except BaseException:  # keep what the failed run did log; do not keep a user waiting after Ctrl-C
        _settle_metrics(buffer, run, min(cfg.tracking.outage_grace_s, 10.0))
        raise
    _settle_metrics(buffer, run, cfg.tracking.outage_grace_s)
    metrics, reference = _evaluate_and_log(cfg, variant, model, table, split, run, out_dir, buffer, fit_result,
                                           start)
    version = _register(cfg, variant, model, table, run, out_dir) if cfg.tracking.register_model else None
    return metrics, reference, version


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
                       f"first checkpoint (trainer.checkpoint_every_n_steps): start it again")
    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(run.info.run_id, "config/resolved.toml", tmp)
        cfg = load_config(local)
    start = time.perf_counter()
    table, split, model, aux = _prepare(cfg, variant)
    logged = {key: max((m.step for m in client.get_metric_history(run.info.run_id, key)), default=-1)
              for key in run.data.metrics}
    name = client.get_experiment(run.info.experiment_id).name
    log.info("resuming %s (%s) from %s", run.info.run_id, variant.name, ckpt)
    with tracked_run(tracking_uri, name, run.info.run_name, {}, {}, existing_run_id=run.info.run_id) as handle:
        handle.outbox = Outbox(out_dir / OUTBOX, handle.run_id)
        metrics, reference, version = _execute(cfg, variant, model, table, split, handle, out_dir, devices, True,
                                               aux, (), start, resume_from=ckpt, skip_logged=logged)
        artifact_uri = handle.artifact_uri()
    return RunSummary(run.info.run_id, run.info.run_name, name, tracking_uri, artifact_uri, metrics, reference,
                      version, variant.name, time.perf_counter() - start, _held(handle))


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
    from stx.train.module import velocity_term

    if not variant.velocity:
        return ()
    vcfg = cfg.model.velocity
    use_magnitude = vcfg.mu > 0 and (table.velocity_calibrated or vcfg.force_magnitude)
    if vcfg.mu > 0 and not use_magnitude:
        log.warning("the velocity comes from scVelo's transition-matrix projection (unit displacements), so its "
                    "magnitude is not calibrated: the magnitude term (model.velocity.mu = %g) is off; set "
                    "model.velocity.force_magnitude = true to keep it", vcfg.mu)
    return (velocity_term(vcfg, use_magnitude),)


def _train(cfg: Config, model: torch.nn.Module, table: CellTable, split: Split, out_dir: Path,
           devices: int | None, buffer: MetricBuffer | None, progress: bool, train: bool = True,
           aux: tuple = (), callbacks: tuple = (), resume_from: Path | None = None):
    from stx.tracking.buffer import MetricBuffer
    from stx.train.fit import fit, make_loaders
    from stx.train.module import STSystem

    system = STSystem(model, cfg.trainer, buffer or MetricBuffer(), aux=aux)
    if not train:
        _, val_loader = make_loaders(table, split, cfg.trainer, cfg.model.velocity.source)
        if val_loader is not None:
            with torch.no_grad():
                losses = [system.shared_step(b)[0] for b in val_loader]
            system.buffer.add("val/loss", torch.stack(losses).mean(), 0)
            system.buffer.flush()
        return None
    from stx.model.mhc import mhc_layers
    from stx.train.callbacks import MHCMonitor

    layers = mhc_layers(model)
    extra = (MHCMonitor(system.buffer, layers, cfg.trainer.log_every_n_steps),) if layers else ()
    extra = (*extra, *callbacks)
    return fit(system, table, split, cfg.trainer, out_dir, devices=devices, progress=progress,
               extra_callbacks=extra, velocity_source=cfg.model.velocity.source, resume_from=resume_from)


def _evaluate_and_log(cfg, variant, model, table, split, run, out_dir, buffer, fit_result, start):  # noqa: ANN001
    from stx.data.builtin import write_h5ad_atomic
    from stx.evaluate.plots import plot_curves, plot_real_vs_predicted
    from stx.evaluate.predict import predict_split
    from stx.evaluate.report import evaluate, mean_shift_predictions, predictions_anndata, summarize
    from stx.train.stability import stability_summary

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device)
    preds = predict_split(model, table, split.mask(TEST), cfg.trainer.cell_set_len, device)
    if preds.n == 0:
        raise StxError("the test split has no group with both control and perturbed cells; "
                       "lower data.test_fraction or use data.split = 'cell'")
    by_group = evaluate(table, split, preds)
    metrics = summarize(by_group)
    reference = summarize(evaluate(table, split, mean_shift_predictions(table, split)), prefix="ref/mean_shift/")
    summary = {**metrics, **reference}
    summary.update(stability_summary(buffer.values("grad_norm/global"), buffer.values("train/loss")))
    if fit_result is not None:
        summary["train/wall_time_s"] = fit_result.wall_time_s
        if np.isfinite(fit_result.best_val):
            summary["val/best_loss"] = fit_result.best_val
    summary["run/wall_time_s"] = time.perf_counter() - start
    run.log_metrics(summary, step=fit_result.steps if fit_result else 0)

    data_dir = out_dir / "data"
    data_dir.mkdir(exist_ok=True)
    split.frame(table).to_csv(data_dir / "split.csv", index=False)
    run.log_artifact(data_dir / "split.csv", "data")

    eval_dir = out_dir / "eval"
    eval_dir.mkdir(exist_ok=True)
    by_group.to_csv(eval_dir / "metrics_by_group.csv", index=False)
    run.log_artifact(eval_dir / "metrics_by_group.csv", "eval")
    pred_dir = out_dir / "predictions"
    pred_dir.mkdir(exist_ok=True)
    write_h5ad_atomic(predictions_anndata(table, preds, cfg.data), pred_dir / "predictions.h5ad")
    run.log_artifact(pred_dir / "predictions.h5ad", "predictions")

    ckpt_dir = out_dir / "checkpoints"
    ckpt_dir.mkdir(exist_ok=True)
    if fit_result is None:  # baseline: the adapted pretrained weights are the checkpoint
        torch.save({"state_dict": model.state_dict(), "stx_variant": variant.name}, ckpt_dir / "last.ckpt")
    for name in ("last.ckpt", "best.ckpt"):
        if (ckpt_dir / name).exists():
            run.log_artifact(ckpt_dir / name, "checkpoints")

    plots = out_dir / "plots"
    plots.mkdir(exist_ok=True)
    history = buffer.history
    plot_curves(history, ["train/loss", "val/loss"], plots / "loss.png", f"{variant.name}: loss")
    plot_curves(history, ["grad_norm/global"], plots / "grad_norm.png",
                f"{variant.name}: global gradient norm (before clipping)", log_y=True)
    test = split.mask(TEST)
    ctrl = test & (table.pert == table.spec.control_index)
    real = test & (table.pert != table.spec.control_index)
    types = np.asarray(table.spec.cell_types)
    plot_real_vs_predicted(
        table.emb[ctrl], table.emb[real], preds.emb,
        (types[table.cell_type[ctrl]], types[table.cell_type[real]], types[table.cell_type[preds.source]]),
        (table.spec.control, "/".join(p for p in table.spec.perts if p != table.spec.control)),
        plots / "umap.png", method=cfg.tracking.projection, seed=cfg.trainer.seed)
    run.log_artifact(plots, "plots")
    return metrics, reference


def _register(cfg, variant, model, table, run, out_dir) -> str | None:  # noqa: ANN001
    from stx.model.lora import merge_lora
    from stx.model.package import save_package

    model = merge_lora(model.cpu().eval())
    meta = {
        "variant": variant.name, "cell_set_len": cfg.trainer.cell_set_len,
        "embed_key": cfg.data.embed_key, "pert_col": cfg.data.pert_col,
        "control_pert": cfg.data.control_pert, "cell_type_key": cfg.data.cell_type_key,
        "batch_col": cfg.data.batch_col, "time_col": cfg.data.time_col, "stx_version": __version__,
        "mhc": cfg.model.mhc.model_dump() if variant.mhc else None,
    }
    package = save_package(model, meta, out_dir / "model_package")
    return run.register_model(package, f"stx-{variant.name}")
