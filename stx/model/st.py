"""The State Transition (ST) model: a bidirectional Llama over sets of cells.

Same architecture and parameter names as Arc's arc-state `StateTransitionPerturbationModel`
(so its checkpoints load unchanged), written for stx: plain `nn.Module`, no Lightning, no
geomloss. Per set of S control cells:

    h   = basal_encoder(ctrl) + pert_encoder(one_hot(pert)) [+ batch_encoder(batch)]
          [+ sum_k covariate_encoders[k](covariate_k)]                                   [B, S, H]
    r   = backbone(h)        (Llama layers, no positions: every cell attends to every cell)
    out = project_out(r + basal_encoder(ctrl))   if predict_residual else project_out(r)  [B, S, D]
    [+ g * (ctrl - project_out(basal_encoder(ctrl)))]                                    (cell skip)

The cell skip is stx's: ST regenerates every predicted cell through its encoder and head,
so its output carries the head's reconstruction error of the input cell (on the demo the
pretrained model maps controls to themselves with a mean bias of half the Burn shift).
The gate g [D] starts at 0 (the pretrained function, exactly) and can open to 1, where the
model predicts a change to each cell: ctrl + project_out(r + b) - project_out(b).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from stx.data import keys
from stx.model.backbone import build_backbone
from stx.model.dropout import Dropout

# The gate is stored divided by this, so that at fine-tuning learning rates (Adam moves a
# parameter by about lr per step) it can open within a few hundred steps.
SKIP_SCALE = 10.0

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh, "leakyrelu": nn.LeakyReLU,
}


@dataclass(frozen=True)
class ModelSpec:
    """Everything that fixes the shapes of an ST model (read from a checkpoint's config)."""

    input_dim: int
    output_dim: int
    hidden_dim: int
    pert_names: tuple[str, ...]
    batch_names: tuple[str, ...] = ()
    batch_encoder: bool = False
    n_encoder_layers: int = 2
    n_decoder_layers: int = 2
    activation: str = "gelu"
    dropout: float = 0.1
    use_basal_projection: bool = True
    predict_residual: bool = True
    output_relu: bool = False
    cell_set_len: int = 64
    backbone: dict[str, Any] = field(default_factory=dict)
    covariates: tuple[tuple[str, tuple[str, ...]], ...] = ()  # stx's inputs beyond arc-state's: (name, vocab)
    cell_skip: bool = False  # stx's gated identity path for the input cell (see the module docstring)
    time_axis: bool = False  # the first covariate is the time point, encoded on a learned axis (TimeAxis)

    @property
    def pert_dim(self) -> int:
        """Width of the perturbation one-hot."""
        return len(self.pert_names)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for saving next to weights)."""
        out = asdict(self)
        out["pert_names"], out["batch_names"] = list(self.pert_names), list(self.batch_names)
        out["covariates"] = [[name, list(vocab)] for name, vocab in self.covariates]
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelSpec:
        """Inverse of `to_dict`."""
        return cls(**{**raw, "pert_names": tuple(raw["pert_names"]), "batch_names": tuple(raw["batch_names"]),
                      "covariates": tuple((str(n), tuple(v)) for n, v in raw.get("covariates", ()))})


def time_positions(vocab: tuple[str, ...]) -> torch.Tensor:
    """Starting positions of the time points on the axis: their values standardised where they
    are numbers (days 10, 14, 19), else their ranks."""
    try:
        values = torch.tensor([float(v) for v in vocab], dtype=torch.float32)
    except ValueError:
        values = torch.arange(len(vocab), dtype=torch.float32)
    spread = values.std() if len(values) > 1 else values.new_tensor(1.0)
    return (values - values.mean()) / (spread if spread > 0 else 1.0)


class TimeAxis(nn.Module):
    """The time point as a position on one learned axis: embedding(t) = position[t] * direction.

    Time is one-dimensional, so the time points share one input direction and differ only by
    where they sit on it (each position is learned, starting from the standardised value):
    a model that moves smoothly along the axis pools the evidence of neighbouring time
    points instead of fitting each one's sampling noise separately. The direction starts at
    zero, so a pretrained model computes exactly what it did.
    """

    def __init__(self, vocab: tuple[str, ...], hidden_dim: int):
        super().__init__()
        self.position = nn.Parameter(time_positions(vocab))
        self.direction = nn.Parameter(torch.zeros(hidden_dim))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.position[codes][..., None] * self.direction


def build_mlp(in_dim: int, out_dim: int, hidden_dim: int, n_layers: int, dropout: float,
              activation: type[nn.Module]) -> nn.Sequential:
    """Linear -> act -> dropout blocks; layer indices match arc-state's `build_mlp`."""
    if n_layers == 1:
        return nn.Sequential(nn.Linear(in_dim, out_dim))
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), activation(), Dropout(dropout)]
    for _ in range(n_layers - 2):
        layers += [nn.Linear(hidden_dim, hidden_dim), activation(), Dropout(dropout)]
    layers.append(nn.Linear(hidden_dim, out_dim))
    return nn.Sequential(*layers)


