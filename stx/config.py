"""Typed run configuration: TOML in, validated frozen models out.

Every key is declared here with its default and meaning. Unknown keys and wrong types are
errors that name the key and, where one is close, suggest the valid spelling. `--set
dotted.key=value` overrides are applied to the raw TOML before validation, so they go
through exactly the same checks as the file.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from stx.errors import ConfigError

BUILTIN_PREFIX = "builtin:"
# what a sweep can optimise (tests check that evaluation logs each of the eval/* names)
EVAL_METRICS = ("energy_ratio", "pearson_delta", "direction_cos", "magnitude_ratio", "temporal_coherence", "cell_cos",
                "cell_r2", "cell_r2_matched")
OBJECTIVES = ("val/energy_loss", "val/loss", "val/best_loss",
              *(f"eval/{m}" for m in EVAL_METRICS), *(f"eval/heldout/{m}" for m in EVAL_METRICS))
SHIPPED_CHECKPOINTS = ("stx-mini",)


class _Section(BaseModel):
    # inf and NaN are never meaningful settings (an infinite learning rate trains on NaN)
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)


def _empty_to_none(value: Any) -> Any:
    # TOML has no null: an empty string is how a user switches an optional column off.
    return None if value == "" else value


class DataConfig(_Section):
    """Where things live inside the AnnData files, and how cells are split."""

    embed_key: str = Field("X_state_2000", description='obsm key of the cell embeddings, or "X"')
    pert_col: str = Field("condition", description="obs column with the perturbation label")
    control_pert: str = Field("Sham", description="label of the control condition in pert_col")
    cell_type_key: str | None = Field(
        "cell_types_simple_short", description='obs column of cell types; "" = all cells are one type')
    batch_col: str | None = Field("mouse_id", description="obs column of the batch (mouse)")
    time_col: str | None = Field(None, description="obs column of the time point; optional")
    control_time: str | None = Field(
        None, description="time point whose control cells serve every time point of their cell type (a time "
                          "course with controls only at baseline); the model sees the target time")
    covariates: tuple[str, ...] = Field(
        (), description='extra categorical obs columns fed to the model as learned embeddings, e.g. ["sex"]')
    heldout_groups: tuple[str, ...] = Field(
        (), description='groups whose perturbed cells are never trained on, only tested: "Fib:14" (cell type:time) '
                        'or "Fib" (every time point)')
    min_group_cells: PositiveInt = Field(
        10, description="test groups with fewer control cells per half or perturbed cells are flagged and left out "
                        "of the headline means")
    split: Literal["auto", "batch", "cell"] = Field(
        "auto", description="auto: by batch when every stratum has >= 3 batches, else by cell"
    )
    val_fraction: float = Field(0.15, gt=0, lt=0.5, description="share of batches/cells for val")
    test_fraction: float = Field(0.25, gt=0, lt=0.5, description="share for the held-out test")
    split_seed: NonNegativeInt = Field(0, description="seed of the train/val/test split")

    _none_if_empty = field_validator("batch_col", "time_col", "cell_type_key", "control_time",
                                     mode="before")(_empty_to_none)

    @field_validator("control_time", mode="before")
    @classmethod
    def _time_as_text(cls, value: object) -> object:
        # `--set data.control_time=0` arrives as a number; time labels are compared as text ("14.0" -> "14")
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value) if isinstance(value, int | float) else value

    @model_validator(mode="after")
    def _fractions_leave_training_cells(self) -> DataConfig:
        if self.val_fraction + self.test_fraction >= 0.8:
            raise ValueError(
                "data.val_fraction + data.test_fraction must be below 0.8 to leave training data"
            )
        return self


class LoraConfig(_Section):
    """LoRA adapters on the backbone's attention projections (peft)."""

    r: PositiveInt = Field(16, description="rank of the LoRA update")
    alpha: PositiveFloat = Field(32, description="LoRA scaling numerator (scale = alpha / r)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA path (0 = none, as in PEFT)")
    target_modules: tuple[str, ...] = Field(
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        min_length=1, description="backbone modules that get adapters (attention and MLP)",
    )
    train_head: bool = Field(
        True, description="also train the output head (project_out) and the backbone's final norm")


