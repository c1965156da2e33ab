import math

import pytest

from stx.train.module import warmup_cosine
from stx.train.stability import coefficient_of_variation, count_spikes, stability_summary


def test_spikes_are_counted_against_the_rolling_median():
    values = [1.0] * 50 + [6.0] + [1.0] * 50 + [4.0]
    assert count_spikes(values) == 1  # 6 > 5 x 1, 4 is not
    assert count_spikes([1.0, 100.0]) == 1
    assert count_spikes([]) == 0


def test_cv_uses_the_last_half():
    assert coefficient_of_variation([100.0, 1.0, 2.0, 2.0, 2.0]) == pytest.approx(0.0)
    assert coefficient_of_variation([1.0, 1.0, 1.0, 3.0]) == pytest.approx(0.5)


def test_summary_keys():
    out = stability_summary([1.0, 2.0, 3.0, 50.0], [1.0, 1.0, 1.0, 1.0])
    assert out["grad_norm/max"] == 50.0 and out["grad_norm/median"] == 2.5
    assert out["grad_norm/spikes"] == 1.0 and out["loss/spikes"] == 0.0
    assert stability_summary([], []) == {}


def test_warmup_then_cosine():
    f = warmup_cosine(10, 110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)


def test_rebound_tells_a_collapse_from_a_healthy_run():
    from stx.train.stability import loss_rebound

    healthy = [3.0 - 0.005 * i for i in range(300)]
    collapsed = [3.0 - 0.01 * i for i in range(100)] + [5.0] * 200  # bounded: never a 5x spike
    assert loss_rebound(healthy)["loss/rebound"] < 1.05
    assert loss_rebound(collapsed)["loss/rebound"] > 2.0
    recovered = [3.0 - 0.01 * i for i in range(100)] + [3.0] * 50 + [2.0 - 0.001 * i for i in range(150)]
    assert loss_rebound(recovered)["loss/max_rise"] > 1.4 and loss_rebound(healthy)["loss/max_rise"] == 1.0
    assert count_spikes(collapsed) == 0
    assert loss_rebound([1.0] * 10) == {}


def test_clipped_share_is_reported_with_clipping_on():
    out = stability_summary([0.5, 2.0, 3.0, 0.9], [1.0] * 4, clip=1.0)
    assert out["grad_norm/clipped_frac"] == 0.5
    assert "grad_norm/clipped_frac" not in stability_summary([0.5, 2.0], [1.0] * 2, clip=0.0)


def test_nan_loss_stops_training_with_the_step():
    from stx.errors import TrainingDiverged
    from stx.tracking.buffer import MetricBuffer
    from stx.train.callbacks import FlushMetrics

    buffer = MetricBuffer()
    guard = FlushMetrics(buffer, every=5)
    for step in range(5):
        buffer.add("train/loss", 1.0, step)
    buffer.flush()
    guard.check_finite()
    buffer.add("train/loss", float("nan"), 7)
    buffer.flush()
    with pytest.raises(TrainingDiverged, match="diverged at step 7: train/loss is nan"):
        guard.check_finite()