class StateTransition(nn.Module):
    """ST over cell sets. `forward(batch)` returns predicted perturbed embeddings [B, S, D]."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        act = ACTIVATIONS[spec.activation.lower()]
        h = spec.hidden_dim
        self.pert_encoder = build_mlp(spec.pert_dim, h, h, spec.n_encoder_layers, spec.dropout, act)
        if spec.use_basal_projection:
            self.basal_encoder = build_mlp(spec.input_dim, h, h, spec.n_encoder_layers, spec.dropout, act)
        else:
            self.basal_encoder = nn.Linear(spec.input_dim, h)
        self.transformer_backbone = build_backbone(spec.backbone, h)
        self.project_out = build_mlp(h, spec.output_dim, h, spec.n_decoder_layers, spec.dropout, act)
        self.batch_encoder = (
            nn.Embedding(len(spec.batch_names), h) if spec.batch_encoder and spec.batch_names else None
        )
        # zero at init: a pretrained model without these inputs computes exactly what it did
        self.covariate_encoders = nn.ModuleList(
            TimeAxis(vocab, h) if k == 0 and spec.time_axis else nn.Embedding(len(vocab), h)
            for k, (_, vocab) in enumerate(spec.covariates))
        for encoder in self.covariate_encoders:
            if isinstance(encoder, nn.Embedding):
                nn.init.zeros_(encoder.weight)
        self.skip_gate = nn.Parameter(torch.zeros(spec.output_dim)) if spec.cell_skip else None

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Predict the perturbed cells of each set.

        `batch[CTRL_EMB]` [B, S, D_in]; `batch[PERT_INDEX]` [B] (one perturbation per set) or
        [B, S]; `batch[BATCH_INDEX]` [B, S] when the model has a batch encoder;
        `batch[COVARIATES]` [B, S, K] when it has covariate inputs.
        """
        ctrl = batch[keys.CTRL_EMB]
        b, s, _ = ctrl.shape
        pert = batch[keys.PERT_INDEX]
        if pert.dim() == 1:
            pert = pert[:, None].expand(b, s)
        one_hot = nn.functional.one_hot(pert, self.spec.pert_dim).to(ctrl.dtype)
        basal = self.basal_encoder(ctrl)
        seq = basal + self.pert_encoder(one_hot)
        if self.batch_encoder is not None:
            seq = seq + self.batch_encoder(batch[keys.BATCH_INDEX])
        if len(self.covariate_encoders):
            covariates = batch[keys.COVARIATES]
            for k, encoder in enumerate(self.covariate_encoders):
                seq = seq + encoder(covariates[..., k])
        hidden = self.transformer_backbone(seq)
        out = self.project_out(hidden + basal if self.spec.predict_residual else hidden)
        if self.skip_gate is not None:
            out = out + SKIP_SCALE * self.skip_gate * (ctrl - self.project_out(basal))
        return torch.relu(out) if self.spec.output_relu else out


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
