from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from stx.config import LoraConfig, MhcConfig
from stx.model.lora import apply_lora, freeze_for_finetuning
from stx.model.mhc import (
    MHCCoefficients,
    apply_mhc,
    birkhoff,
    count_mhc_parameters,
    ds_error,
    mhc_layers,
    mhc_stats,
    permutation_matrices,
    sinkhorn,
)
from tests.model.test_st import batch, tiny


def test_sinkhorn_is_doubly_stochastic_and_improves_with_iterations():
    logits = torch.empty(64, 4, 4).uniform_(-5, 5, generator=torch.Generator().manual_seed(0))
    errors = [ds_error(sinkhorn(logits, k)).item() for k in (1, 3, 10, 30, 100)]
    assert errors == sorted(errors, reverse=True)
    # worst case over 64 random matrices: what 10 iterations (the study's setting) leave is
    # visible, hence mhc/ds_error; near-identity logits converge far faster
    assert errors[2] < 0.1 and errors[4] < 1e-3
    assert ds_error(sinkhorn(3.0 * torch.eye(4), 10)).item() < 1e-6
    assert ds_error(sinkhorn(3.0 * torch.eye(4) + 0.1 * logits[0], 10)).item() < 1e-2
    assert (sinkhorn(logits, 10) >= 0).all()


def _log_space_sinkhorn(logits, iters):
    z = logits.double()
    for _ in range(iters):
        z = z - torch.logsumexp(z, dim=-2, keepdim=True)
        z = z - torch.logsumexp(z, dim=-1, keepdim=True)
    return z.exp()