class MhcConfig(_Section):
    """Manifold-Constrained Hyper-Connections around each backbone layer."""

    streams: PositiveInt = Field(4, le=16, description="number of residual streams n")
    sinkhorn_iters: PositiveInt = Field(10, description="Sinkhorn-Knopp iterations for H_res")
    projection: Literal["sinkhorn", "birkhoff"] = Field(
        "sinkhorn", description="sinkhorn (paper) or birkhoff (exact, n <= 4)"
    )
    dynamic: bool = Field(False, description="input-dependent H matrices (gates start at 0)")

    @model_validator(mode="after")
    def _birkhoff_is_small(self) -> MhcConfig:
        if self.projection == "birkhoff" and self.streams > 4:
            raise ValueError("model.mhc.projection = 'birkhoff' needs model.mhc.streams <= 4")
        return self


class VelocityConfig(_Section):
    """RNA-velocity alignment loss."""

    lambda_: float = Field(0.1, alias="lambda", ge=0, description="weight of 1 - cos(shift, v)")
    beta: float = Field(1.0, ge=0, description="magnitude target: |shift| ~ beta * |v|")
    mu: float = Field(0.01, ge=0, description="weight of the magnitude term")
    warmup_steps: NonNegativeInt = Field(1000, description="lambda ramps linearly from 0")
    min_confidence: float = Field(0.3, ge=0, le=1, description="exclude less confident cells")
    reduce: Literal["cell", "set"] = Field(
        "set", description="align the set's mean shift (set) or each cell's shift (cell) with the velocity")
    velocity_key: str = Field("velocity_state_2000", description="obsm key of per-cell velocity")
    source: Literal["control", "perturbed"] = Field(
        "control", description="whose velocity the predicted shift aligns with"
    )
    projection: Literal["auto", "transition", "linear"] = Field(
        "auto", description="when velocity is prepared: linear if loadings_key exists, else transition"
    )
    loadings_key: str | None = Field(None, description="varm key of a linear embedding's loadings")
    force_magnitude: bool = Field(False, description="keep the magnitude term for uncalibrated velocity")
    unseen_groups: bool = Field(
        True, description="also apply the term to control sets of groups with no perturbed training cells "
                          "(data.heldout_groups): the prior is all the model has there")
    grad_ratio_every: PositiveInt = Field(
        50, description="every N steps, log train/velocity_grad_ratio (|grad velocity| / |grad energy|)")

    _none_if_empty = field_validator("loadings_key", mode="before")(_empty_to_none)


class ModelConfig(_Section):
    """The pretrained checkpoint and the hyperparameters of each fine-tuning module."""

    checkpoint: str = Field("stx-mini", description='arc-state run dir, or "stx-mini" (shipped)')
    output_relu: Literal["auto"] | bool = Field(
        "auto", description="ReLU on predictions: auto = as the checkpoint was trained (arc-state: on)"
    )
    cell_skip: bool = Field(True, description="a learned gate (closed at start) that lets the model predict a "
                                              "change to each input cell instead of regenerating it")
    cell_skip_init: float = Field(0.0, ge=0, le=1, description="how far the cell-skip gate is open when "
                                  "fine-tuning starts: 0 = closed (the pretrained function exactly), 1 = each "
                                  "prediction is its input cell plus the change the pretrained model predicts")
    time_input: bool = Field(True, description="feed the time point (data.time_col) to the model as a learned "
                                               "embedding (zero at start: the pretrained function is unchanged)")
    time_encoding: Literal["category", "axis"] = Field(
        "axis", description="how the time point enters: category = one free embedding per time point; axis = "
                                "positions on one learned direction (time is one-dimensional: neighbouring time "
                                "points share evidence)")
    lora: LoraConfig = LoraConfig()
    mhc: MhcConfig = MhcConfig()
    velocity: VelocityConfig = VelocityConfig()

    @field_validator("checkpoint")
    @classmethod
    def _resolve_checkpoint(cls, value: str, info: ValidationInfo) -> str:
        if value in SHIPPED_CHECKPOINTS:
            return value
        return str(_resolve_path(value, info))


