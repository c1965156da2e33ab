"""Fit a pretrained ST to a new experiment's vocabulary (perturbations, batches).

The checkpoint knows its own perturbations (drugs) and batches (plates); a new experiment
has others (Burn/Sham, mice). Only the first layer of the perturbation encoder and the
batch embedding depend on those vocabularies: they are rebuilt, reusing the rows whose
names match, mapping the new control onto the checkpoint's control, and starting every
other new entry at the mean of the checkpoint's (a "generic perturbation/batch"). Every
other weight is kept as pretrained.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch

from stx.data.load import DataSpec
from stx.errors import StxError
from stx.model.checkpoint import Pretrained
from stx.model.st import SKIP_SCALE, StateTransition

log = logging.getLogger(__name__)


def _remap_columns(old: torch.Tensor, old_names: tuple[str, ...], new_names: tuple[str, ...],
                   aliases: dict[str, str], generic: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """old [H, P_old] -> [H, P_new]: matched columns copied, the rest set to `generic` [H]."""
    index = {n: i for i, n in enumerate(old_names)}
    out = generic[:, None].repeat(1, len(new_names)).to(old.dtype)
    reused = []
    for j, name in enumerate(new_names):
        source = aliases.get(name, name)
        if source in index:
            out[:, j] = old[:, index[source]]
            reused.append(name if source == name else f"{name}<-{source}")
    return out, reused


def adapt_to_data(pretrained: Pretrained, data: DataSpec, output_relu: bool | None = None,
                  covariates: tuple[tuple[str, tuple[str, ...]], ...] = (), cell_skip: bool = False,
                  cell_skip_init: float = 0.0, time_axis: bool = False) -> StateTransition:
    """A copy of the pretrained model with input layers for `data`'s vocabularies, the
    covariate inputs `covariates` ((name, vocabulary); their embeddings start at zero) and,
    with `cell_skip`, the cell-skip gate (`stx.model.st`), opened to `cell_skip_init` where
    the checkpoint has none (0: closed, the pretrained function exactly).

    `output_relu` overrides the checkpoint's output clipping (None keeps it).
    """
    spec = pretrained.spec
    where = pretrained.source
    key = "X" if data.embed_key == "X" else f"obsm['{data.embed_key}']"
    if spec.input_dim != data.embed_dim:
        raise StxError(f"{key} has {data.embed_dim} dims but the checkpoint {where} expects "
                       f"{spec.input_dim} (data.embed_key / model.checkpoint)")
    if spec.output_dim != data.embed_dim:
        raise StxError(f"the checkpoint {where} predicts {spec.output_dim} dims but {key} has {data.embed_dim}")
    new_spec = replace(spec, pert_names=data.perts, batch_names=data.batches if spec.batch_encoder else (),
                       output_relu=spec.output_relu if output_relu is None else output_relu,
                       covariates=covariates, cell_skip=cell_skip or spec.cell_skip,
                       time_axis=time_axis and bool(covariates))
    model = StateTransition(new_spec)
    old_state = pretrained.model.state_dict()
    new_state = model.state_dict()
    for name, value in old_state.items():
        if name in new_state and new_state[name].shape == value.shape:
            new_state[name] = value.clone()

    first = "pert_encoder.0.weight"
    old_w = old_state[first]  # [H, P_old]
    control = pretrained.control_pert
    old_perts = spec.pert_names
    perturbations = [i for i, n in enumerate(old_perts) if n != control] or list(range(len(old_perts)))
    aliases = {data.control: control} if control in old_perts and data.control not in old_perts else {}
    new_state[first], reused = _remap_columns(old_w, old_perts, data.perts, aliases,
                                              old_w[:, perturbations].mean(1))
    log.info("perturbation encoder: %d of %d entries from the checkpoint (%s); others start at the "
             "mean perturbation", len(reused), len(data.perts), ", ".join(reused) or "none")
    if model.batch_encoder is not None:
        old_b = old_state["batch_encoder.weight"].T  # [H, n_batches]
        weight, reused_b = _remap_columns(old_b, spec.batch_names, data.batches, {}, old_b.mean(1))
        new_state["batch_encoder.weight"] = weight.T.contiguous()
        log.info("batch encoder: %d of %d batches from the checkpoint", len(reused_b), len(data.batches))
    if model.skip_gate is not None and "skip_gate" not in old_state:
        new_state["skip_gate"] = torch.full_like(new_state["skip_gate"], cell_skip_init / SKIP_SCALE)
    model.load_state_dict(new_state)
    return model
