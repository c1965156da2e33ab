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

from collections.abc import Iterable

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
    from peft.tuners.lora import LoraLayer

    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, LoraLayer):
                child.merge()
                setattr(parent, child_name, child.get_base_layer())
    return model
