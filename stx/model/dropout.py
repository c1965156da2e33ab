"""Dropout whose CPU masks cost a quarter of PyTorch's.

PyTorch's CPU dropout draws one Bernoulli sample per element (`bernoulli_`, about 8-17 ns an
element on 2 cores): on a LoRA step that was 15-17% of the time, more than the frozen weights
saved (28 adapters, each dropping its whole input). Here one 64-bit random number gives four
15-bit uniforms, so a mask costs about a quarter of the draws. The drop probability is
rounded to a multiple of 1/32768 (0.05 -> 0.04999) and kept values are scaled by the
rounded keep probability, so the layer stays unbiased. On other devices, and for p = 0,
this is `torch.nn.functional.dropout`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

RESOLUTION = 1 << 15  # 15 uniform bits per 16-bit lane (the top lane of a 63-bit draw has 15)


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> tuple[torch.Tensor, float]:
    """A boolean keep mask of `shape` (each element dropped with probability ~p) and the
    keep probability it was drawn with."""
    threshold = round(p * RESOLUTION)
    n = shape.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_()
    lanes = words.view(torch.int16)[:n].view(shape)
    return (lanes & (RESOLUTION - 1)) >= threshold, 1.0 - threshold / RESOLUTION


class _MaskedScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(mask)
        ctx.scale = scale
        return torch.where(mask, x * scale, 0.0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        (mask,) = ctx.saved_tensors
        return torch.where(mask, grad * ctx.scale, 0.0), None, None


class Dropout(nn.Dropout):
    """`nn.Dropout` with cheap CPU masks (same state, same repr, same eval behaviour)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu" or self.inplace:
            return super().forward(x)
        mask, keep = keep_mask(x.shape, self.p, x.device)
        if keep <= 0.0:
            return torch.zeros_like(x)
        return _MaskedScale.apply(x, mask, 1.0 / keep)


def use_fast_dropout(model: nn.Module) -> nn.Module:
    """Swap every `nn.Dropout` in `model` for `Dropout` in place (no parameters change)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, Dropout(child.p, child.inplace))
    return model