def test_sinkhorn_equals_the_log_space_algorithm_even_for_extreme_logits():
    logits = torch.empty(64, 4, 4).uniform_(-5, 5, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(sinkhorn(logits, 10).double(), _log_space_sinkhorn(logits, 10), atol=2e-6, rtol=0)
    # large gaps (up to 50 nats): still the same matrices
    large = torch.tensor([[20.0, -20.0, 0.0], [0.0, 15.0, -30.0], [-10.0, 0.0, 12.0]])
    torch.testing.assert_close(sinkhorn(large, 10).double(), _log_space_sinkhorn(large, 10), atol=1e-6, rtol=0)
    # gaps far beyond exp's float32 range are clamped at 60 nats: no row or column underflows
    # to zeros, so no NaN, and the rows still sum to 1
    h = sinkhorn(torch.tensor([[200.0, -200.0, 0.0], [0.0, 150.0, -300.0], [-100.0, 0.0, 120.0]]), 10)
    assert torch.isfinite(h).all() and (h >= 0).all()
    torch.testing.assert_close(h.sum(-1), torch.ones(3))


def test_sinkhorn_rows_sum_to_one_after_the_last_row_step():
    h = sinkhorn(torch.randn(3, 3), 5)
    torch.testing.assert_close(h.sum(-1), torch.ones(3))


def test_sinkhorn_gradients_flow_and_are_alive_at_the_initial_logits():
    logits = (3.0 * torch.eye(4)).requires_grad_()
    target = torch.rand(4, 4)
    (sinkhorn(logits, 10) * target).sum().backward()
    assert logits.grad.abs().max() > 1e-3


@pytest.mark.parametrize("iters", [1, 3, 10])  # (with no iteration the shift by the maximum is not free)
def test_sinkhorn_gradient_is_autograds_through_the_plain_iterations(iters):
    def plain(logits):
        z = logits.float()
        z = (z - z.amax((-2, -1), keepdim=True)).clamp_min(-60.0).exp()
        for _ in range(iters):
            z = z / z.sum(-2, keepdim=True)
            z = z / z.sum(-1, keepdim=True)
        return z

    torch.manual_seed(0)
    logits = 2 * torch.randn(3, 5, 4, 4)
    logits[0, 0, 1, 2] = -200.0  # a clamped entry: no gradient, as in the plain version
    logits.requires_grad_()
    weights = torch.randn(3, 5, 4, 4)
    got = torch.autograd.grad((sinkhorn(logits, iters) * weights).sum(), logits)[0]
    want = torch.autograd.grad((plain(logits) * weights).sum(), logits)[0]
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert got[0, 0, 1, 2] == 0


def test_birkhoff_is_exactly_doubly_stochastic():
    perms = permutation_matrices(4)
    assert perms.shape == (24, 4, 4) and torch.equal(perms[0], torch.eye(4))
    h = birkhoff(torch.randn(10, 24), perms)
    assert ds_error(h).item() < 1e-6
    logits = torch.randn(24, requires_grad=True)
    (birkhoff(logits, perms) * torch.rand(4, 4)).sum().backward()
    assert logits.grad.abs().max() > 0


def test_initial_coefficients():
    coeffs = MHCCoefficients(8, layer_index=5, cfg=MhcConfig(streams=4))
    pre, post, res = coeffs(torch.randn(2, 3, 4, 8))
    torch.testing.assert_close(pre, torch.tensor([0.1, 0.7, 0.1, 0.1]))  # primary stream 5 mod 4 = 1
    torch.testing.assert_close(post, torch.ones(4))
    assert res.diagonal().min() > 0.85 and ds_error(res) < 1e-3


@pytest.mark.parametrize("n", [1, 2, 4])
@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("projection", ["sinkhorn", "birkhoff"])
def test_identity_at_init(n, dynamic, projection):
    model = tiny()
    before = model(batch())
    apply_mhc(model.transformer_backbone, MhcConfig(streams=n, dynamic=dynamic, projection=projection))
    torch.testing.assert_close(model(batch()), before, atol=1e-5, rtol=0)


def test_static_mixing_is_projected_once_per_forward_and_equals_each_layers_own(monkeypatch):
    import copy

    import stx.model.mhc as mhc_module

    model = tiny()
    layers = apply_mhc(model.transformer_backbone, MhcConfig(streams=4))
    with torch.no_grad():
        for layer in layers:
            layer.mhc.b_res.add_(torch.randn(4, 4))
    calls = []
    monkeypatch.setattr(mhc_module, "sinkhorn", lambda logits, iters: calls.append(logits.shape) or sinkhorn(logits, iters))
    out = model(batch())
    monkeypatch.undo()
    assert calls == [(len(layers), 4, 4)]  # one batched projection for every layer
    for layer in layers:
        torch.testing.assert_close(layer.last_h_res, sinkhorn(layer.mhc.b_res, 10))
    # gradients reach every layer's own logits through the shared projection
    out.pow(2).mean().backward()
    assert all(layer.mhc.b_res.grad.abs().max() > 0 for layer in layers)
    # a deep copy (the weight average's) mixes with its own parameters, not the original's
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for layer in mhc_layers(twin):
            layer.mhc.b_res.zero_()
    twin(batch())
    assert all(torch.allclose(t.last_h_res, torch.full((4, 4), 0.25)) for t in mhc_layers(twin))
    model(batch())
    assert not torch.allclose(layers[0].last_h_res, torch.full((4, 4), 0.25))


def _reference_backbone(model, layers, inputs_embeds):
    """The mHC equations written out stream by stream: X' = H_res X + H_post^T F(H_pre X)."""
    backbone = model.transformer_backbone
    b, s, _ = inputs_embeds.shape
    streams = [inputs_embeds.float()] * layers[0].n
    for layer in layers:
        x = torch.stack(streams, -2)  # [B, S, n, C]
        static = layer.mhc.__dict__.get("shared") is not None
        h_pre, h_post, h_res = layer.mhc(None if static else x)
        h_pre, h_post = h_pre.expand(b, s, -1), h_post.expand(b, s, -1)
        h_res = h_res.expand(b, s, -1, -1)
        x_in = sum(h_pre[..., j, None] * streams[j] for j in range(layer.n))
        branch = layer.block(x_in) - x_in  # the whole layer, residual included (mHC calls its branch)
        streams = [sum(h_res[..., i, j, None] * streams[j] for j in range(layer.n)) + h_post[..., i, None] * branch
                   for i in range(layer.n)]
    return backbone.norm(torch.stack(streams, -2).mean(-2))


@pytest.mark.parametrize("dynamic", [False, True])
def test_mixing_equals_the_equations_written_stream_by_stream(dynamic):
    torch.manual_seed(0)
    model = tiny()
    layers = apply_mhc(model.transformer_backbone, MhcConfig(streams=4, dynamic=dynamic))
    with torch.no_grad():  # away from the identity, so every coefficient matters
        for layer in layers:
            for param in layer.mhc.parameters():
                param.add_(0.5 * torch.randn_like(param))
    seq = torch.randn(2, 5, model.spec.hidden_dim, requires_grad=True)
    got = model.transformer_backbone(seq)
    if not dynamic:
        layers[0].mhc.__dict__["shared"].refresh()
    want = _reference_backbone(model, layers, seq)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)
    grads = torch.autograd.grad(got.square().sum(), [seq, *[layer.mhc.b_res for layer in layers]])
    grads_ref = torch.autograd.grad(want.square().sum(), [seq, *[layer.mhc.b_res for layer in layers]])
    for g, r in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)


