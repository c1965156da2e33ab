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


def stability_summary(grad_norms: list[float], losses: list[float]) -> dict[str, float]:
    """The end-of-run metrics `grad_norm/{median,max,cv,spikes}` and `loss/spikes`."""
    g = np.asarray(grad_norms, dtype=float)
    if len(g) == 0:
        return {}
    return {
        "grad_norm/median": float(np.nanmedian(g)),
        "grad_norm/max": float(np.nanmax(g)),
        "grad_norm/cv": coefficient_of_variation(g),
        "grad_norm/spikes": float(count_spikes(g)),
        "loss/spikes": float(count_spikes(losses)),
    }
