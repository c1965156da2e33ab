"""Held-out metrics per group (DESIGN §4), as pure functions of embedding matrices.

C = control cells, R = real perturbed cells, P = predictions made from C (all [n, D]);
d_real = mean(R) - mean(C), d_pred = mean(P) - mean(C).
"""

from __future__ import annotations

import numpy as np
import torch

# targets of the original study: metric -> (comparison, threshold)
TARGETS: dict[str, tuple[str, float]] = {
    "pearson_delta": (">", 0.6),
    "energy_ratio": ("<", 0.3),
    "direction_cos": (">", 0.7),
    "temporal_coherence": (">", 0.7),
}
METRICS = ("pearson_delta", "energy_ratio", "direction_cos", "magnitude_ratio", "temporal_coherence")
# Above this many cells per set, energy distances use a fixed-seed subsample: the error of
# the estimate (~1/sqrt(n)) is then below 2%, and cost stays O(n^2) with n bounded.
ENERGY_MAX_CELLS = 3000
ENERGY_BLOCK = 1024


def _subsample(x: np.ndarray, max_cells: int, seed: int) -> np.ndarray:
    if len(x) <= max_cells:
        return x
    rng = np.random.default_rng(seed)
    return x[np.sort(rng.choice(len(x), max_cells, replace=False))]


def _mean_pairwise(a: torch.Tensor, b: torch.Tensor) -> float:
    total = 0.0
    for i in range(0, len(a), ENERGY_BLOCK):
        total += torch.cdist(a[i:i + ENERGY_BLOCK], b).sum().item()
    return total / (len(a) * len(b))


def energy_distance(x: np.ndarray, y: np.ndarray, max_cells: int = ENERGY_MAX_CELLS, seed: int = 0) -> float:
    """2 E|x - y| - E|x - x'| - E|y - y'| over cells; blockwise, memory O(block x n)."""
    a = torch.from_numpy(np.ascontiguousarray(_subsample(x, max_cells, seed), dtype=np.float64))
    b = torch.from_numpy(np.ascontiguousarray(_subsample(y, max_cells, seed + 1), dtype=np.float64))
    return 2 * _mean_pairwise(a, b) - _mean_pairwise(a, a) - _mean_pairwise(b, b)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else float("nan")


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def group_metrics(control: np.ndarray, real: np.ndarray, pred: np.ndarray, seed: int = 0) -> dict[str, float]:
    """pearson_delta, energy_ratio, direction_cos, magnitude_ratio for one group."""
    mu_c = control.mean(0)
    d_real, d_pred = real.mean(0) - mu_c, pred.mean(0) - mu_c
    e_cr = energy_distance(control, real, seed=seed)
    norm_real = np.linalg.norm(d_real)
    return {
        "pearson_delta": _pearson(d_pred, d_real),
        "energy_ratio": energy_distance(pred, real, seed=seed) / e_cr if e_cr > 0 else float("nan"),
        "direction_cos": _cos(d_pred, d_real),
        "magnitude_ratio": float(np.linalg.norm(d_pred) / norm_real) if norm_real > 0 else float("nan"),
    }


def temporal_coherence(d_pred_t1: np.ndarray, d_pred_t2: np.ndarray, d_real_t1: np.ndarray,
                       d_real_t2: np.ndarray) -> float:
    """cos(d_pred(t2) - d_pred(t1), d_real(t2) - d_real(t1)) for consecutive time points."""
    return _cos(d_pred_t2 - d_pred_t1, d_real_t2 - d_real_t1)


def meets_target(metric: str, value: float) -> bool:
    """Whether a value meets the original study's target for that metric."""
    op, threshold = TARGETS[metric]
    return bool(value > threshold) if op == ">" else bool(value < threshold)
