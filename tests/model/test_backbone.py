"""stx's backbone against transformers' `LlamaModel` run the way arc-state runs it."""

from __future__ import annotations

import pytest
import torch

from stx.errors import StxError
from stx.model.backbone import BackboneConfig, build_backbone

KWARGS = {"intermediate_size": 48, "num_hidden_layers": 3, "num_attention_heads": 4, "vocab_size": 8,
          "max_position_embeddings": 16, "bidirectional_attention": True}  # the last two: ignored, as by Llama


def _llama(kwargs: dict, hidden: int):
    """transformers' LlamaModel with arc-state's no-op rotary embedding (cos 1, sin 0)."""
    transformers = pytest.importorskip("transformers")

    class NoRoPE(torch.nn.Module):
        def __init__(self, head_dim):
            super().__init__()
            self.head_dim = head_dim

        def forward(self, x, position_ids):
            return x.new_ones(*x.shape[:2], self.head_dim), x.new_zeros(*x.shape[:2], self.head_dim)

    cfg = transformers.LlamaConfig(**kwargs, hidden_size=hidden)
    model = transformers.LlamaModel(cfg)
    model.rotary_emb = NoRoPE(cfg.head_dim)
    return model


def _run_llama(llama, x):
    b, s, _ = x.shape
    return llama(inputs_embeds=x, attention_mask=x.new_zeros(b, 1, s, s)).last_hidden_state


@pytest.mark.parametrize("kwargs", [KWARGS, {**KWARGS, "num_key_value_heads": 2, "head_dim": 6,
                                             "attention_bias": True, "mlp_bias": True, "hidden_act": "gelu"}],
                         ids=["default", "gqa-bias-gelu"])
def test_same_function_and_gradients_as_transformers_llama(kwargs):
    torch.manual_seed(0)
    llama = _llama(kwargs, 32)
    ours = build_backbone(kwargs, 32)
    with torch.no_grad():  # away from the initialisation, so biases and norms matter
        for p in llama.parameters():
            p.add_(0.1 * torch.randn_like(p))
    missing = ours.load_state_dict(llama.state_dict(), strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    x = torch.randn(3, 7, 32, requires_grad=True)
    want, got = _run_llama(llama, x), ours(x)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    g_want = torch.autograd.grad(want.square().sum(), [x, llama.layers[1].mlp.up_proj.weight])
    g_got = torch.autograd.grad(got.square().sum(), [x, ours.layers[1].mlp.up_proj.weight])
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_bf16_autocast_matches_transformers_llama():
    torch.manual_seed(0)
    llama = _llama(KWARGS, 32)
    ours = build_backbone(KWARGS, 32)
    ours.load_state_dict(llama.state_dict())
    x = torch.randn(2, 5, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, got = _run_llama(llama, x), ours(x)
    assert got.dtype == want.dtype
    torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)


def test_config_defaults_are_llamas():
    transformers = pytest.importorskip("transformers")
    ours = BackboneConfig(hidden_size=64, num_attention_heads=8)
    theirs = transformers.LlamaConfig(hidden_size=64, num_attention_heads=8).to_dict()
    for key, value in ours.to_dict().items():
        if key in theirs and key not in ("model_type",):
            assert theirs[key] == value, key


def test_backbone_pickles():  # a ddp_spawn strategy pickles the model
    import pickle

    ours = build_backbone({**KWARGS, "hidden_act": "gelu_new"}, 32)
    x = torch.randn(2, 3, 32)
    torch.testing.assert_close(pickle.loads(pickle.dumps(ours))(x), ours(x))


def test_layer_branch_is_what_the_layer_adds():
    torch.manual_seed(0)
    layer = build_backbone(KWARGS, 32).layers[0]
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(layer(x), x + layer.branch(x))


def test_token_embedding_is_frozen_zero_and_init_is_llamas():
    torch.manual_seed(0)
    ours = build_backbone({**KWARGS, "hidden_size": 999}, 64)  # the model's width wins over the kwargs'
    assert ours.config.hidden_size == 64 and ours.config.head_dim == 16
    assert not ours.embed_tokens.weight.requires_grad and not ours.embed_tokens.weight.any()
    weight = ours.layers[0].mlp.gate_proj.weight
    assert abs(weight.std().item() - 0.02) < 0.002  # normal(0, initializer_range), as transformers


@pytest.mark.parametrize("kwargs, match", [
    ({"hidden_act": "mish"}, "hidden_act: 'mish' is not supported"),
    ({"num_attention_heads": 4, "num_key_value_heads": 3}, "not a multiple of num_key_value_heads 3"),
    ({"num_attention_heads": 0}, "num_attention_heads: expected a positive integer, got 0"),
])
def test_unsupported_backbones_are_named(kwargs, match):
    with pytest.raises(StxError, match=match):
        build_backbone(kwargs, 32)
