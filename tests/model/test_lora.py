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
