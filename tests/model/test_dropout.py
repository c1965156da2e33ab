"""stx's CPU dropout: the distribution, scaling, gradient and eval behaviour of nn.Dropout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stx.config import LoraConfig
from stx.model.dropout import Dropout, keep_mask, use_fast_dropout
from stx.model.lora import apply_lora
from stx.model.st import ModelSpec, StateTransition


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_drops_the_asked_fraction_and_stays_unbiased(p: float) -> None:
    torch.manual_seed(0)
    x = torch.ones(2000, 1001)  # an odd count: the last 64-bit draw is partly used
    y = Dropout(p).train()(x)
    dropped = (y == 0).float().mean().item()
    assert dropped == pytest.approx(p, abs=0.002)
    assert y.mean().item() == pytest.approx(1.0, abs=0.005)
    kept = y[y != 0]
    assert torch.allclose(kept, kept[0].expand_as(kept)) and kept[0] > 1.0


def test_every_lane_of_a_draw_is_uniform() -> None:
    # a 63-bit draw has a top lane whose sign bit is always 0: masking to 15 bits fixes it
    torch.manual_seed(1)
    mask, _ = keep_mask(torch.Size([400_000, 4]), 0.25, torch.device("cpu"))
    per_lane = (~mask).float().mean(0)
    assert torch.allclose(per_lane, torch.full((4,), 0.25), atol=0.004), per_lane


def test_gradient_is_the_mask_times_the_scale() -> None:
    torch.manual_seed(2)
    x = torch.randn(64, 50, requires_grad=True)
    layer = Dropout(0.3).train()
    y = layer(x)
    y.backward(torch.ones_like(y))
    kept = y != 0
    scale = (y[kept] / x[kept]).mean()
    assert torch.allclose(x.grad, kept.float() * scale)


def test_eval_and_zero_p_are_identity_and_seeded_runs_repeat() -> None:
    x = torch.randn(10, 10)
    assert torch.equal(Dropout(0.5).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    torch.manual_seed(3)
    a = Dropout(0.5).train()(x)
    torch.manual_seed(3)
    b = Dropout(0.5).train()(x)
    assert torch.equal(a, b) and not torch.equal(a, x)


def test_model_and_lora_layers_use_it() -> None:
    spec = ModelSpec(input_dim=8, output_dim=8, hidden_dim=16, pert_names=("a", "b"), dropout=0.1,
                     backbone={"intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                               "num_key_value_heads": 2, "head_dim": 8, "vocab_size": 4})
    model = apply_lora(StateTransition(spec), LoraConfig(dropout=0.05))
    plain = [name for name, m in model.named_modules() if type(m) is nn.Dropout]
    assert plain == []
    assert sum(isinstance(m, Dropout) for m in model.modules()) >= 7 + 2
    assert use_fast_dropout(nn.Sequential(nn.Dropout(0.2)))[0].p == 0.2
