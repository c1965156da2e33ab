"""The search space: stx's defaults, merged with the config's `[sweep.params]`."""

from __future__ import annotations

from stx.config import SweepParam
from stx.variants import Variant


def default_space(variant: Variant) -> dict[str, SweepParam]:
    """LoRA rank and learning rate; velocity lambda for the velocity variants."""
    space = {
        "model.lora.r": SweepParam(type="categorical", choices=(4, 8, 16, 32, 64)),
        "trainer.lr": SweepParam(type="float", low=2e-4, high=1e-2, log=True),
    }
    if variant.velocity:
        space["model.velocity.lambda"] = SweepParam(type="float", low=1e-3, high=1.0, log=True)
    return space


def search_space(variant: Variant, params: dict[str, SweepParam], fixed: dict) -> dict[str, SweepParam]:
    """Defaults, replaced or extended by `[sweep.params]`; keys in `[sweep.fixed]` are not searched."""
    space = {**default_space(variant), **params}
    return {k: v for k, v in space.items() if k not in fixed}


def suggest(trial, space: dict[str, SweepParam]) -> dict[str, object]:  # noqa: ANN001 - optuna.Trial
    """Draw one value per key from an Optuna trial."""
    values: dict[str, object] = {}
    for key, p in space.items():
        if p.type == "categorical":
            values[key] = trial.suggest_categorical(key, list(p.choices))
        elif p.type == "int":
            values[key] = trial.suggest_int(key, int(p.low), int(p.high), log=p.log)
        else:
            values[key] = trial.suggest_float(key, p.low, p.high, log=p.log)
    return values


def as_overrides(values: dict[str, object]) -> list[str]:
    """`key=value` overrides (TOML values) for `load_config`."""
    def toml(v: object) -> str:
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, str):
            return f'"{v}"'
        return repr(v)

    return [f"{k}={toml(v)}" for k, v in values.items()]
