"""Losses by name. ST trains with the energy distance between predicted and real sets."""

from __future__ import annotations

from collections.abc import Callable

import torch


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Energy distance between sets, per set: 2 E|x - y| - E|x - x'| - E|y - y'|.

    x [B, N, D], y [B, M, D] -> [B]. Zero when the two sets are the same distribution in
    the limit; V-statistic (diagonal included) as in geomloss' `SamplesLoss("energy")`,
    which reports half of this value.
    """
    x, y = x.float(), y.float()
    xy = torch.cdist(x, y).mean((-1, -2))
    xx = torch.cdist(x, x).mean((-1, -2))
    yy = torch.cdist(y, y).mean((-1, -2))
    return 2 * xy - xx - yy


def energy_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean energy distance over sets (the training loss; half of it equals geomloss')."""
    return energy_distance(pred, target).mean()


def mse_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error between set means (a cheap alternative for ablations)."""
    return (pred.float().mean(1) - target.float().mean(1)).pow(2).mean()


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "energy": energy_loss,
    "mse": mse_loss,
}
