"""The Lightning system: one shared step for train and val, the optimizer, the schedule.

Model code stays plain PyTorch (`stx.model`); auxiliary losses arrive as named terms
(`LossTerm`), each logged as `f"{stage}/{name}"`. Metrics go into a `MetricBuffer`, never
straight to the tracking store.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import lightning as L
import torch
from torch import nn

from stx.config import TrainerConfig
from stx.tracking.buffer import MetricBuffer
from stx.train.objective import LossTerm, batch_loss, validation_loss


def no_decay(name: str, param: nn.Parameter) -> bool:
    """Biases, norms and mHC coefficients are kept out of weight decay (decay would pull
    mHC's H matrices away from their identity-preserving init)."""
    return param.ndim < 2 or ".mhc." in name or "norm" in name


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    """LR multiplier: linear warmup to 1, then cosine decay to 10%."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


class STSystem(L.LightningModule):
    """Trains a StateTransition with the energy distance plus optional auxiliary terms."""

    def __init__(self, model: nn.Module, tcfg: TrainerConfig, buffer: MetricBuffer,
                 aux: tuple[LossTerm, ...] = ()):
        super().__init__()
        self.model = model
        self.tcfg = tcfg
        self.buffer = buffer
        self.aux = aux
        self._val_losses: list[torch.Tensor] = []
        self._val_energy: list[torch.Tensor] = []
        self.last_val_step = -1
        self.best_val = float("inf")
        self.stream = None  # the training SetStream, set by fit()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Lightning saves weights, optimizer, scheduler and step; the set sampler's and torch's
        # random states make a resumed run draw and drop out exactly as an uninterrupted one
        state = self.stream.state_at(self.global_step) if self.stream is not None else None
        checkpoint["stx_rng"] = {"torch": torch.get_rng_state(), "sampler": state, "batch": self.global_step}
        checkpoint["stx_best_val"] = self.best_val

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        rng = checkpoint.get("stx_rng") or {}
        if rng.get("torch") is not None:
            torch.set_rng_state(rng["torch"])
        if rng.get("sampler") is not None and self.stream is not None:
            self.stream.restore(rng["batch"], rng["sampler"])
        self.best_val = checkpoint.get("stx_best_val", self.best_val)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Predicted perturbed embeddings [B, S, D]."""
        return self.model(batch)

    def shared_step(self, batch: dict[str, torch.Tensor],
                    parts: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and its named terms for one batch (`stx.train.objective.batch_loss`)."""
        return batch_loss(self.model, batch, self.aux, self.global_step, parts)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        step = self.global_step
        sampled = [t for t in self.aux if t.grad_ratio_every and step % t.grad_ratio_every == 0]
        parts: dict[str, torch.Tensor] | None = {} if sampled else None
        loss, terms = self.shared_step(batch, parts)
        if sampled:
            terms.update(self._grad_ratios(parts, sampled))
        if self.trainer.is_global_zero:
            self.buffer.add_many({f"train/{k}": v for k, v in terms.items()}, step)
            self.buffer.add("lr", self.optimizers().param_groups[0]["lr"], step)
        return loss

    def _grad_ratios(self, parts: dict[str, torch.Tensor], terms: list[LossTerm]) -> dict[str, torch.Tensor]:
        params = [p for p in self.model.parameters() if p.requires_grad]

        def norm(value: torch.Tensor) -> torch.Tensor:
            if not value.requires_grad:
                return torch.zeros((), device=value.device)
            grads = [g for g in torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
                     if g is not None]
            return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else \
                torch.zeros((), device=value.device)

        energy = norm(parts["energy"]).clamp_min(1e-12)
        return {f"{t.name}_grad_ratio": (norm(parts[t.name]) / energy).detach() for t in terms}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, terms = self.shared_step(batch)
        self._val_losses.append(loss.detach())
        self._val_energy.append(terms["energy_loss"].detach())

    def on_validation_epoch_end(self) -> None:
        if not self._val_losses:
            return
        value = torch.stack(self._val_losses).mean()
        energy = torch.stack(self._val_energy).mean()
        self._val_losses.clear()
        self._val_energy.clear()
        # reduced across ranks so every process agrees on the best checkpoint
        self.log("val/loss", value, sync_dist=True, prog_bar=True, logger=False)
        self.log("val/energy_loss", energy, sync_dist=True, logger=False)
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            self.record_validation(value, energy, self.global_step)

    def record_validation(self, loss: torch.Tensor, energy: torch.Tensor, step: int) -> None:
        """Log one validation: `val/loss` (the optimised objective) and `val/energy_loss`
        (the energy term alone, comparable across variants)."""
        self.buffer.add_many({"val/loss": loss, "val/energy_loss": energy}, step)
        self.best_val = min(self.best_val, float(loss))
        self.last_val_step = step

    def validate_now(self, batches: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(val/loss, val/energy_loss) over `batches`, in eval mode, outside Lightning's loop."""
        return validation_loss(self.model, batches, self.aux, self.global_step, self.device)

    def _fused_adamw(self) -> bool | None:
        """Fused AdamW: one kernel over all parameters, 4-8x faster than the per-tensor loop
        PyTorch uses on CPU (`tests/benchmarks/bench_training.py` prints it). Not under
        Lightning's mixed precision with clipping, which refuses optimizers that unscale
        gradients themselves; there PyTorch's default (foreach on CUDA) stays."""
        try:
            precision = str(self.trainer.precision)
        except RuntimeError:  # not attached to a trainer
            precision = "32-true"
        devices = {p.device.type for p in self.model.parameters()}
        if "mixed" in precision and self.tcfg.grad_clip:
            return None
        return True if devices <= {"cpu", "cuda"} else None

    def configure_optimizers(self):  # noqa: ANN201 - Lightning's contract
        params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in params if not no_decay(n, p)], "weight_decay": self.tcfg.weight_decay},
            {"params": [p for n, p in params if no_decay(n, p)], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=self.tcfg.lr, fused=self._fused_adamw())
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_cosine(self.tcfg.lr_warmup_steps, self.tcfg.max_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
