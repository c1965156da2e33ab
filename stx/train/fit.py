"""`fit()`: build the loaders and the Lightning Trainer, train, return what came out."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import RichProgressBar

from stx.config import TrainerConfig
from stx.data.load import CellTable
from stx.data.split import Split
from stx.train.callbacks import EMAWeights, FlushMetrics, GradNormMonitor, StepTimer
from stx.train.module import STSystem
from stx.train.sets import SetSource, check_memory, make_loaders

log = logging.getLogger(__name__)


class StepProgress(RichProgressBar):
    """Rich progress over optimizer steps (the stream has no epochs to count)."""

    def _get_train_description(self, current_epoch: int) -> str:
        return "training"


def _atomic_checkpoint_io():
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        """Writes a checkpoint to a temporary file and renames it: a kill mid-write never
        leaves a truncated last.ckpt for --resume to trip on."""

        def save_checkpoint(self, checkpoint: dict, path: str | Path, storage_options: object = None) -> None:
            import os

            path = Path(path)
            tmp = path.with_name(f".{path.name}.tmp")
            super().save_checkpoint(checkpoint, tmp, storage_options)
            os.replace(tmp, path)

    return AtomicCheckpointIO()


def _final_validation(trainer: L.Trainer, system: STSystem, batches: list, ckpt_dir: Path,
                      best_path: Path | None) -> Path | None:
    """Validate at the last step when the interval did not land on it; keep it if it is the best."""
    loss, energy = system.validate_now(batches)
    improved = float(loss) < system.best_val
    if trainer.is_global_zero:
        system.record_validation(loss, energy, trainer.global_step)
        system.buffer.flush()
    if improved:
        best_path = ckpt_dir / "best.ckpt"
        trainer.save_checkpoint(best_path)
    return best_path


@dataclass(frozen=True)
class FitResult:
    """Where the checkpoints are and how long training took."""

    last_ckpt: Path | None
    best_ckpt: Path | None
    best_val: float
    wall_time_s: float
    steps: int


def precision_for(setting: str) -> str:
    """`auto` -> bf16 mixed precision on a GPU, full precision on CPU."""
    if setting == "auto":
        return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"
    return "32-true" if setting == "32" else setting


def fit(system: STSystem, table: CellTable, split: Split, tcfg: TrainerConfig, out_dir: Path,
        devices: int | None = None, resume_from: Path | None = None, progress: bool = True,
        monitor: bool = True, extra_callbacks: tuple[L.Callback, ...] = (),
        source: SetSource | None = None) -> FitResult:
    """Train `system` for `tcfg.max_steps` steps; checkpoints go to `out_dir/checkpoints`.

    Validation runs every `tcfg.val_every_n_steps` and always once more at the last step,
    so every run, however short, ends with a `val/loss`. `monitor=False` drops the
    grad-norm, timing and flushing callbacks (benchmarks measure their cost this way).
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    # Lightning's own INFO lines (GPU available, tips) would repeat what stx reports
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    backbone = system.model.transformer_backbone.config
    check_memory(tcfg, backbone.hidden_size, backbone.num_hidden_layers, backbone.num_attention_heads)
    if tcfg.lr_warmup_steps >= tcfg.max_steps:
        log.warning("trainer.lr_warmup_steps (%d) >= trainer.max_steps (%d): the learning rate never reaches "
                    "trainer.lr", tcfg.lr_warmup_steps, tcfg.max_steps)
    train_loader, val_loader = make_loaders(table, split, tcfg, source)
    system.stream = train_loader.dataset  # its random state goes into every checkpoint
    ckpt_dir = out_dir / "checkpoints"
    periodic = ModelCheckpoint(dirpath=ckpt_dir, filename="step-{step}", save_top_k=-1, save_last=True,
                               every_n_train_steps=tcfg.checkpoint_every_n_steps, auto_insert_metric_name=False)
    callbacks: list[L.Callback] = [periodic, *extra_callbacks]
    if tcfg.ema_decay > 0:
        callbacks.append(EMAWeights(tcfg.ema_decay))
    if monitor:
        callbacks += [GradNormMonitor(system.buffer), StepTimer(system.buffer),
                      FlushMetrics(system.buffer, tcfg.log_every_n_steps)]
    best = None
    if val_loader is not None:
        best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/loss", mode="min",
                               save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False)
        callbacks.append(best)
    if progress:
        callbacks.append(StepProgress(leave=True))
    n_devices = devices or tcfg.devices
    accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    strategy = tcfg.strategy
    if strategy == "auto" and n_devices > 1:
        strategy = "ddp"
    trainer = L.Trainer(
        max_steps=tcfg.max_steps,
        accelerator=accelerator,
        devices=n_devices,
        strategy=strategy,
        precision=precision_for(tcfg.precision),
        gradient_clip_val=tcfg.grad_clip or None,
        val_check_interval=tcfg.val_every_n_steps if val_loader is not None else None,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        limit_val_batches=len(val_loader) if val_loader is not None else 0,
        logger=False,
        callbacks=callbacks,
        enable_progress_bar=progress,
        enable_model_summary=False,
        default_root_dir=str(out_dir),
        use_distributed_sampler=False,
        plugins=[_atomic_checkpoint_io()],
        deterministic=False,
    )
    start = time.perf_counter()
    try:
        trainer.fit(system, train_dataloaders=train_loader, val_dataloaders=val_loader,
                    ckpt_path=str(resume_from) if resume_from else None)
    except SystemExit:
        # Lightning turns Ctrl-C/SIGTERM into sys.exit(1); the run must end KILLED, not FAILED
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise
    best_path = Path(best.best_model_path) if best is not None and best.best_model_path else None
    if val_loader is not None and system.last_val_step != trainer.global_step:
        best_path = _final_validation(trainer, system, list(val_loader), ckpt_dir, best_path)
    wall = time.perf_counter() - start
    last = ckpt_dir / "last.ckpt"
    return FitResult(last if last.exists() else None, best_path, system.best_val, wall, trainer.global_step)
