"""Held-out metrics per group (DESIGN §4), as pure functions of embedding matrices.

The test controls of each group are split in two halves (`stx.evaluate.controls`):
C_in is fed to the model, C_ref is never seen by any predictor. R = real perturbed cells,
P = predictions made from C_in (all [n, D]).

    d_pred = mean(P) - mean(C_in)     what the predictor changed in the cells it was given
    d_real = mean(R) - mean(C_ref)    the real shift, against controls no predictor saw

Measuring both shifts against the *same* control mean (the old definition) correlates them
through the noise of that mean, so a predictor that ignores its input (the training
perturbed mean) out-scored the true shift on pearson_delta, direction_cos and
temporal_coherence. With independent halves the two shifts share no noise.

The norm of a noisy mean difference is biased upward, so magnitude_ratio divides by the
real shift's norm corrected for the sampling noise of its two means,
sqrt(|d_real|^2 - tr(Cov R)/n_R - tr(Cov C_ref)/n_ref): without it the truth scored
0.96 and any noisy predictor that ignores its input scored closer to 1.

A predictor whose shift is zero or constant has no direction: pearson_delta and
direction_cos are 0 for it (no information), not n/a, so returning nothing cannot lift a
mean. They are n/a only when the *real* shift is degenerate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# targets of the original study: metric -> (comparison, threshold)
TARGETS: dict[str, tuple[str, float]] = {
    "energy_ratio": ("<", 0.3),
    "pearson_delta": (">", 0.6),
    "direction_cos": (">", 0.7),
    "temporal_coherence": (">", 0.7),
}
# energy_ratio first: the headline (a distributional distance that a mean-only trick cannot game)
METRICS = ("energy_ratio", "pearson_delta", "direction_cos", "magnitude_ratio", "temporal_coherence")
# per-cell metrics against each control cell's counterfactual, where the data carry one
CELL_METRICS = ("cell_cos", "cell_r2", "cell_r2_matched")
ALL_METRICS = METRICS + CELL_METRICS
LOWER_IS_BETTER = ("energy_ratio",)
# Above this many cells per set, energy distances use a fixed-seed subsample: the error of
# the estimate (~1/sqrt(n)) is then below 2%, and cost stays O(n^2) with n bounded.
ENERGY_MAX_CELLS = 3000
ENERGY_BLOCK = 1024  # rows of a against all of b per matrix product (memory O(block x n))
ENERGY_SELF_BLOCK = 512  # within one set: smaller blocks skip more of the mirrored half, but multiply slower
MATCH_MAX_CELLS = 1500  # optimal matching is O(n^3): larger groups are matched on a subsample


def _subsample(x: np.ndarray, max_cells: int, seed: int) -> np.ndarray:
    if len(x) <= max_cells:
        return x
    rng = np.random.default_rng(seed)
    return x[np.sort(rng.choice(len(x), max_cells, replace=False))]


def _sample(x: np.ndarray, max_cells: int, seed: int) -> np.ndarray:
    """The (sub)sampled cells as C-contiguous float32 (no copy where x already is)."""
    return np.ascontiguousarray(_subsample(x, max_cells, seed), dtype=np.float32)


# Pairwise distances by |a|^2 + |b|^2 - 2 a.b: one float32 matrix product per block (the
# cost; torch's, into a reused buffer), squared distances clamped at 0 before the square root
# (rounding can make a near-duplicate pair's value slightly negative), sums in float64. The
# sets are first centred (distances do not change), which keeps |a|^2 small and the
# cancellation in the expansion at the float32 rounding of the distances themselves. The
# element-wise passes run in numpy: on few cores they cost a fraction of torch's.


def _sq_into(out: np.ndarray, a_m2, b, na: np.ndarray, nb: np.ndarray) -> np.ndarray:  # noqa: ANN001
    """out [k, m] <- |a_i - b_j|^2 clamped at 0, from a_m2 = -2 a and b (torch views of float32
    rows) and their squared norms na [k], nb [m]."""
    import torch

    torch.mm(a_m2, b.T, out=torch.from_numpy(out))
    out += na[:, None]
    out += nb
    return np.maximum(out, 0, out=out)


def _block_sums(a: np.ndarray, b: np.ndarray, block: int, upper: bool) -> float:
    """Sum of |a_i - b_j| over all pairs; with `upper` (b is a) over pairs i < j only."""
    import torch

    na, nb = _row_dot(a, a), _row_dot(b, b)
    ta, tb = torch.from_numpy(a * np.float32(-2)), torch.from_numpy(b)  # -2 a: exact
    buf = np.empty(min(len(a), block) * len(b), np.float32)
    total = 0.0
    for i in range(0, len(a), block):
        k = min(block, len(a) - i)
        j = i if upper else 0  # within one set: columns from the block's first row on
        d = _sq_into(buf[:k * (len(b) - j)].reshape(k, len(b) - j), ta[i:i + k], tb[j:], na[i:i + k], nb[j:])
        np.sqrt(d, out=d)
        total += float(d.sum(dtype=np.float64))
        if upper:  # the first k columns are the block against itself: keep its strict upper half
            square = d[:, :k]
            total -= float(square.sum(dtype=np.float64) + np.trace(square, dtype=np.float64)) / 2
    return total


def _sum_cross(a: np.ndarray, b: np.ndarray) -> float:
    """Sum of |a_i - b_j| over all pairs (float32 [n, D] and [m, D])."""
    centre = b.mean(0)
    return _block_sums(a - centre, b - centre, ENERGY_BLOCK, upper=False)


def _sum_within(a: np.ndarray) -> float:
    """Sum of |a_i - a_j| over all ordered pairs; only pairs i < j are computed."""
    a = a - a.mean(0)
    return 2 * _block_sums(a, a, ENERGY_SELF_BLOCK, upper=True)


def _mean_cross(a: np.ndarray, b: np.ndarray) -> float:
    return _sum_cross(a, b) / (len(a) * len(b))


def _mean_within(a: np.ndarray) -> float:
    return _sum_within(a) / (len(a) * len(a))  # V-statistic: the zero diagonal counts


def energy_distance(x: np.ndarray, y: np.ndarray, max_cells: int = ENERGY_MAX_CELLS, seed: int = 0) -> float:
    """2 E|x - y| - E|x - x'| - E|y - y'| over cells; blockwise, memory O(block x n).

    Computed in float32 (see above); agrees with an exact float64 evaluation to float32
    rounding (tests/evaluate/test_metrics.py).
    """
    a, b = _sample(x, max_cells, seed), _sample(y, max_cells, seed + 1)
    return 2 * _mean_cross(a, b) - _mean_within(a) - _mean_within(b)


def _degenerate(x: np.ndarray) -> bool:
    return not np.all(np.isfinite(x)) or float(np.std(x)) == 0.0


def _cos(pred: np.ndarray, real: np.ndarray) -> float:
    if np.linalg.norm(real) == 0 or not np.all(np.isfinite(real)):
        return float("nan")
    if np.linalg.norm(pred) == 0 or not np.all(np.isfinite(pred)):
        return 0.0
    return float(pred @ real / (np.linalg.norm(pred) * np.linalg.norm(real)))


def _pearson(pred: np.ndarray, real: np.ndarray) -> float:
    if _degenerate(real):
        return float("nan")
    if _degenerate(pred):
        return 0.0
    return float(np.corrcoef(pred, real)[0, 1])


def _mean_noise(x: np.ndarray) -> float:
    """Expected squared norm of the sampling error of x's mean: tr(Cov x) / n."""
    return float(x.var(0, ddof=1).sum() / len(x)) if len(x) > 1 else 0.0


