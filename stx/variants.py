"""Registry of the five variants: which fine-tuning modules and losses each one turns on."""

from __future__ import annotations

from dataclasses import dataclass

from stx.errors import StxError


@dataclass(frozen=True)
class Variant:
    """What a variant switches on. Hyperparameters live in the config's model sections."""

    name: str
    train: bool
    lora: bool
    mhc: bool
    velocity: bool
    summary: str
    scratch: bool = False  # random initialisation of the checkpoint's architecture, every weight trained


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("baseline", False, False, False, False, "pretrained checkpoint, no fine-tuning"),
        Variant("lora", True, True, False, False, "LoRA adapters on the backbone"),
        Variant("lora-mhc", True, True, True, False, "LoRA + manifold-constrained hyper-connections"),
        Variant("lora-velocity", True, True, False, True, "LoRA + RNA-velocity alignment loss"),
        Variant("lora-mhc-velocity", True, True, True, True, "LoRA + mHC + velocity alignment"),
        Variant("scratch", True, False, False, False, "the checkpoint's architecture from a random start, fully "
                "trained: what the pretrained weights are worth", scratch=True),
    )
}
# `stx run --variant all`: the five variants of the study (scratch is a reference, run on request)
STUDY_VARIANTS = ("baseline", "lora", "lora-mhc", "lora-velocity", "lora-mhc-velocity")

ALIASES: dict[str, str] = {
    "velocity": "lora-velocity",
    "mhc": "lora-mhc",
    "mhc-velocity": "lora-mhc-velocity",
}


def resolve_variant(name: str) -> Variant:
    """Look a variant up by name or alias; an unknown name is a user error listing the choices."""
    key = ALIASES.get(name, name)
    if key not in VARIANTS:
        choices = ", ".join([*VARIANTS, *ALIASES])
        raise StxError(f"unknown variant '{name}': choose one of {choices}")
    return VARIANTS[key]


def variant_choices() -> list[str]:
    """Names and aliases, for CLI help and completion."""
    return [*VARIANTS, *ALIASES]
