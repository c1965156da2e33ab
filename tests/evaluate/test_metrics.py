from __future__ import annotations

import numpy as np
import pytest

from stx.evaluate.metrics import (
    better,
    cell_metrics,
    energy_distance,
    group_metrics,
    meets_target,
    observe,
    temporal_coherence,
)
from stx.model.losses import energy_distance as torch_energy


def _cells(n, d=16, shift=0.0, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)) + shift


def test_blockwise_energy_matches_direct():
    import torch

    x, y = _cells(2500, seed=1), _cells(1800, shift=0.3, seed=2)
    direct = torch_energy(torch.tensor(x)[None], torch.tensor(y)[None]).item()
    assert energy_distance(x, y, max_cells=10_000) == pytest.approx(direct, rel=1e-6)  # the loss runs in fp32


def _exact_energy(x, y):
    """float64, every pair computed directly: the reference for the float32 fast path."""
    from scipy.spatial.distance import cdist

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return 2 * cdist(x, y).mean() - cdist(x, x).mean() - cdist(y, y).mean()


@pytest.mark.parametrize("dims,offset", [(16, 0.0), (300, 0.0), (300, 40.0)])
def test_fast_energy_matches_float64_with_near_duplicates(dims, offset):
    rng = np.random.default_rng(dims)
    x = rng.normal(size=(700, dims)) + offset
    y = rng.normal(size=(1100, dims)) * 1.2 + 0.2 + offset
    y[:250] = x[:250] + 1e-6 * rng.normal(size=(250, dims))  # near-duplicates across the sets
    x[600:] = x[:100] + 1e-7  # and within one (their squared distances round to <= 0 in float32)
    y[1000:] = y[900:1000]  # exact duplicates
    fast = energy_distance(x, y, max_cells=10_000)
    assert np.isfinite(fast)
    assert fast == pytest.approx(_exact_energy(x, y), rel=1e-4)
    assert energy_distance(x, x, max_cells=10_000) == pytest.approx(0.0, abs=1e-4 * _exact_energy(x, y))


def test_shared_observed_gives_the_same_metrics():
    fed, ref, real = _group(np.linspace(-1, 1, 16), n=300)
    pred = fed + 0.5
    assert group_metrics(fed, ref, real, pred, seed=2, observed=observe(ref, real, seed=2)) == \
        group_metrics(fed, ref, real, pred, seed=2)


def test_subsampling_is_seeded_and_close():
    x, y = _cells(6000, seed=1), _cells(6000, shift=0.5, seed=2)
    a, b = energy_distance(x, y, max_cells=2000, seed=3), energy_distance(x, y, max_cells=2000, seed=3)
    assert a == b
    assert a == pytest.approx(energy_distance(x, y, max_cells=6000), rel=0.1)


def _group(shift, n=400, seed=0):
    fed, ref = _cells(n, seed=seed + 1), _cells(n, seed=seed + 2)
    return fed, ref, _cells(n, shift=shift, seed=seed + 3)


def test_the_true_shift_scores_well():
    shift = np.linspace(-1, 1, 16)
    fed, ref, real = _group(shift)
    m = group_metrics(fed, ref, real, fed + shift)
    assert m["pearson_delta"] > 0.95 and m["direction_cos"] > 0.95
    assert m["magnitude_ratio"] == pytest.approx(1.0, abs=0.05) and m["energy_ratio"] < 0.05


def test_predicting_the_controls_scores_no_better_than_control():
    fed, ref, real = _group(1.0)
    m = group_metrics(fed, ref, real, fed.copy())
    assert m["energy_ratio"] == pytest.approx(1.0, abs=0.05)
    assert m["magnitude_ratio"] == 0.0 and m["pearson_delta"] == 0.0 and m["direction_cos"] == 0.0
    assert not meets_target("energy_ratio", m["energy_ratio"]) and not meets_target("pearson_delta", 0.0)


def test_shared_control_noise_no_longer_rewards_ignoring_the_input():
    # a small group: the noise of the control mean is large. Predicting the perturbed cells'
    # mean profile for everyone used to correlate with the real shift through that noise.
    rng = np.random.default_rng(0)
    wins = 0
    for trial in range(40):
        shift = rng.normal(0, 0.3, 16)
        fed, ref, real = _group(shift, n=12, seed=100 + trial)
        train_real = _cells(400, shift=shift, seed=900 + trial)
        ignoring = group_metrics(fed, ref, real, np.broadcast_to(train_real.mean(0), fed.shape).copy())
        right = group_metrics(fed, ref, real, fed + shift)
        wins += ignoring["pearson_delta"] > right["pearson_delta"]
    assert wins < 20  # no systematic advantage left (it won nearly always with one control mean)


def test_rotation_gives_the_known_cosine():
    fed, ref = _cells(3000, d=2, seed=1), _cells(3000, d=2, seed=2)
    real = _cells(3000, d=2, shift=np.array([1.0, 0.0]), seed=3)
    angle = np.pi / 3
    pred = fed + np.array([np.cos(angle), np.sin(angle)])
    assert group_metrics(fed, ref, real, pred)["direction_cos"] == pytest.approx(0.5, abs=0.05)


def test_temporal_coherence():
    a, b = np.array([1.0, 0.0]), np.array([2.0, 1.0])
    assert temporal_coherence(a, b, a, b) == pytest.approx(1.0)
    assert temporal_coherence(a, b, b, a) == pytest.approx(-1.0)


def test_cell_metrics_reward_per_cell_truth_and_see_reordering():
    rng = np.random.default_rng(0)
    fed = rng.normal(size=(60, 8))
    response = rng.normal(size=(60, 8)) + 2.0
    exact = cell_metrics(fed, fed + response, response)
    assert exact["cell_r2"] == pytest.approx(1.0) and exact["cell_cos"] == pytest.approx(1.0)
    assert exact["cell_r2_matched"] == pytest.approx(1.0)
    mean_only = cell_metrics(fed, fed + response.mean(0), response)
    assert mean_only["cell_r2"] == pytest.approx(0.0, abs=1e-9)
    order = rng.permutation(60)  # the right set of cells, attached to the wrong sources
    shuffled = cell_metrics(fed, (fed + response)[order], response)
    assert shuffled["cell_r2"] < 0 and shuffled["cell_r2_matched"] == pytest.approx(1.0)


def test_better_knows_each_metrics_direction():
    assert better("energy_ratio", 0.2, 0.5) and not better("energy_ratio", 0.5, 0.2)
    assert better("magnitude_ratio", 1.1, 0.7) and not better("magnitude_ratio", 1.6, 0.7)
    assert better("pearson_delta", 0.8, 0.5) and not better("pearson_delta", float("nan"), 0.5)
