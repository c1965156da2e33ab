"""The optimizer stx trains with: fused AdamW where Lightning allows it, the same updates."""

from __future__ import annotations

import torch
from torch import nn

from stx.config import load_config
from stx.tracking.buffer import MetricBuffer
from stx.train.module import STSystem


def _system(**overrides) -> STSystem:
    cfg = load_config(None, [f"trainer.{k}={v}" for k, v in overrides.items()])
    torch.manual_seed(0)
    return STSystem(nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2)), cfg.trainer, MetricBuffer())


def test_full_precision_trains_with_fused_adamw_and_the_same_updates():
    fused, plain = _system(), _system()
    optimizer = fused.configure_optimizers()["optimizer"]
    assert all(g["fused"] for g in optimizer.param_groups)
    fused_groups = optimizer.param_groups
    for g in fused_groups:
        g["lr"] = 1e-2  # past the warmup, where the schedule has set the lr to 0
    reference = torch.optim.AdamW([{"params": g["params"], "weight_decay": g["weight_decay"], "lr": 1e-2}
                                   for g in plain.configure_optimizers()["optimizer"].param_groups])
    x = torch.randn(16, 4)
    for system, opt in ((fused, optimizer), (plain, reference)):
        for _ in range(3):
            opt.zero_grad()
            system.model(x).pow(2).mean().backward()
            opt.step()
    for a, b in zip(fused.model.parameters(), plain.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_mixed_precision_with_clipping_keeps_pytorchs_default(monkeypatch):
    """Lightning refuses to clip gradients for an optimizer that unscales them itself (fused)."""
    system = _system()

    class Trainer:
        precision = "bf16-mixed"

    monkeypatch.setattr(STSystem, "trainer", property(lambda self: Trainer()))
    assert system._fused_adamw() is None
    unclipped = _system(grad_clip=0)
    assert unclipped._fused_adamw() is True
