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


def energy_loss(pred: torch.Tensor, target: torch.Tensor, has_target: torch.Tensor | None = None) -> torch.Tensor:
    """Mean energy distance over sets (the training loss; half of it equals geomloss').

    `has_target` [B] leaves out sets that have no real perturbed cells to match.
    """
    per_set = energy_distance(pred, target)
    if has_target is None:
        return per_set.mean()
    w = has_target.to(per_set.dtype)
    return (per_set * w).sum() / w.sum().clamp_min(1.0)


def mse_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error between set means (a cheap alternative for ablations)."""
    return (pred.float().mean(1) - target.float().mean(1)).pow(2).mean()


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "energy": energy_loss,
    "mse": mse_loss,
}


def velocity_alignment(shift: torch.Tensor, velocity: torch.Tensor, weight: torch.Tensor, *,
                       min_confidence: float = 0.3, beta: float = 1.0, reduce: str = "cell",
                       eps: float = 1e-8, sets: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Align predicted shifts with RNA velocity (the velocity variants' auxiliary loss).

    shift = pred - ctrl [B, S, D]; velocity [B, S, D] (a constant target: detached here);
    weight [B, S] = velocity confidence; `sets` [B] bool = the sets the term applies to (the
    others, such as control->control sets, are left out, also of `coverage`). Cells with
    non-finite or zero velocity, or with confidence below `min_confidence`, are excluded. Returns

    * `direction`: weighted mean of 1 - cos(shift, v) (0 parallel, 1 orthogonal, 2 opposite);
      with reduce="set", 1 - cos(mean shift, mean v) per set, averaged over sets;
    * `magnitude`: weighted mean of | |shift| - beta |v| | (per cell, or per set mean);
    * `cos`: the (weighted) mean cosine, and `coverage`: the fraction of cells used.

    Per set is the default in stx: the energy loss compares sets as distributions, so the
    model is free to reorder cells within a set and a per-cell shift pred_i - ctrl_i is not
    defined by training; the set's mean shift is.
    """
    v = velocity.detach().float()
    d = shift.float()
    v_norm = v.norm(dim=-1)
    valid = torch.isfinite(v).all(-1) & (v_norm > eps) & (weight >= min_confidence) & torch.isfinite(weight)
    considered = torch.ones_like(valid) if sets is None else sets[:, None].expand_as(valid)
    valid = valid & considered
    w = torch.where(valid, weight.float(), torch.zeros_like(weight, dtype=torch.float32))
    v = torch.where(valid[..., None], v, torch.zeros_like(v))
    coverage = valid.float().sum() / considered.float().sum().clamp_min(1.0)
    zero = d.sum() * 0.0  # keeps the graph (and the device) when nothing is valid
    if not valid.any():
        return {"direction": zero, "magnitude": zero, "cos": zero.detach(), "coverage": coverage}
    d_norm = d.norm(dim=-1)
    if reduce == "set":
        ws = w[..., None]
        d_set, v_set = (d * ws).sum(1), (v * ws).sum(1)
        cos = (d_set * v_set).sum(-1) / (d_set.norm(dim=-1).clamp_min(eps) * v_set.norm(dim=-1).clamp_min(eps))
        used = w.sum(1) > 0
        direction = (1 - cos[used]).mean()
        cos_mean = cos[used].mean()
        w_mean = w.sum(1).clamp_min(eps)[:, None]
        gap = ((d_set / w_mean).norm(dim=-1) - beta * (v_set / w_mean).norm(dim=-1)).abs()
        return {"direction": direction, "magnitude": gap[used].mean(), "cos": cos_mean.detach(),
                "coverage": coverage}
    else:
        cos = (d * v).sum(-1) / (d_norm.clamp_min(eps) * v.norm(dim=-1).clamp_min(eps))
        direction = (w * (1 - cos)).sum() / w.sum()
        cos_mean = (w * cos).sum() / w.sum()
    magnitude = (w * (d_norm - beta * v.norm(dim=-1)).abs()).sum() / w.sum()
    return {"direction": direction, "magnitude": magnitude, "cos": cos_mean.detach(), "coverage": coverage}


def warmup_weight(step: int, warmup_steps: int) -> float:
    """w(t) = min(1, step / warmup_steps): the velocity term ramps in linearly."""
    return 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)
