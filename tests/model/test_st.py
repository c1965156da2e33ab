from __future__ import annotations

import pytest
import torch

from stx.data import keys
from stx.model.losses import energy_distance, energy_loss
from stx.model.st import ModelSpec, StateTransition, count_parameters

BACKBONE = {"intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 4, "head_dim": 8}


def tiny(backbone: dict | None = None, **kw) -> StateTransition:
    torch.manual_seed(0)
    spec = ModelSpec(input_dim=12, output_dim=12, hidden_dim=32, pert_names=("ctrl", "a", "b"),
                     backbone={**BACKBONE, **(backbone or {})}, dropout=0.0, **kw)
    return StateTransition(spec).eval()


def batch(b=2, s=6, d=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {keys.CTRL_EMB: torch.randn(b, s, d, generator=g), keys.PERT_INDEX: torch.tensor([1, 2])[:b],
            keys.BATCH_INDEX: torch.zeros(b, s, dtype=torch.long)}


def test_output_shape():
    assert tiny()(batch()).shape == (2, 6, 12)


def test_attention_is_bidirectional():
    model, x = tiny(), batch()
    y = model(x)
    x2 = {**x, keys.CTRL_EMB: x[keys.CTRL_EMB].clone()}
    x2[keys.CTRL_EMB][:, -1] += 1.0
    # changing the last cell changes the first cell's prediction: no causal mask
    assert (model(x2)[:, 0] - y[:, 0]).abs().max() > 1e-4


def test_set_model_is_permutation_equivariant():
    model, x = tiny(), batch()
    perm = torch.randperm(6)
    y = model(x)
    y_perm = model({**x, keys.CTRL_EMB: x[keys.CTRL_EMB][:, perm]})
    # no position embedding: permuting cells permutes the predictions
    torch.testing.assert_close(y_perm, y[:, perm], atol=1e-5, rtol=1e-5)


def test_relu_head_clips_and_default_does_not():
    assert (tiny()(batch()) < 0).any()
    assert (tiny(output_relu=True)(batch()) >= 0).all()


def test_batch_encoder_adds_batch_information():
    spec_kw = {"batch_names": ("p1", "p2"), "batch_encoder": True}
    model, x = tiny(**spec_kw), batch()
    x2 = {**x, keys.BATCH_INDEX: torch.ones(2, 6, dtype=torch.long)}
    assert (model(x) - model(x2)).abs().max() > 1e-5


def test_token_embeddings_are_frozen_and_counted():
    model = tiny()
    trainable, total = count_parameters(model)
    assert not model.transformer_backbone.embed_tokens.weight.requires_grad
    assert trainable == total - model.transformer_backbone.embed_tokens.weight.numel()


def test_energy_distance_hand_values():
    x = torch.tensor([[[0.0], [2.0]]])
    y = torch.tensor([[[1.0], [3.0]]])
    # E|x-y| = (1+3+1+1)/4 = 1.5, E|x-x'| = (0+2+2+0)/4 = 1, E|y-y'| = 1 -> 2*1.5-1-1 = 1
    assert energy_distance(x, y).item() == pytest.approx(1.0)
    assert energy_distance(x, x).item() == pytest.approx(0.0)
    far = energy_distance(x, y + 10).item()
    assert far > 1.0
    assert energy_loss(x, y).item() == pytest.approx(1.0)
