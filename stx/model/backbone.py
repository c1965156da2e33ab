"""ST's backbone: a bidirectional Llama over a set of cells, without tokens or positions.

The same layers and parameter names as a transformers `LlamaModel` (`layers.N.self_attn.q_proj`,
`layers.N.mlp.gate_proj`, `layers.N.input_layernorm`, `norm`, the unused `embed_tokens`), so
arc-state checkpoints load unchanged, and the same function to float32 rounding (tested
against `LlamaModel` with arc-state's no-op rotary embedding and an all-zero mask).

Written out because ST uses none of what a language model's stack is for: no tokens (the
inputs are embeddings; `embed_tokens` is frozen at zero and only kept for the checkpoint's
keys), no positions (a set has no order: arc-state replaces the rotary embedding by
cos = 1, sin = 0, which `LlamaModel` still multiplies through, twice per layer, forward
and backward), no causal or padding mask (every cell attends to every cell: plain SDPA),
no cache and no output records. `LlamaModel` spends about 13% of a backbone training step
on those at the demo's size (hidden 128, 4 layers, 8 x 32 cells) and its modeling code
changes between transformers releases (arc-state's mask override stopped working in 5.x).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from stx.errors import StxError

# transformers' names for the MLP activation (`hidden_act`), as its ACT2FN computes them
ACTIVATIONS = {
    "silu": F.silu, "swish": F.silu, "gelu": F.gelu, "relu": F.relu,
    "gelu_new": partial(F.gelu, approximate="tanh"), "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),
}


@dataclass
class BackboneConfig:
    """The `LlamaConfig` fields that fix the backbone, with `LlamaConfig`'s defaults."""

    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"
    attention_bias: bool = False
    mlp_bias: bool = False
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    vocab_size: int = 32000

    def __post_init__(self) -> None:
        for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise StxError(f"backbone {key}: expected a positive integer, got {value!r}")
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.hidden_act not in ACTIVATIONS:
            raise StxError(f"backbone hidden_act: {self.hidden_act!r} is not supported; "
                           f"expected one of {', '.join(ACTIVATIONS)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise StxError(f"backbone num_attention_heads: {self.num_attention_heads} is not a "
                           f"multiple of num_key_value_heads {self.num_key_value_heads}")

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any], hidden_size: int) -> BackboneConfig:
        """From a checkpoint's `transformer_backbone_kwargs` (keys it does not use are ignored,
        as `LlamaConfig` keeps them without effect); the hidden size is the model's."""
        known = {f.name for f in fields(cls)} - {"hidden_size"}
        return cls(**{k: v for k, v in kwargs.items() if k in known}, hidden_size=hidden_size)

    def to_dict(self) -> dict[str, Any]:
        """Plain data; peft reads a model's config through this."""
        return {**asdict(self), "model_type": "llama", "tie_word_embeddings": False}


class RMSNorm(nn.Module):
    """Llama's RMSNorm: normalised in float32, scaled after casting back (as transformers does)."""

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), None, self.eps).to(x.dtype)


class Attention(nn.Module):
    """Multi-head (or grouped-query) self-attention of every cell to every cell of its set."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.dropout = cfg.attention_dropout
        width, bias = cfg.hidden_size, cfg.attention_bias
        self.q_proj = nn.Linear(width, self.heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(width, self.kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(width, self.kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, width, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        if self.kv_heads != self.heads:  # grouped-query: query head i reads key/value head i // group (as Llama)
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                             scale=self.head_dim ** -0.5)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, self.heads * self.head_dim))


class MLP(nn.Module):
    """Llama's gated MLP: down(act(gate(x)) * up(x))."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        width, inner, bias = cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias
        self.gate_proj = nn.Linear(width, inner, bias=bias)
        self.up_proj = nn.Linear(width, inner, bias=bias)
        self.down_proj = nn.Linear(inner, width, bias=bias)
        self.act = ACTIVATIONS[cfg.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """x + F(x), F(x) = a + mlp(norm(x + a)) with a = attn(norm(x)) (pre-norm, two residuals)."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """F(x), what the layer adds to its input (mHC mixes it into its streams itself)."""
        a = self.self_attn(self.input_layernorm(x))
        return a + self.mlp(self.post_attention_layernorm(x + a))


class Backbone(nn.Module):
    """The layers, then the final norm: [B, S, H] -> [B, S, H]."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.config = cfg
        # kept (frozen, zero) only so that checkpoints' `embed_tokens.weight` has a home
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        for module in self.modules():  # transformers' Llama initialisation (the `scratch` variant starts here)
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=cfg.initializer_range)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        self.embed_tokens.weight.requires_grad_(False)
        nn.init.zeros_(self.embed_tokens.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


def build_backbone(kwargs: dict[str, Any], hidden_dim: int) -> Backbone:
    """The backbone a checkpoint's `transformer_backbone_kwargs` describe, at the model's width."""
    return Backbone(BackboneConfig.from_kwargs(kwargs, hidden_dim))