class TrainerConfig(_Section):
    """Optimisation and hardware."""

    max_steps: PositiveInt = Field(10000, description="optimizer steps")
    lr: PositiveFloat = Field(5e-5, description="peak learning rate (AdamW)")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")
    lr_warmup_steps: NonNegativeInt = Field(100, description="linear warmup, then cosine decay")
    ema_decay: float = Field(0.99, ge=0, lt=1, description="exponential moving average of the weights, used for "
                             "validation, evaluation and the saved model (0 = off; 0.99 averages ~100 steps)")
    grad_clip: float = Field(1.0, ge=0, description="clip the global gradient norm to this (0 = no clipping)")
    batch_size: PositiveInt = Field(8, description="cell sets per step")
    cell_set_len: PositiveInt = Field(64, description="cells per set")
    devices: PositiveInt = Field(1, description="processes (GPUs, or CPU processes with gloo)")
    strategy: str = Field("auto", pattern=r"^(auto|single_device|dp|ddp\w*|fsdp\w*|deepspeed\w*)$",
                          description="Lightning strategy: auto, ddp (or a variant), fsdp, deepspeed, single_device")
    precision: Literal["auto", "32", "bf16-mixed"] = Field(
        "auto", description="auto: bf16-mixed on a GPU, 32 on CPU"
    )
    seed: NonNegativeInt = Field(0, description="seed of initialisation and set sampling")
    val_every_n_steps: PositiveInt = Field(100, description="validation loss interval")
    val_batches: PositiveInt = Field(8, description="fixed validation batches")
    checkpoint_every_n_steps: PositiveInt = Field(1000, description="checkpoint interval")
    log_every_n_steps: PositiveInt = Field(10, description="how often buffered metrics flush")


class TrackingConfig(_Section):
    """MLflow names (the tracking URI comes from the CLI or MLFLOW_TRACKING_URI)."""

    experiment: str | None = Field(None, description="default: the config file's folder name")
    projection: Literal["auto", "umap", "pca"] = Field(
        "auto", description="2-D map of cells in the plots: auto = PCA for embeddings of <= 100 dims, else UMAP")
    register_model: bool = Field(True, description="register the model as stx-<variant>")
    system_metrics: bool = Field(True, description="MLflow's system metrics (CPU, memory, GPU) every 10 s")
    output_dir: str = Field("stx_outputs", description="local run folders (checkpoints), from cwd")
    outage_grace_s: float = Field(120.0, ge=0, description="after training, how long to wait for an unreachable "
                                  "store before holding the records for `stx sync`")

    _none_if_empty = field_validator("experiment", mode="before")(_empty_to_none)


class SweepParam(_Section):
    """One searched hyperparameter (`[sweep.params."model.lora.r"]`)."""

    type: Literal["float", "int", "categorical"] = Field(description="distribution")
    low: float | None = Field(None, description="lower bound (float, int)")
    high: float | None = Field(None, description="upper bound (float, int)")
    log: bool = Field(False, description="sample on a log scale")
    choices: tuple[int | float | str | bool, ...] | None = Field(None, description="categorical values")

    @model_validator(mode="after")
    def _complete(self) -> SweepParam:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical sweep parameter needs choices = [...]")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"a {self.type} sweep parameter needs low < high")
        elif self.log and self.low <= 0:
            raise ValueError("a log-scale sweep parameter needs low > 0")
        return self


class SweepConfig(_Section):
    """`stx sweep`: what to optimise and over which keys (defaults: LoRA rank, lr, velocity lambda)."""

    objective: str = Field(
        "val/energy_loss", description="run metric to optimise: val/energy_loss (comparable across variants), "
                                       "val/loss, val/best_loss, or an eval/* metric (tunes on the test split)")
    direction: Literal["auto", "minimize", "maximize"] = Field(
        "auto", description="auto: minimise losses and energy_ratio, maximise the rest"
    )
    params: dict[str, SweepParam] = Field(default_factory=dict, description="searched keys (added to defaults)")
    fixed: dict[str, int | float | str | bool] = Field(default_factory=dict, description="keys set for every trial")

    @model_validator(mode="after")
    def _keys_exist(self) -> SweepConfig:
        known = set(valid_keys(Config)) if "Config" in globals() else set()
        for key in [*self.params, *self.fixed]:
            if known and key not in known and not key.startswith(("datasets.", "training.")):
                raise ValueError(f"sweep key '{key}' is not a config key{_suggest(key, sorted(known))}")
        if self.objective not in OBJECTIVES:
            shown = ", ".join(OBJECTIVES[:4]) + ", eval/<metric>"
            hint = _suggest(self.objective, list(OBJECTIVES))
            raise ValueError(f"sweep.objective '{self.objective}' is not a metric stx logs{hint}; choose {shown}")
        return self

    def resolved_direction(self) -> str:
        """minimize or maximize."""
        if self.direction != "auto":
            return self.direction
        lower_is_better = self.objective.startswith("val/") or self.objective.endswith("energy_ratio")
        return "minimize" if lower_is_better else "maximize"


