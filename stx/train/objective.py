"""The training objective of one batch, without Lightning: the energy distance plus named
auxiliary terms. The Lightning system (`stx.train.module`) trains with it; a run that
trains nothing (the baseline) validates with it alone."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from stx.config import VelocityConfig
from stx.data import keys
from stx.model.losses import energy_loss

# (pred, batch, step) -> (loss, extra metrics); its weight schedule is the term's business
AuxLoss = Callable[[torch.Tensor, dict[str, torch.Tensor], int], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass(frozen=True)
class LossTerm:
    """A named auxiliary loss added to the energy distance.

    Every `grad_ratio_every` steps (0: never) the system logs `train/<name>_grad_ratio`, the
    norm of this term's gradient over the energy loss's, on the trainable parameters: whether
    the term does anything at all.
    """

    name: str
    fn: AuxLoss
    grad_ratio_every: int = 0


def batch_loss(model: nn.Module, batch: dict[str, torch.Tensor], aux: tuple[LossTerm, ...] = (), step: int = 0,
               parts: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and its named terms for one batch (`parts` receives each term's value with
    its graph, for the gradient ratios)."""
    pred = model(batch)
    energy = energy_loss(pred, batch[keys.PERT_CELL_EMB], batch.get(keys.HAS_TARGET))
    terms = {"energy_loss": energy}
    total = energy
    for term in aux:
        value, extra = term.fn(pred, batch, step)
        total = total + value
        terms.update(extra)
        if parts is not None:
            parts[term.name] = value
    terms["loss"] = total
    if parts is not None:
        parts["energy"] = energy
    return total, terms


@torch.no_grad()
def validation_loss(model: nn.Module, batches: list[dict[str, torch.Tensor]], aux: tuple[LossTerm, ...] = (),
                    step: int = 0, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(val/loss, val/energy_loss): means over `batches`, in eval mode."""
    was_training = model.training
    model.eval()
    losses, energies = [], []
    for batch in batches:
        loss, terms = batch_loss(model, {k: v.to(device) for k, v in batch.items()}, aux, step)
        losses.append(loss)
        energies.append(terms["energy_loss"])
    model.train(was_training)
    return torch.stack(losses).mean(), torch.stack(energies).mean()


def velocity_term(vcfg: VelocityConfig, use_magnitude: bool, control_index: int = 0) -> LossTerm:
    """`w(t) lambda (1 - cos(shift, v)) + mu | |shift| - beta |v| |` with w(t) = min(1, t / warmup),
    on perturbed sets only: a control->control set's right shift is zero, not the velocity."""
    from stx.model.losses import velocity_alignment, warmup_weight

    mu = vcfg.mu if use_magnitude else 0.0

    def fn(pred: torch.Tensor, batch: dict[str, torch.Tensor], step: int):
        parts = velocity_alignment(pred - batch[keys.CTRL_EMB], batch[keys.VELOCITY], batch[keys.VELOCITY_WEIGHT],
                                   min_confidence=vcfg.min_confidence, beta=vcfg.beta, reduce=vcfg.reduce,
                                   sets=batch[keys.PERT_INDEX] != control_index)
        w = warmup_weight(step, vcfg.warmup_steps)
        value = w * vcfg.lambda_ * parts["direction"] + mu * parts["magnitude"]
        return value, {
            "velocity_loss": parts["direction"].detach(),
            "velocity_magnitude_loss": parts["magnitude"].detach(),
            "velocity_cos": parts["cos"],
            "velocity_weight": torch.tensor(w * vcfg.lambda_),
            "velocity_coverage": parts["coverage"],
        }

    return LossTerm("velocity", fn, vcfg.grad_ratio_every)