class _Elementwise(torch.nn.Module):
    """A decoder layer whose branch autocast leaves alone, so only mHC's own arithmetic can differ."""

    def branch(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sin(h)


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("projection", ["sinkhorn", "birkhoff"])
def test_streams_stay_fp32_under_bf16_autocast(dynamic, projection):
    torch.manual_seed(0)
    backbone = torch.nn.Module()
    backbone.layers = torch.nn.ModuleList([_Elementwise() for _ in range(3)])
    backbone.config = SimpleNamespace(hidden_size=16)
    layers = apply_mhc(backbone, MhcConfig(streams=4, dynamic=dynamic, projection=projection))
    with torch.no_grad():
        for layer in layers:
            for param in layer.mhc.parameters():
                param.add_(0.5 * torch.randn_like(param))
    h = torch.randn(2, 5, 16)

    def run() -> torch.Tensor:
        x = h
        for layer in backbone.layers:
            x = layer(x)
        return x

    want = run()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 products would round the streams (~1e-2)
        got = run()
    assert got.dtype == torch.float32 and all(layer.last_h_res.dtype == torch.float32 for layer in layers)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_dynamic_coefficients_follow_the_papers_formula():
    torch.manual_seed(0)
    coef = MHCCoefficients(8, 1, MhcConfig(streams=3, dynamic=True))
    with torch.no_grad():
        for param in coef.parameters():
            param.add_(torch.randn_like(param))
    x = torch.randn(2, 5, 3, 8)
    flat = x.flatten(-2)
    proj = (flat / flat.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()) @ coef.phi
    h_pre, h_post, h_res = coef(x)
    torch.testing.assert_close(h_pre, torch.sigmoid(coef.b_pre + coef.alpha[0] * proj[..., :3]))
    torch.testing.assert_close(h_post, 2 * torch.sigmoid(coef.b_post + coef.alpha[1] * proj[..., 3:6]))
    res_logits = coef.b_res + coef.alpha[2] * proj[..., 6:].unflatten(-1, (3, 3))
    torch.testing.assert_close(h_res, sinkhorn(res_logits, 10))


def test_parameter_counts():
    static, dynamic = tiny(), tiny()
    apply_mhc(static.transformer_backbone, MhcConfig(streams=4))
    apply_mhc(dynamic.transformer_backbone, MhcConfig(streams=4, dynamic=True))
    assert count_mhc_parameters(static) == 2 * (4 + 4 + 16)  # 24 per layer, as in the notes
    width = 32
    assert count_mhc_parameters(dynamic) == 2 * (24 + 4 * width * 24 + 3)


def test_with_lora_mhc_trains_and_symmetry_breaks():
    torch.manual_seed(0)
    model = tiny()
    model.train()
    apply_mhc(model.transformer_backbone, MhcConfig(streams=4, dynamic=True))
    apply_lora(model, LoraConfig(r=4, dropout=0.0))
    freeze_for_finetuning(model, train_head=False)  # the head would soak up most of 5 steps' change
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(".mhc.b_res" in n for n in names) and any(".mhc.phi" in n for n in names)
    assert any("lora_A" in n for n in names)
    assert not any(n.endswith("q_proj.base_layer.weight") for n in names)
    assert not any(".block.input_layernorm" in n for n in names)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    streams = {}

    def grab(module, args, kwargs, out):
        streams["x"] = out

    layer = mhc_layers(model)[0]
    handle = layer.register_forward_hook(grab, with_kwargs=True)
    target = torch.randn(2, 6, 12)
    for step in range(5):
        loss = (model(batch()) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        if step == 0:
            assert layer.mhc.b_pre.grad.abs().max() > 0 and layer.mhc.b_res.grad.abs().max() > 0
            assert layer.mhc.phi.grad.abs().max() > 0  # scaled by the 0.01 gate, but alive
        opt.step()
    handle.remove()
    model(batch())
    x = streams["x"].view(2, 6, 4, 32)
    assert x.std(dim=2).mean() > 1e-4  # the streams are no longer copies of each other


def test_stats():
    model = tiny()
    apply_mhc(model.transformer_backbone, MhcConfig(streams=4))
    model(batch())
    stats = mhc_stats(mhc_layers(model))
    assert stats["mhc/gain"] == pytest.approx(1.0, abs=1e-4)
    assert stats["mhc/ds_error"] < 1e-3
    assert 0 < stats["mhc/entropy"] < math.log(4)


def test_ddp_style_batches_keep_shapes():
    model = tiny()
    apply_mhc(model.transformer_backbone, MhcConfig(streams=4, dynamic=True))
    # each rank sees its own smaller batch: shapes follow the batch, coefficients are per token
    assert model(batch(b=1)).shape == (1, 6, 12)
    assert model(batch(b=2, s=3)).shape == (2, 3, 12)
