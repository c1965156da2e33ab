"""LoRA adapters (peft) on the backbone, applied after the pretrained weights are loaded.

Freezing happens here and only here: after `apply_lora`, the trainable parameters are the
LoRA matrices, mHC coefficients, the rebuilt input layers (perturbation, batch and
covariate encoders) and, by default, the output head: `project_out`, the backbone's
final norm and the cell-skip gate. Frozen, the head caps what LoRA can do: the backbone may learn a new shift,
but the pretrained head decodes it with the pretrained gain (on the demo predictions
undershoot, magnitude ratio ~0.7, and plateau). `model.lora.train_head = false` restores
the frozen head.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from functools import cache
from typing import Any

import torch
from torch import nn

from stx.config import LoraConfig
from stx.errors import StxError
from stx.model.dropout import use_fast_dropout
from stx.model.st import StateTransition

NEW_INPUT_LAYERS = ("pert_encoder", "batch_encoder", "covariate_encoders")
HEAD = ("project_out", "transformer_backbone.norm", "skip_gate")


def apply_lora(model: StateTransition, cfg: LoraConfig) -> StateTransition:
    """Inject LoRA into the backbone in place (B = 0, so the function is unchanged)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import inject_adapter_in_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.transformer_backbone.named_modules()}
    unknown = [t for t in cfg.target_modules if t not in present]
    if unknown:
        raise StxError(f"model.lora.target_modules: {', '.join(unknown)} not in the backbone; "
                       f"choose from q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj")
    peft_cfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              target_modules=list(cfg.target_modules), bias="none")
    model.transformer_backbone = inject_adapter_in_model(peft_cfg, model.transformer_backbone)
    use_fast_dropout(model.transformer_backbone)
    use_merged_forward(model.transformer_backbone)
    return model


# What a small layer's extra operations cost, as FLOPs at 2-core CPU speed (operations of
# ~25 us at ~100 GFLOP/s): the unmerged path runs a few more small operations per adapted
# layer and step than the merged one (the adapter's own products and their backward). At the
# demo's attention projections, forcing the unmerged path measured 2% slower per step.
OP_ALLOWANCE_FLOPS = 1e7


def merged_is_cheaper(tokens: int, fan_in: int, fan_out: int, r: int) -> bool:
    """Whether x (W + s B A)^T costs less than x W^T + s (x A^T) B^T, forward plus backward.

    Merged: the weight's gradient at full size (2 T i o) and the rank-r products of the merge
    and its backward (6 r i o). Standard: the adapter's products on every token
    (6 T r (i + o)), plus its extra operations' overhead. Small layers on few tokens (the
    demo's attention projections) merge; large ones (state_sm's) never do.
    """
    merged = 2 * tokens * fan_in * fan_out + 6 * r * fan_in * fan_out
    return merged <= 6 * tokens * r * (fan_in + fan_out) + OP_ALLOWANCE_FLOPS


@cache  # one class, so that layers of every model share it
def _lora_linear() -> type:
    from peft.tuners.lora.layer import Linear

    class MergedForwardLinear(Linear):
        """peft's LoRA Linear with leaner products on CPU: where it is cheaper, through the
        merged weight (one product with W + s B A, differentiable in A and B); elsewhere
        peft's products with the scale and the sum folded into the last one. The same function
        and gradients to float32 rounding; everything else (state, merging, saving) is peft's."""

        def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            name = None if args or kwargs else self._plain_adapter(x)
            if name is None:
                return super().forward(x, *args, **kwargs)
            base, a, b = self.get_base_layer(), self.lora_A[name].weight, self.lora_B[name].weight
            if merged_is_cheaper(x.numel() // base.in_features, base.in_features, base.out_features, a.shape[0]):
                weight = torch.addmm(base.weight, b, a, alpha=self.scaling[name])
                return nn.functional.linear(x, weight, base.bias)
            # peft's x W^T + s (x A^T) B^T with the scale and the sum inside the second product,
            # accumulated in place (addmm_ with alpha = s; autograd saves no product's output):
            # no separate passes over the [tokens, out] output, forward or backward, which on a
            # CPU cost more than the rank-r products
            flat = x.reshape(-1, x.shape[-1])  # 2-d throughout: in place on a view would copy in backward
            out = nn.functional.linear(flat, base.weight, base.bias)
            out.addmm_(nn.functional.linear(flat, a), b.t(), alpha=self.scaling[name])
            return out.view(*x.shape[:-1], out.shape[-1])

        def _plain_adapter(self, x: torch.Tensor) -> str | None:
            """The one adapter of this call when it is a plain LoRA on a plain CPU call, else None
            (peft's own forward runs)."""
            if len(self.active_adapters) != 1 or self.disable_adapters or self.merged:
                return None
            name = self.active_adapters[0]
            if (name not in self.lora_A or name in getattr(self, "lora_variant", {})  # DoRA etc. (peft >= 0.15)
                    or getattr(self, "use_dora", {}).get(name, False) or self.lora_B[name].bias is not None):
                return None
            if (x.device.type != "cpu" or torch.is_autocast_enabled("cpu")
                    or (self.training and getattr(self.lora_dropout[name], "p", 0.0) > 0)):
                return None
            base = self.get_base_layer()
            if type(base) is not nn.Linear or self.fan_in_fan_out:  # computed from base.weight, never base(x)
                return None
            if not x.dtype == self.lora_A[name].weight.dtype == base.weight.dtype:
                return None
            return name

    # picklable (a `ddp_spawn` strategy pickles the model): found through this module's __getattr__
    MergedForwardLinear.__module__, MergedForwardLinear.__qualname__ = __name__, "MergedForwardLinear"
    return MergedForwardLinear


def __getattr__(name: str) -> type:
    if name == "MergedForwardLinear":  # built on first use: importing peft costs seconds
        return _lora_linear()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def use_merged_forward(model: nn.Module) -> nn.Module:
    """Give every peft LoRA Linear of `model` stx's leaner products (`MergedForwardLinear`: the
    merged weight where it is cheaper, else peft's products with the scale and sum in one
    `addmm_`); in place: the class is swapped, no state changes (peft builds its own layers
    during injection)."""
    from peft.tuners.lora.layer import Linear

    merged = _lora_linear()
    for module in model.modules():
        if type(module) is Linear:
            module.__class__ = merged
    return model


def freeze_for_finetuning(model: nn.Module, train_head: bool = True,
                          also_train: Iterable[str] = NEW_INPUT_LAYERS) -> None:
    """Freeze everything except LoRA matrices, mHC coefficients, `also_train` modules and
    (with `train_head`) the output head."""
    names = (*also_train, *(HEAD if train_head else ()))
    prefixes = tuple(f"{name}." for name in names)
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name or ".mhc." in name or name.startswith(prefixes) or name in names)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its base weight and drop the adapters (for export)."""
    if "peft" not in sys.modules:  # no LoRA layer can exist yet (a baseline run): spare the seconds of importing peft
        return model
    from peft.tuners.lora import LoraLayer

    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, LoraLayer):
                child.merge()
                setattr(parent, child_name, child.get_base_layer())
    return model
