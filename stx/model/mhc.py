"""Manifold-Constrained Hyper-Connections (mHC, arXiv 2512.24880) around pretrained layers.

The residual stream is widened to n streams X = [x_1 .. x_n] ([B, S, n, C]). Each wrapped
decoder layer with branch F computes

    X' = H_res X + H_post^T F(H_pre X)

with H_pre = sigmoid(.) and H_post = 2 sigmoid(.) (non-negative, 1 x n) and H_res projected
onto the doubly stochastic matrices (Sinkhorn-Knopp on exp of its logits, or exactly as a
convex combination of permutation matrices, "birkhoff"). A Llama layer adds its own
residual in its `forward`; mHC calls its `branch` instead, F(h) = layer(h) - h computed
without the residual (no cancellation under bf16), and carries F in fp32.

Identity at initialisation (so a pretrained ST computes exactly what it did): streams
start as copies of h and are averaged at the end; any doubly stochastic H_res maps copies
to copies; H_post = 2 sigmoid(0) = 1; H_pre sums to 1 but is not uniform (0.7 on stream
l mod n, 0.3 shared by the others): with uniform H_pre every stream gets the same gradient forever
and mHC collapses to a plain residual. Dynamic (input-dependent) coefficients add
alpha * (RMSNorm(vec X) @ phi) with phi = 0 and alpha = 0.01 at init (the paper's gate),
no tanh.

The backbone's unmodified layer loop carries the streams between layers (it only hands each
layer's output to the next): static mixing as [n, B, S, C], stream-major, so that mixing is
one matrix product; dynamic mixing token-major, packed in the features ([B, S, n*C]), for
the per-token products.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
from typing import Any

import torch
from torch import nn

from stx.config import MhcConfig

PRIMARY = 0.7  # H_pre weight of a layer's primary stream; the others share 0.3 (0.1 each for n = 4)
RES_INIT = 3.0  # Sinkhorn(3 I): diagonal 0.87 for n = 4; soft enough to keep gradients alive


def sinkhorn(logits: torch.Tensor, iters: int) -> torch.Tensor:
    """Doubly stochastic projection of exp(logits) [..., n, n]: columns, then rows (fp32).

    Normalised by sums in linear space rather than by logsumexp in log space: the same
    matrices to float32 rounding (tested), at a third of the cost of the tiny ops this
    runs 20 times per layer and step. Logits are shifted by their maximum (the result does
    not change) and gaps beyond 60 nats are clamped (entries below e^-60 of the largest;
    far outside what fine-tuning reaches from H_res = Sinkhorn(3 I)), so no row or column
    can underflow to all zeros. The backward is the exact gradient of these iterations,
    written out (`_Sinkhorn`): 3 small operations per normalisation instead of autograd's 6-8.
    """
    return _Sinkhorn.apply(logits, iters)


class _Sinkhorn(torch.autograd.Function):
    """Unrolled Sinkhorn with a hand-written backward in log space.

    A normalisation z' = z / sum_axis(z) is u' = u - logsumexp_axis(u) for u = log z, whose
    gradient is du = du' - z' sum_axis(du'); the output's is g * z. So the backward walks
    the saved normalised matrices once, with no division and no autograd graph.
    """

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, iters: int) -> torch.Tensor:  # type: ignore[override]
        # The batch of matrices is stored last, [n, n, T] contiguous: row and column sums are
        # then sums of contiguous [T] vectors, vectorised; over the trailing n = 4 of [T, n, n]
        # they took twice as long (dynamic mHC's per-token H_res runs this 4 layers x 20 times
        # per step). Elementwise ops keep their input's strides, hence the explicit copy.
        lead, n = logits.shape[:-2], logits.shape[-1]
        u = logits.float().reshape(-1, n, n).permute(1, 2, 0).contiguous()
        shifted = u - u.amax((0, 1), keepdim=True)
        z = shifted.clamp_min(-60.0).exp()
        steps = []
        for _ in range(iters):
            z = z / z.sum(0, keepdim=True)
            steps.append(z)
            z = z / z.sum(1, keepdim=True)
            steps.append(z)
        ctx.save_for_backward(shifted > -60.0, z, *steps)
        ctx.lead, ctx.in_dtype = lead, logits.dtype
        return z.permute(2, 0, 1).reshape(*lead, n, n)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        open_, out, *steps = ctx.saved_tensors
        n = grad.shape[-1]
        g = grad.float().reshape(-1, n, n).permute(1, 2, 0).contiguous() * out
        for k in range(len(steps) - 1, -1, -1):
            g = g - steps[k] * g.sum(1 if k % 2 else 0, keepdim=True)
        g = g * open_
        return g.permute(2, 0, 1).reshape(*ctx.lead, n, n).to(ctx.in_dtype), None


def full_precision(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast off for the stream arithmetic: the streams are the residual path and stay fp32
    under bf16 mixed precision (autocast would run their matrix products in bf16); the branch F
    runs outside, under the caller's autocast."""
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def permutation_matrices(n: int) -> torch.Tensor:
    """All n! permutation matrices [n!, n, n], identity first."""
    eye = torch.eye(n)
    return torch.stack([eye[list(p)] for p in itertools.permutations(range(n))])


def birkhoff(weights_logits: torch.Tensor, perms: torch.Tensor) -> torch.Tensor:
    """Softmax-weighted combination of permutation matrices: exactly doubly stochastic."""
    w = torch.softmax(weights_logits.float(), dim=-1)
    return torch.einsum("...k,kij->...ij", w, perms)


def ds_error(h: torch.Tensor) -> torch.Tensor:
    """Largest deviation of a row or column sum from 1."""
    return torch.maximum((h.sum(-1) - 1).abs().amax(), (h.sum(-2) - 1).abs().amax())


def row_entropy(h: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of the rows of H_res."""
    p = h.clamp_min(1e-12)
    return -(p * p.log()).sum(-1).mean()


class MHCCoefficients(nn.Module):
    """H_pre, H_post, H_res of one layer, static (biases) or dynamic (+ gated projections)."""

    def __init__(self, width: int, layer_index: int, cfg: MhcConfig):
        super().__init__()
        n = cfg.streams
        self.n, self.iters, self.projection, self.dynamic = n, cfg.sinkhorn_iters, cfg.projection, cfg.dynamic
        if n == 1:
            pre = torch.full((1,), 30.0)  # one stream: H_pre = sigmoid(30) = 1, mHC is the plain residual
        else:
            other = (1 - PRIMARY) / (n - 1)
            pre = torch.full((n,), math.log(other / (1 - other)))
            pre[layer_index % n] = math.log(PRIMARY / (1 - PRIMARY))
        self.b_pre = nn.Parameter(pre)
        self.b_post = nn.Parameter(torch.zeros(n))
        if cfg.projection == "birkhoff":
            self.register_buffer("perms", permutation_matrices(n), persistent=False)
            k = math.factorial(n)
            res = torch.zeros(k)
            if k > 1:
                res[0] = math.log(0.8 * (k - 1) / 0.2)  # 80% identity, the rest spread evenly
            self.b_res = nn.Parameter(res)
        else:
            self.b_res = nn.Parameter(RES_INIT * torch.eye(n))
        if cfg.dynamic:
            n_res = self.b_res.numel()
            self.phi = nn.Parameter(torch.zeros(n * width, 2 * n + n_res))
            self.alpha = nn.Parameter(torch.full((3,), 0.01))

    def _res(self, logits: torch.Tensor) -> torch.Tensor:
        if self.projection == "birkhoff":
            return birkhoff(logits, self.perms)
        return sinkhorn(logits, self.iters)

    def forward(self, x: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, S, n, C] -> H_pre [.., n], H_post [.., n], H_res [.., n, n] (static: no batch dims,
        and x is not read)."""
        pre, post, res = self.b_pre.float(), self.b_post.float(), self.b_res.float()
        shared = self.__dict__.get("shared")
        if shared is not None:  # static: projected once per forward for every layer (StaticMixing)
            return torch.sigmoid(pre), 2 * torch.sigmoid(post), shared.h_res[self.__dict__["slot"]]
        if self.dynamic and x is not None:
            n = self.n
            flat = x.float().flatten(-2)
            # RMSNorm(vec x) @ phi as (vec x @ phi) / rms(vec x): no normalised copy of the streams, and a
            # backward of one norm and one product (0.82 against 1.58 ms a layer at stx-mini, 1 thread)
            inv_rms = torch.rsqrt(torch.linalg.vector_norm(flat, dim=-1, keepdim=True).square() / flat.shape[-1]
                                  + 1e-6)
            proj = (flat @ self.phi.float()) * inv_rms
            # b + alpha * proj for H_pre, H_post and H_res in one pass: [.., 2n + n_res]
            alpha = self.alpha.float()
            gates = torch.cat([alpha[0].expand(n), alpha[1].expand(n), alpha[2].expand(res.numel())])
            coefs = torch.addcmul(torch.cat([pre, post, res.flatten()]), proj, gates)
            pre, post, res = coefs[..., :n], coefs[..., n:2 * n], coefs[..., 2 * n:]
            if self.projection == "sinkhorn":
                res = res.unflatten(-1, (n, n))
        return torch.sigmoid(pre), 2 * torch.sigmoid(post), self._res(res)


class StaticMixing:
    """The static H_res of every layer of a backbone, projected together once per forward.

    Static coefficients depend on parameters only, so the L layers' Sinkhorn projections
    are one batched call ([L, n, n]) made when the first layer runs, instead of L chains of
    20 tiny operations each (on a CPU these launches were a large part of mHC's overhead).
    Held by the coefficient modules outside their module tree: no parameters, nothing in a
    state dict, and a deep copy (the weight average's) gets its own.
    """

    def __init__(self, coefficients: list[MHCCoefficients]):
        self.coefficients = coefficients
        self.h_res = torch.empty(0)
        self.dtype = torch.float32  # the backbone's hidden dtype, set by the first layer
        for slot, coef in enumerate(coefficients):
            coef.__dict__["shared"], coef.__dict__["slot"] = self, slot

    def refresh(self) -> None:
        """Project every layer's H_res (called by the first layer of each forward)."""
        first = self.coefficients[0]
        self.h_res = first._res(torch.stack([c.b_res.float() for c in self.coefficients]))

    def release(self) -> None:
        """Drop the projection (called by the last layer): no graph is held between forwards."""
        self.h_res = torch.empty(0)

    def __deepcopy__(self, memo: dict) -> StaticMixing:
        new = StaticMixing.__new__(StaticMixing)
        memo[id(self)] = new
        new.coefficients = copy.deepcopy(self.coefficients, memo)
        new.h_res = torch.empty(0)  # a projection in flight belongs to the original's graph
        new.dtype = self.dtype
        return new


class MHCLayer(nn.Module):
    """A pretrained decoder layer (`block`) inside an mHC residual (see the module docstring).

    Deliberately not called `base_layer`: peft walks attributes of that name.
    """

    def __init__(self, block: nn.Module, layer_index: int, n_layers: int, width: int, cfg: MhcConfig):
        super().__init__()
        self.block = block
        self.mhc = MHCCoefficients(width, layer_index, cfg)
        self.n, self.width = cfg.streams, width
        self.first, self.last = layer_index == 0, layer_index == n_layers - 1
        self.last_h_res: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shared = self.mhc.__dict__.get("shared")
        if shared is not None:
            return self._forward_static(hidden_states, shared)
        return self._forward_dynamic(hidden_states)

    def _branch(self, x_in: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """F(h) = layer(h) - h, in fp32."""
        return self.block.branch(x_in.to(dtype)).float()

    def _forward_static(self, hidden_states: torch.Tensor, shared: StaticMixing) -> torch.Tensor:
        """Static mixing with the streams stream-major, [n, B, S, C] between layers: reading them
        is then one plain matrix product [n + 1, n] x [n, B*S*C] (a token-major layout needs a
        transpose copy or a batch of tiny products, 4-10x slower forward and backward)."""
        x = hidden_states.float()
        with full_precision(x.device.type):
            if self.first:  # every layer's H_res, in fp32 (autocast would run Birkhoff's einsum in bf16)
                shared.refresh()
                shared.dtype = hidden_states.dtype
            h_pre, h_post, h_res = self.mhc(None)
            self.last_h_res = h_res.detach()
            read = torch.cat([h_pre.unsqueeze(0), h_res], 0)  # H_pre and H_res read the same streams: [n + 1, n]
            if self.first:  # the streams start as copies of h: reading them is a row sum times h (a k = 1 product)
                both = (read.sum(-1, keepdim=True) @ x.reshape(1, -1)).view(self.n + 1, *x.shape)
            else:
                both = (read @ x.reshape(self.n, -1)).view(self.n + 1, *x.shape[1:])
            x_in, mixed = both.split([1, self.n])  # one concatenation backward, not two zero-filled copies and a sum
        branch = self._branch(x_in.squeeze(0), shared.dtype)
        with full_precision(x.device.type):
            # H_post^T F as a rank-1 update: its backward is two matrix-vector products, where a broadcast
            # multiply-add's is two full-size products and two reductions (2.8x slower at stx-mini)
            x_next = torch.addr(mixed.reshape(self.n, -1), h_post, branch.reshape(-1)).view(mixed.shape)
        if self.last:
            shared.release()
            return x_next.mean(0).to(shared.dtype)
        return x_next.to(shared.dtype)

    def _forward_dynamic(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Per-token mixing, the streams token-major and packed in the features ([B, S, n*C])."""
        b, s = hidden_states.shape[:2]
        if self.first:
            x = hidden_states.float().unsqueeze(-2).expand(b, s, self.n, self.width)
        else:
            x = hidden_states.float().view(b, s, self.n, self.width)
        with full_precision(x.device.type):
            h_pre, h_post, h_res = self.mhc(x)
            self.last_h_res = h_res.detach().mean((0, 1))
            read = torch.cat([h_pre.unsqueeze(-2), h_res], -2)  # [B, S, n + 1, n]
            if self.first:
                both = read.sum(-1, keepdim=True) * x[..., :1, :]
            else:  # a batch of [n + 1, n] x [n, C] products: 4-10x faster than broadcast-multiply-and-sum
                both = torch.matmul(read, x)
            x_in, mixed = both.split([1, self.n], -2)
        branch = self._branch(x_in.squeeze(-2), hidden_states.dtype)
        with full_precision(x.device.type):
            # a batch of rank-1 updates [n, 1] x [1, C]: faster forward and backward than a broadcast multiply-add
            x_next = torch.baddbmm(mixed.reshape(-1, self.n, self.width), h_post.reshape(-1, self.n, 1),
                                   branch.reshape(-1, 1, self.width)).view(mixed.shape)
        return (x_next.mean(-2) if self.last else x_next.flatten(-2)).to(hidden_states.dtype)


def apply_mhc(backbone: nn.Module, cfg: MhcConfig) -> list[MHCLayer]:
    """Wrap every decoder layer of the backbone in place; returns the wrappers."""
    layers = backbone.layers
    width = backbone.config.hidden_size
    wrapped = [MHCLayer(layer, i, len(layers), width, cfg) for i, layer in enumerate(layers)]
    for i, layer in enumerate(wrapped):
        layers[i] = layer
    if not cfg.dynamic and wrapped:
        StaticMixing([layer.mhc for layer in wrapped])
    return wrapped


def mhc_layers(model: nn.Module) -> list[MHCLayer]:
    """The mHC wrappers of a model, in layer order."""
    return [m for m in model.modules() if isinstance(m, MHCLayer)]


@torch.no_grad()
def mhc_stats(layers: list[MHCLayer]) -> dict[str, float]:
    """`mhc/ds_error`, `mhc/gain` (max abs row sum of the product of all H_res) and
    `mhc/entropy` (mean row entropy), from each layer's latest H_res."""
    mats = [layer.last_h_res for layer in layers if layer.last_h_res is not None]
    if not mats:
        return {}
    product = mats[0]
    for m in mats[1:]:
        product = m @ product
    return {
        "mhc/ds_error": float(max(ds_error(m) for m in mats)),
        "mhc/gain": float(product.abs().sum(-1).max()),
        "mhc/entropy": float(torch.stack([row_entropy(m) for m in mats]).mean()),
    }


def count_mhc_parameters(model: nn.Module) -> int:
    """Parameters of all mHC coefficient modules."""
    return sum(p.numel() for layer in mhc_layers(model) for p in layer.mhc.parameters())