class Config(_Section):
    """One stx run: data sets, their split roles, and the model/trainer sections."""

    datasets: dict[str, str] = Field(min_length=1, description="name -> .h5ad path")
    training: dict[str, Literal["train", "test"]] = Field(
        default_factory=dict, description="split role of each data set (default train)"
    )
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    trainer: TrainerConfig = TrainerConfig()
    tracking: TrackingConfig = TrackingConfig()
    sweep: SweepConfig = SweepConfig()
    _source: str = PrivateAttr("<embedded default>")

    @field_validator("datasets")
    @classmethod
    def _resolve_datasets(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        return {
            name: path if path.startswith(BUILTIN_PREFIX) else str(_resolve_path(path, info))
            for name, path in value.items()
        }

    @model_validator(mode="after")
    def _roles_name_datasets(self) -> Config:
        for name in self.training:
            if name not in self.datasets:
                hint = _suggest(name, list(self.datasets))
                raise ValueError(f"training.{name} names no data set in [datasets]{hint}")
        if "train" not in {self.training.get(name, "train") for name in self.datasets}:
            raise ValueError("[training] marks every data set 'test': nothing left to train on")
        return self

    def role(self, dataset: str) -> str:
        """Split role of a data set: "train" (split train/val/test) or "test" (all held out)."""
        return self.training.get(dataset, "train")

    def experiment_name(self) -> str:
        """MLflow experiment: `tracking.experiment`, else the config file's folder name."""
        if self.tracking.experiment:
            return self.tracking.experiment
        if self._source.startswith("<"):
            return "stx-demo"
        return Path(self._source).resolve().parent.name or "stx"

    @property
    def source(self) -> str:
        """The config file this came from, or `<embedded default>`."""
        return self._source


def _resolve_path(value: str, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    path = Path(value).expanduser()
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return path


# ---------------------------------------------------------------- loading and overrides


def default_config_text() -> str:
    """The embedded default config shipped with the package (demo data, stx-mini)."""
    from importlib.resources import files

    return files("stx.resources").joinpath("default.toml").read_text(encoding="utf-8")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a TOML config (or the embedded default), apply `key=value` overrides, validate."""
    if path is None:
        source, text, base_dir = "<embedded default>", default_config_text(), Path.cwd()
    else:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"{file}: config file not found")
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(f"{file}: not UTF-8 text (byte {err.start}); save the config as UTF-8") from None
        source, base_dir = str(file), file.resolve().parent
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{source}: not valid TOML ({err})") from None
    for item in overrides:
        apply_override(raw, item)
    try:
        cfg = Config.model_validate(raw, context={"base_dir": base_dir})
    except ValidationError as err:
        raise ConfigError(f"{source}: {describe_validation_error(err)}") from None
    cfg._source = source
    return cfg


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set `dotted.key=value` in a raw config dict; the value is parsed as a TOML value."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set model.lora.r=8")
    if key.startswith("+"):
        raise ConfigError(f"--set {item!r}: no '+' prefix needed; write --set {key[1:]}={text}")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()  # bare words such as X_pca need no quotes
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


_UNION_TAGS = re.compile(r"^(bool|int|float|str|literal\[.*\]|function-.*|tuple\[.*\]|list\[.*\])$")


def _clean_loc(loc: tuple) -> tuple:
    # pydantic adds the union member tried ("bool", "literal['auto']") to the location
    return tuple(p for p in loc if not (isinstance(p, str) and _UNION_TAGS.match(p)))


def describe_validation_error(err: ValidationError) -> str:
    """One line for the first problem pydantic found, with a suggestion for unknown keys."""
    errors = err.errors()
    first = errors[0]
    loc_parts = _clean_loc(first["loc"])
    loc = ".".join(str(p) for p in loc_parts)
    same = [e for e in errors if _clean_loc(e["loc"]) == loc_parts]
    others = len(errors) - len(same)
    more = f" (and {others} more problem(s))" if others else ""
    if first["type"] == "extra_forbidden":
        parent = ".".join(str(p) for p in loc_parts[:-1])
        return f"unknown key '{loc}'{_suggest_key(parent, str(loc_parts[-1]))}{more}"
    if first["type"] == "missing":
        return f"missing required key '{loc}'{more}"
    got = first.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    message = " or ".join(dict.fromkeys(e["msg"].removeprefix("Value error, ") for e in same))
    return f"{loc}: {message}{shown}{more}" if loc else f"{message}{more}"


def _section_fields(model: type[BaseModel]) -> dict[str, type[BaseModel] | None]:
    out: dict[str, type[BaseModel] | None] = {}
    for name, field in model.model_fields.items():
        sub = field.annotation
        out[field.alias or name] = sub if isinstance(sub, type) and issubclass(sub, BaseModel) else None
    return out


def valid_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """Every dotted key the config accepts (sections recursed), e.g. `model.lora.r`."""
    keys: list[str] = []
    for name, sub in _section_fields(model).items():
        keys.append(prefix + name)
        if sub is not None:
            keys.extend(valid_keys(sub, f"{prefix}{name}."))
    return keys


def _suggest_key(parent: str, key: str) -> str:
    model: type[BaseModel] = Config
    for part in parent.split(".") if parent else []:
        sub = _section_fields(model).get(part)
        if sub is None:
            break
        model = sub
    hint = _suggest(key, list(_section_fields(model)), prefix=f"{parent}." if parent else "")
    if hint:
        return hint
    # a key put in the wrong section: match on the last component across the whole schema
    everywhere = {k.rsplit(".", 1)[-1]: k for k in valid_keys()}
    match = difflib.get_close_matches(key, list(everywhere), n=1, cutoff=0.8)
    return f" (did you mean '{everywhere[match[0]]}'?)" if match else ""


# spellings from other tools (arc-state, peft, Lightning) that difflib cannot guess
_SYNONYMS = {
    "learning_rate": "lr", "rank": "r", "lora_r": "r", "lora_alpha": "alpha",
    "lora_dropout": "dropout", "steps": "max_steps", "num_steps": "max_steps",
    "n_streams": "streams", "velocity_lambda": "lambda", "velocity_beta": "beta",
    "gradient_clip_val": "grad_clip", "cell_sentence_len": "cell_set_len",
}


def _suggest(word: str, options: list[str], prefix: str = "") -> str:
    if _SYNONYMS.get(word) in options:
        return f" (did you mean '{prefix}{_SYNONYMS[word]}'?)"
    match = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    if not match:
        match = [o for o in options if o.startswith(word) or word.startswith(o)][:1]
    return f" (did you mean '{prefix}{match[0]}'?)" if match else ""


# ---------------------------------------------------------------- output


def to_dict(cfg: Config) -> dict[str, Any]:
    """The resolved config as plain TOML-able data (aliases such as `lambda`, no None)."""
    return _drop_none(cfg.model_dump(mode="json", by_alias=True))


def flatten(cfg: Config) -> dict[str, str]:
    """Dotted keys -> string values, as logged to MLflow params."""
    out: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            out[prefix[:-1]] = ",".join(map(str, node)) if isinstance(node, list) else str(node)

    walk(to_dict(cfg), "")
    return out


def to_toml(cfg: Config) -> str:
    """The resolved config as TOML text (what `config/resolved.toml` holds)."""
    import tomli_w

    return tomli_w.dumps(to_dict(cfg))


def _drop_none(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _drop_none(v) for k, v in node.items() if v is not None}
    return node


def keys_markdown(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """Rows `| key | default | meaning |` for every leaf key (docs/configuration.md)."""
    rows: list[str] = []
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            rows += keys_markdown(sub, f"{key}.")
        elif key not in ("datasets", "training"):
            default = list(field.default) if isinstance(field.default, tuple) else field.default
            rows.append(f"| `{key}` | `{default!r}` | {field.description or ''} |".replace("'", '"'))
    return rows