@dataclass(frozen=True)
class Observed:
    """What every predictor of a group is scored against, computed once per group: the
    model and each reference predictor share the real cells and the reference controls."""

    d_real: np.ndarray  # mean(R) - mean(C_ref)
    norm_real: float  # |d_real| corrected for the sampling noise of its two means
    real_within: float  # E|R - R'| over the (subsampled) real cells
    e_control: float  # E(C_ref, R): the score of returning the controls unchanged


def observe(reference: np.ndarray, real: np.ndarray, seed: int = 0) -> Observed:
    """A group's `Observed` from its reference controls and real perturbed cells."""
    d_real = real.mean(0) - reference.mean(0)
    norm_real = float(np.sqrt(max(float(d_real @ d_real) - _mean_noise(real) - _mean_noise(reference), 0.0)))
    r, c = _sample(real, ENERGY_MAX_CELLS, seed + 1), _sample(reference, ENERGY_MAX_CELLS, seed)
    within = _mean_within(r)  # as energy_distance(reference, real, seed = seed)
    return Observed(d_real, norm_real, within, 2 * _mean_cross(c, r) - _mean_within(c) - within)


def group_metrics(fed: np.ndarray, reference: np.ndarray, real: np.ndarray, pred: np.ndarray,
                  seed: int = 0, observed: Observed | None = None) -> dict[str, float]:
    """energy_ratio, pearson_delta, direction_cos, magnitude_ratio for one group.

    energy_ratio = E(P, R) / E(C_ref, R): 0 is perfect, about 1 is no better than
    returning the controls unchanged. `observed`: `observe(reference, real, seed)` where
    the caller already has it (it is the same for every predictor of the group).
    """
    obs = observed if observed is not None else observe(reference, real, seed)
    d_pred, d_real = pred.mean(0) - fed.mean(0), obs.d_real
    p, r = _sample(pred, ENERGY_MAX_CELLS, seed), _sample(real, ENERGY_MAX_CELLS, seed + 1)
    e_pred = 2 * _mean_cross(p, r) - _mean_within(p) - obs.real_within  # energy_distance(pred, real, seed)
    e_cr, norm_real = obs.e_control, obs.norm_real
    return {
        "energy_ratio": e_pred / e_cr if e_cr > 0 else float("nan"),
        "pearson_delta": _pearson(d_pred, d_real),
        "direction_cos": _cos(d_pred, d_real),
        "magnitude_ratio": float(np.linalg.norm(d_pred) / norm_real) if norm_real > 0 else float("nan"),
    }


