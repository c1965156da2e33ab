from __future__ import annotations

import numpy as np
import pytest
import torch

from stx.evaluate.metrics import energy_distance, group_metrics, meets_target, temporal_coherence
from stx.model.losses import energy_distance as torch_energy


def _cells(n, d=16, shift=0.0, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)) + shift


def test_blockwise_energy_matches_direct():
    x, y = _cells(2500, seed=1), _cells(1800, shift=0.3, seed=2)
    direct = torch_energy(torch.tensor(x)[None], torch.tensor(y)[None]).item()
    assert energy_distance(x, y, max_cells=10_000) == pytest.approx(direct, rel=1e-6)  # the loss runs in fp32


def test_subsampling_is_seeded_and_close():
    x, y = _cells(6000, seed=1), _cells(6000, shift=0.5, seed=2)
    a, b = energy_distance(x, y, max_cells=2000, seed=3), energy_distance(x, y, max_cells=2000, seed=3)
    assert a == b
    assert a == pytest.approx(energy_distance(x, y, max_cells=6000), rel=0.1)


def test_perfect_prediction_scores_perfectly():
    control, real = _cells(400, seed=1), _cells(400, shift=np.linspace(-1, 1, 16), seed=2)
    perfect = real.copy()
    m = group_metrics(control, real, perfect)
    assert m["pearson_delta"] == pytest.approx(1.0) and m["direction_cos"] == pytest.approx(1.0)
    assert m["magnitude_ratio"] == pytest.approx(1.0) and m["energy_ratio"] == pytest.approx(0.0, abs=1e-9)


def test_predicting_the_control_scores_no_better_than_control():
    control, real = _cells(400, seed=1), _cells(400, shift=1.0, seed=2)
    m = group_metrics(control, real, control.copy())
    assert m["energy_ratio"] == pytest.approx(1.0)
    assert m["magnitude_ratio"] == pytest.approx(0.0)
    assert np.isnan(m["pearson_delta"]) or not meets_target("pearson_delta", m["pearson_delta"])
    assert not meets_target("energy_ratio", m["energy_ratio"])


def test_rotation_gives_the_known_cosine():
    control = _cells(300, d=2, seed=1)
    shift = np.array([1.0, 0.0])
    real = control + shift
    angle = np.pi / 3
    pred = control + np.array([np.cos(angle), np.sin(angle)])
    assert group_metrics(control, real, pred)["direction_cos"] == pytest.approx(0.5)


def test_temporal_coherence():
    a, b = np.array([1.0, 0.0]), np.array([2.0, 1.0])
    assert temporal_coherence(a, b, a, b) == pytest.approx(1.0)
    assert temporal_coherence(a, b, b, a) == pytest.approx(-1.0)
