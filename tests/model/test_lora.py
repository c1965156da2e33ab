from __future__ import annotations

import pytest
import torch

from stx.config import LoraConfig
from stx.errors import StxError
from stx.model.lora import apply_lora, freeze_for_finetuning, merge_lora
from stx.model.st import count_parameters
from tests.model.test_st import batch, tiny


@pytest.mark.parametrize("train_head", [False, True])
def test_lora_at_init_equals_pretrained_and_freezes_the_rest(train_head):
    model = tiny()
    before = model(batch())
    apply_lora(model, LoraConfig(r=4, alpha=8, dropout=0.0))
    freeze_for_finetuning(model, train_head=train_head)
    model.eval()
    torch.testing.assert_close(model(batch()), before, atol=1e-6, rtol=0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    head = ("project_out.", "transformer_backbone.norm.") if train_head else ()
    assert all("lora_" in n or n.startswith(("pert_encoder.", *head)) for n in trainable)
    assert any(n.startswith("project_out.") for n in trainable) == train_head
    assert ("transformer_backbone.norm.weight" in trainable) == train_head
    n_lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    # r x (in + out) per adapted projection, 2 layers: q, k, v, o (32 -> 32) and gate, up (32 -> 64), down
    assert n_lora == 2 * 4 * (4 * (32 + 32) + 2 * (32 + 64) + (64 + 32))
    n_head = sum(p.numel() for p in model.project_out.parameters()) + 32 if train_head else 0
    assert count_parameters(model)[0] == n_lora + sum(p.numel() for p in model.pert_encoder.parameters()) + n_head


def test_only_trainable_params_move_after_a_step():
    model = tiny()
    apply_lora(model, LoraConfig(r=4, dropout=0.0))
    freeze_for_finetuning(model)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(batch()).pow(2).mean().backward()
    opt.step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n


def test_merge_folds_adapters_in():
    model = tiny()
    apply_lora(model, LoraConfig(r=4, dropout=0.0))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p)
    model.eval()
    y = model(batch())
    merge_lora(model)
    assert not any("lora_" in k for k in model.state_dict())
    torch.testing.assert_close(model(batch()), y, atol=1e-5, rtol=1e-5)


def test_unknown_target_module():
    with pytest.raises(StxError, match="model.lora.target_modules: qkv_proj not in the backbone"):
        apply_lora(tiny(), LoraConfig(target_modules=("qkv_proj",)))


def _lora_layers(model):
    from peft.tuners.lora.layer import Linear

    return [m for m in model.modules() if isinstance(m, Linear)]


def _away_from_init(model):
    with torch.no_grad():  # B = 0 at init would hide a wrong adapter product
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(0.3 * torch.randn_like(param))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("path", ["rule", "merged", "fused"])
def test_merged_forward_equals_peft_and_its_gradients(monkeypatch, path, bias):
    """Both of stx's products (merged weight; or peft's with the scale and sum inside addmm)
    give peft's outputs and gradients."""
    from peft.tuners.lora.layer import Linear

    import stx.model.lora as lora_module

    torch.manual_seed(0)
    model = tiny(backbone={"attention_bias": bias, "mlp_bias": bias}).train()
    apply_lora(model, LoraConfig(r=4, alpha=8, dropout=0.0))
    freeze_for_finetuning(model)
    _away_from_init(model)
    layers = _lora_layers(model)
    assert all((m.get_base_layer().bias is not None) == bias for m in layers)
    assert all(type(m) is not Linear for m in layers)  # every adapted layer got the merged forward

    def run():
        model.zero_grad()
        x = batch()
        out = model(x)
        out.square().mean().backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    calls = []
    cheaper = lora_module.merged_is_cheaper
    rule = {"rule": cheaper, "merged": lambda *a: True, "fused": lambda *a: False}[path]
    monkeypatch.setattr(lora_module, "merged_is_cheaper", lambda *a: calls.append(a) or rule(*a))
    merged_out, merged_grads = run()
    assert len(calls) == len(layers)  # every adapted layer took one of stx's paths
    if path == "rule":
        assert all(cheaper(*a) for a in calls)  # the tiny model's layers all merge
    for module in layers:
        module.__class__ = Linear  # peft's own forward
    peft_out, peft_grads = run()
    torch.testing.assert_close(merged_out, peft_out, atol=1e-5, rtol=1e-5)
    assert merged_grads.keys() == peft_grads.keys() and any("lora_A" in n for n in merged_grads)
    for name in peft_grads:
        torch.testing.assert_close(merged_grads[name], peft_grads[name], atol=1e-5, rtol=1e-4)


def test_merged_forward_only_where_it_is_cheaper():
    from stx.model.lora import merged_is_cheaper

    assert merged_is_cheaper(256, 128, 128, 16)  # the demo's attention projections (8 sets x 32 cells)
    assert not merged_is_cheaper(1024, 672, 672, 16)  # state_sm's: the full weight gradient costs more
    assert not merged_is_cheaper(4096, 1440, 4416, 16)  # ST-Tahoe's MLP


def test_lora_dropout_in_training_takes_peft_path():
    torch.manual_seed(0)
    model = tiny().train()
    apply_lora(model, LoraConfig(r=4, alpha=8, dropout=0.5))
    _away_from_init(model)
    x = batch()
    torch.manual_seed(1)
    first = model(x)
    torch.manual_seed(2)
    assert (model(x) - first).abs().max() > 1e-4  # the adapters' inputs were dropped (merging cannot drop)
    model.eval()
    torch.testing.assert_close(model(x), model(x))


def test_lora_model_pickles_with_its_merged_forward():  # a ddp_spawn strategy pickles the model
    import pickle

    model = tiny()
    apply_lora(model, LoraConfig(r=4, alpha=8, dropout=0.0))
    _away_from_init(model)
    copy = pickle.loads(pickle.dumps(model))
    assert type(_lora_layers(copy)[0]) is type(_lora_layers(model)[0])
    torch.testing.assert_close(copy(batch()), model(batch()))


def test_merging_a_model_without_lora_does_not_import_peft():  # a baseline run: importing peft costs seconds
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; from stx.model.lora import merge_lora; from tests.model.test_st import tiny; "
            "model = tiny(); assert merge_lora(model) is model; print('peft' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