def temporal_coherence(d_pred_t1: np.ndarray, d_pred_t2: np.ndarray, d_real_t1: np.ndarray,
                       d_real_t2: np.ndarray) -> float:
    """cos(d_pred(t2) - d_pred(t1), d_real(t2) - d_real(t1)) for consecutive time points."""
    return _cos(d_pred_t2 - d_pred_t1, d_real_t2 - d_real_t1)


def cell_metrics(fed: np.ndarray, pred: np.ndarray, response: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Per-cell accuracy against each fed control cell's true response (its counterfactual).

    fed [n, D] control cells, pred [n, D] their predictions (row i from cell i), response
    [n, D] the true response of cell i. `cell_cos` = mean cos(pred_i - fed_i, response_i);
    `cell_r2` = 1 - sum |pred_i - fed_i - response_i|^2 / sum |response_i - mean response|^2:
    1 is every cell right, 0 is no better than the group's mean response for every cell.

    The energy loss lets a model reorder cells within a set (it compares sets as
    distributions), so row i of the output need not be cell i's counterfactual. `cell_r2_matched`
    first pairs predictions with the counterfactual cells fed_j + response_j by an optimal
    assignment (scipy's linear_sum_assignment on squared distances, computed in float32),
    then scores the same way (in the inputs' precision): the gap between the two says how
    much a model reorders.
    """
    from scipy.optimize import linear_sum_assignment

    delta = pred - fed
    spread = _sum_sq(response - response.mean(0))
    d_norm, r_norm = np.sqrt(_row_dot(delta, delta)), np.sqrt(_row_dot(response, response))
    ok = r_norm > 0
    cos = np.where(ok & (d_norm > 0), _row_dot(delta, response) / np.maximum(d_norm * r_norm, 1e-30), 0.0)
    delta -= response  # the error of each cell's predicted response
    out = {"cell_cos": float(cos[ok].mean()) if ok.any() else float("nan"),
           "cell_r2": 1.0 - _sum_sq(delta) / spread if spread > 0 else float("nan")}
    target = fed + response
    if len(pred) > MATCH_MAX_CELLS:
        keep = np.sort(np.random.default_rng(seed).choice(len(pred), MATCH_MAX_CELLS, replace=False))
        pred, target, response = pred[keep], target[keep], response[keep]
        spread = _sum_sq(response - response.mean(0))
    rows, cols = linear_sum_assignment(_sq_distances(pred, target))
    matched = _sum_sq(pred[rows] - target[cols])
    out["cell_r2_matched"] = 1.0 - matched / spread if spread > 0 else float("nan")
    return out


def _row_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[n] a_i . b_i, in one pass and without a temporary."""
    return np.einsum("ij,ij->i", a, b)


def _sum_sq(x: np.ndarray) -> float:
    """Sum of squares of all entries (rows in x's precision, their total in float64)."""
    return float(_row_dot(x, x).sum(dtype=np.float64))


def _sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[n, m] float32 |a_i - b_j|^2 by one matrix product (centred, clamped at 0)."""
    import torch

    centre = b.mean(0)
    a, b = np.ascontiguousarray(a - centre, np.float32), np.ascontiguousarray(b - centre, np.float32)
    return _sq_into(np.empty((len(a), len(b)), np.float32), torch.from_numpy(a * np.float32(-2)),
                    torch.from_numpy(b), _row_dot(a, a), _row_dot(b, b))


def meets_target(metric: str, value: float) -> bool:
    """Whether a value meets the original study's target for that metric."""
    op, threshold = TARGETS[metric]
    return bool(value > threshold) if op == ">" else bool(value < threshold)


def better(metric: str, a: float, b: float) -> bool:
    """Whether value a beats value b on a metric (energy lower, magnitude closer to 1, else higher)."""
    if not (np.isfinite(a) and np.isfinite(b)):
        return False
    if metric in LOWER_IS_BETTER:
        return a < b
    if metric == "magnitude_ratio":
        return abs(a - 1) < abs(b - 1)
    return a > b
