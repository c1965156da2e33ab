"""Stability summaries of a metric history (DESIGN §3): median, max, CV, spike counts."""

from __future__ import annotations

import numpy as np


def count_spikes(values: list[float] | np.ndarray, factor: float = 5.0, window: int = 100) -> int:
    """Steps whose value exceeds `factor` x the median of the previous `window` values."""
    x = np.asarray(values, dtype=float)
    spikes = 0
    for i in range(1, len(x)):
        past = x[max(0, i - window):i]
        past = past[np.isfinite(past)]
        if len(past) and x[i] > factor * np.median(past):
            spikes += 1
    return spikes


def coefficient_of_variation(values: list[float] | np.ndarray) -> float:
    """std / mean over the last half of the values (NaN when empty)."""
    x = np.asarray(values, dtype=float)
    x = x[len(x) // 2:]
    x = x[np.isfinite(x)]
    if len(x) == 0 or x.mean() == 0:
        return float("nan")
    return float(x.std() / x.mean())


def stability_summary(grad_norms: list[float], losses: list[float], clip: float = 0.0) -> dict[str, float]:
    """The end-of-run metrics `grad_norm/{median,max,cv,spikes}`, `loss/spikes` and, with
    gradient clipping on, `grad_norm/clipped_frac` (share of steps whose gradient was clipped)."""
    g = np.asarray(grad_norms, dtype=float)
    if len(g) == 0:
        return {}
    clipped = {"grad_norm/clipped_frac": float(np.mean(g > clip))} if clip > 0 else {}
    return {**clipped, **loss_rebound(losses),
        "grad_norm/median": float(np.nanmedian(g)),
        "grad_norm/max": float(np.nanmax(g)),
        "grad_norm/cv": coefficient_of_variation(g),
        "grad_norm/spikes": float(count_spikes(g)),
        "loss/spikes": float(count_spikes(losses)),
    }


def loss_rebound(losses: list[float] | np.ndarray, window: int = 20) -> dict[str, float]:
    """`loss/rebound`: the mean loss of the last 10% of steps over the lowest `window`-step
    running mean reached before. About 1 (or below) for a run that kept improving; a run
    that collapsed after a good start (the energy loss is bounded, so it rises about 2x
    without ever "spiking" 5x) scores 2 or more. `loss/max_rise`: the largest ratio of the
    running loss to the lowest it had reached so far: 1 for a loss that never went back
    up, 1.4 for a run that blew up at the peak learning rate and recovered."""
    x = np.asarray(losses, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) < 2 * window:
        return {}
    running = np.convolve(x, np.ones(window) / window, mode="valid")
    tail = x[-max(window, len(x) // 10):]
    best = float(running.min())
    if best <= 0:
        return {}
    # the worst transient: how far the running loss climbed above the lowest it had reached
    floor = np.minimum.accumulate(running)
    return {"loss/rebound": float(tail.mean() / best), "loss/max_rise": float((running / floor).max())}
