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


def test_the_average_of_trainable_weights_equals_torchs_and_frozen_weights_are_not_touched():
    """EMAWeights updates only trainable parameters and buffers; the parameters must come out
    as torch's AveragedModel averages them (all of them), buffers as the same recursion, an
    integer buffer copied."""
    from stx.train.callbacks import ema_decay_at

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    model[0].requires_grad_(False)
    model.register_buffer("scale", torch.ones(3))
    model.register_buffer("count", torch.zeros((), dtype=torch.long))
    callback, reference = _callback_and_torchs(model, 0.5, torch_buffers=False)
    with torch.no_grad():  # a frozen weight the update must never write
        callback._average_model.module[0].weight.fill_(7.0)
    scale = None
    for step in range(5):
        with torch.no_grad():
            model[1].weight.add_(torch.randn_like(model[1].weight))
            model.scale.mul_(1.5)
            model.count.add_(1)
        d = float(ema_decay_at(torch.tensor(step), 0.5))
        scale = model.scale.clone() if scale is None else d * scale + (1 - d) * model.scale
        callback._update(model)
        reference.update_parameters(model)
        assert int(callback._average_model.n_averaged) == step + 1
    got = callback._average_model.module
    for mine, torchs in zip(list(got.parameters())[1:], list(reference.module.parameters())[1:], strict=True):
        torch.testing.assert_close(mine, torchs)
    torch.testing.assert_close(got.scale, scale)
    assert int(got.count) == 5
    assert not torch.allclose(got[1].weight, model[1].weight)  # an average, not the last step
    assert bool((got[0].weight == 7.0).all())  # frozen: never averaged, never copied
    assert len(callback._pairs[0]) == 3  # the trainable weight and bias, the float buffer


def test_a_resumed_average_goes_on_from_its_count():
    """After a restore (n_averaged > 0) the first update averages; it does not copy."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    callback, reference = _callback_and_torchs(model, 0.9)
    restored = {k: v + 1.0 if v.is_floating_point() else torch.tensor(40) for k, v in reference.state_dict().items()}
    callback._average_model.load_state_dict(restored)
    reference.load_state_dict(restored)
    for _ in range(3):
        with torch.no_grad():
            model.weight.add_(torch.randn_like(model.weight))
        callback._update(model)
        reference.update_parameters(model)
    assert int(callback._average_model.n_averaged) == 43
    for mine, torchs in zip(callback._average_model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(mine, torchs)


def _callback_and_torchs(model: torch.nn.Module, decay: float, torch_buffers: bool = True):
    """An EMAWeights holding its copy of `model`, and torch's AveragedModel of it with the same
    update rule (averaging buffers too unless `torch_buffers` is False)."""
    from functools import partial

    from torch.optim.swa_utils import AveragedModel

    from stx.train.callbacks import EMAWeights, ema_update

    callback = EMAWeights(decay)
    callback._average_model = AveragedModel(model, use_buffers=True, multi_avg_fn=partial(ema_update, decay=decay))
    return callback, AveragedModel(model, use_buffers=torch_buffers, multi_avg_fn=partial(ema_update, decay=decay))
