"""The weight average (trainer.ema_decay): what training ends with, what validation sees."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from stx.config import load_config
from stx.data.covariates import plan_covariates
from stx.data.load import load_cells
from stx.data.split import make_split
from stx.experiment import build_model
from stx.tracking.buffer import MetricBuffer
from stx.train.fit import fit
from stx.train.module import STSystem
from stx.train.sets import SetSource, make_loaders
from stx.variants import resolve_variant


class Recorder(L.Callback):
    """Copies of the trainable weights after every optimizer step (the raw, unaveraged ones)."""

    def __init__(self):
        self.steps: list[list[torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.steps.append([p.detach().clone() for p in pl_module.parameters() if p.requires_grad])


def _train(tmp_path, demo_path, decay: float, steps: int = 6):
    cfg = load_config(None, [f'datasets.demo="{demo_path}"', "data.min_group_cells=3", f"trainer.max_steps={steps}",
                             "trainer.batch_size=2", "trainer.cell_set_len=8", "trainer.val_every_n_steps=3",
                             "trainer.checkpoint_every_n_steps=100", f"trainer.ema_decay={decay}", "trainer.lr=1e-2"])
    table = load_cells(cfg)
    split = make_split(table, cfg)
    plan = plan_covariates(table, cfg)
    model = build_model(cfg, resolve_variant("lora"), table, plan)
    system = STSystem(model, cfg.trainer, MetricBuffer())
    recorder = Recorder()
    fit(system, table, split, cfg.trainer, tmp_path / f"ema{decay}", progress=False, monitor=False,
        extra_callbacks=(recorder,), source=SetSource(covariates=plan))
    val = list(make_loaders(table, split, cfg.trainer, SetSource(covariates=plan))[1])
    return system, recorder, val


def test_training_ends_with_the_exponential_average_of_the_steps(tmp_path, demo_path):
    decay = 0.3  # the warm-up's (1 + n) / (10 + n) is lower for the first two updates only
    system, recorder, val = _train(tmp_path, demo_path, decay)
    expected = [w.clone() for w in recorder.steps[0]]  # the average starts at the first step's weights
    for n, weights in enumerate(recorder.steps[1:], start=1):
        d = min(decay, (1 + n) / (10 + n))
        expected = [d * a + (1 - d) * w for a, w in zip(expected, weights, strict=True)]
    final = [p.detach() for p in system.model.parameters() if p.requires_grad]
    assert len(recorder.steps) == 6
    for got, want in zip(final, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(got, raw) for got, raw in zip(final, recorder.steps[-1], strict=True))  # not the raw weights
    # every validation scored the averaged model, the last one exactly what evaluation gets
    assert system.last_val_step == 6
    loss, _ = system.validate_now(val)
    system.buffer.flush()
    assert system.buffer.values("val/loss")[-1] == pytest.approx(float(loss), rel=1e-5)


def test_the_decay_warms_up_so_short_runs_are_not_pinned_to_their_first_steps():
    from stx.train.callbacks import ema_decay_at

    assert float(ema_decay_at(torch.tensor(1), 0.99)) == pytest.approx(2 / 11)
    assert float(ema_decay_at(torch.tensor(5000), 0.99)) == pytest.approx(0.99)


def test_no_average_keeps_the_last_step(tmp_path, demo_path):
    system, recorder, _ = _train(tmp_path, demo_path, 0.0, steps=3)
    final = [p.detach() for p in system.model.parameters() if p.requires_grad]
    for got, raw in zip(final, recorder.steps[-1], strict=True):
        np.testing.assert_array_equal(got.numpy(), raw.numpy())
