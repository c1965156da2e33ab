from __future__ import annotations

import pytest
import torch

from stx.model.losses import velocity_alignment, warmup_weight


def _v(*rows):
    return torch.tensor([rows], dtype=torch.float32)


@pytest.mark.parametrize(("shift", "expected"), [((1.0, 0.0), 0.0), ((0.0, 3.0), 1.0), ((-2.0, 0.0), 2.0)])
def test_direction_term_hand_values(shift, expected):
    out = velocity_alignment(_v(shift, shift), _v((1.0, 0.0), (2.0, 0.0)), torch.ones(1, 2))
    assert out["direction"].item() == pytest.approx(expected)
    assert out["cos"].item() == pytest.approx(1.0 - expected)


def test_magnitude_term_and_beta():
    shift, v = _v((3.0, 0.0)), _v((1.0, 0.0))
    assert velocity_alignment(shift, v, torch.ones(1, 1))["magnitude"].item() == pytest.approx(2.0)
    assert velocity_alignment(shift, v, torch.ones(1, 1), beta=3.0)["magnitude"].item() == pytest.approx(0.0)


def test_confidence_weights_and_mask():
    shift = _v((1.0, 0.0), (0.0, 1.0), (0.0, 1.0))
    v = _v((1.0, 0.0), (1.0, 0.0), (1.0, 0.0))
    # cell 3 is below min_confidence: excluded; cells 1 and 2 weighted 3:1
    out = velocity_alignment(shift, v, torch.tensor([[0.9, 0.3, 0.1]]), min_confidence=0.3)
    assert out["direction"].item() == pytest.approx((0.9 * 0 + 0.3 * 1) / 1.2)
    assert out["coverage"].item() == pytest.approx(2 / 3)


def test_nan_and_zero_velocities_are_masked():
    shift = _v((1.0, 0.0), (0.0, 1.0), (0.0, 1.0))
    v = torch.tensor([[[1.0, 0.0], [float("nan"), 0.0], [0.0, 0.0]]])
    out = velocity_alignment(shift, v, torch.ones(1, 3))
    assert out["direction"].item() == pytest.approx(0.0)
    assert out["coverage"].item() == pytest.approx(1 / 3)
    none = velocity_alignment(shift, torch.zeros(1, 3, 2), torch.ones(1, 3))
    assert none["direction"].item() == 0.0 and none["coverage"].item() == 0.0


def test_set_reduction_aligns_mean_shift_with_mean_velocity():
    shift = _v((1.0, 1.0), (1.0, -1.0))  # each cell 45 degrees off, the mean exactly along v
    v = _v((1.0, 0.0), (1.0, 0.0))
    assert velocity_alignment(shift, v, torch.ones(1, 2), reduce="cell")["direction"].item() == pytest.approx(
        1 - 2**-0.5, abs=1e-6)
    assert velocity_alignment(shift, v, torch.ones(1, 2), reduce="set")["direction"].item() == pytest.approx(
        0.0, abs=1e-6)


def test_gradient_reaches_the_shift_only():
    shift = torch.randn(2, 4, 3, requires_grad=True)
    v = torch.randn(2, 4, 3, requires_grad=True)
    out = velocity_alignment(shift, v, torch.ones(2, 4))
    (out["direction"] + out["magnitude"]).backward()
    assert shift.grad.abs().sum() > 0
    assert v.grad is None


def test_warmup_schedule():
    assert [warmup_weight(s, 1000) for s in (0, 500, 1000, 5000)] == [0.0, 0.5, 1.0, 1.0]
    assert warmup_weight(0, 0) == 1.0


def test_velocity_term_skips_control_to_control_sets():
    from stx.config import VelocityConfig
    from stx.data import keys
    from stx.train.objective import velocity_term

    term = velocity_term(VelocityConfig(warmup_steps=0, reduce="set", mu=0.0), use_magnitude=False, control_index=0)
    ctrl = torch.zeros(2, 3, 2)
    pred = torch.tensor([[[1.0, 0.0]] * 3, [[0.0, 1.0]] * 3])  # set 0 along v, set 1 across it
    batch = {keys.CTRL_EMB: ctrl, keys.VELOCITY: torch.tensor([[[1.0, 0.0]] * 3] * 2),
             keys.VELOCITY_WEIGHT: torch.ones(2, 3)}
    both = term.fn(pred, {**batch, keys.PERT_INDEX: torch.tensor([1, 1])}, 10)[0]
    assert both.item() == pytest.approx(0.1 * 0.5)  # mean of 1 - cos over the two sets
    # set 1 is a control->control set: its right shift is zero, so it is left out
    only_first = term.fn(pred, {**batch, keys.PERT_INDEX: torch.tensor([1, 0])}, 10)[0]
    assert only_first.item() == pytest.approx(0.0)
    assert term.grad_ratio_every == 50


def test_set_reduction_ignores_how_cells_are_ordered_within_a_set():
    shift = torch.randn(2, 5, 3)
    v = torch.randn(2, 5, 3)
    w = torch.ones(2, 5)
    perm = torch.randperm(5)
    a = velocity_alignment(shift, v, w, reduce="set")
    # the model may hand cell i's shift to cell j: the set's mean shift is what training defines
    b = velocity_alignment(shift[:, perm], v, w, reduce="set", min_confidence=0.0)
    assert a["direction"].item() == pytest.approx(b["direction"].item(), abs=1e-6)
