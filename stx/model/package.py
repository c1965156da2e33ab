"""A self-contained inference package: weights with LoRA merged, plus what predicting needs.

Layout: `model.json` (ModelSpec, data vocabularies and column names, set length, variant)
and `weights.pt` (state_dict). `stx predict` and the registered MLflow pyfunc load it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from stx.errors import StxError
from stx.evaluate.predict import predict_sets
from stx.model.st import ModelSpec, StateTransition

FORMAT = "stx-inference/1"


@dataclass
class InferencePackage:
    """A model ready to predict, and the metadata that says how to feed it."""

    model: StateTransition
    meta: dict[str, Any]

    @property
    def perts(self) -> list[str]:
        """Perturbation vocabulary (index order)."""
        return list(self.model.spec.pert_names)

    def covariate_codes(self, values: dict[str, np.ndarray], n: int) -> np.ndarray:
        """[n, K] codes of the model's covariate inputs from per-cell values {column: [n]};
        a missing column or a value the model never saw is a one-line error."""
        from stx.data.load import _labels

        codes = np.zeros((n, len(self.model.spec.covariates)), np.int64)
        for k, (name, vocab) in enumerate(self.model.spec.covariates):
            if name not in values:
                raise StxError(f"the model takes '{name}' as an input (a covariate it was trained with): give it "
                               f"for every cell (known values: {', '.join(vocab)})")
            labels = _labels(pd.Series(values[name]))
            index = {v: i for i, v in enumerate(vocab)}
            unknown = sorted(set(labels) - set(index))
            if unknown:
                raise StxError(f"'{name}' values {', '.join(unknown[:5])} were never seen in training; the model "
                               f"knows {', '.join(vocab)}")
            codes[:, k] = [index[v] for v in labels]
        return codes

    def predict(self, emb: np.ndarray, condition: str, batches: np.ndarray | None = None,
                device: str = "cpu", covariates: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Predicted embeddings [n, D] of control cells `emb` [n, D] under `condition`
        (`covariates`: per-cell values of the model's covariate inputs, e.g. {"day": [...]})."""
        if condition not in self.perts:
            raise StxError(f"condition '{condition}' unknown to this model; it knows: {', '.join(self.perts)}")
        spec = self.model.spec
        if emb.ndim != 2 or emb.shape[1] != spec.input_dim:
            raise StxError(f"expected control embeddings of shape [cells, {spec.input_dim}], got {emb.shape}")
        codes = np.zeros(len(emb), np.int64)
        if batches is not None and spec.batch_names:
            index = {b: i for i, b in enumerate(spec.batch_names)}
            codes = np.asarray([index.get(str(b), 0) for b in batches], np.int64)
        cov = self.covariate_codes(covariates or {}, len(emb))
        return predict_sets(self.model.to(device), np.asarray(emb, np.float32), codes,
                            self.perts.index(condition), int(self.meta["cell_set_len"]), device, covariates=cov)


def save_package(model: StateTransition, meta: dict[str, Any], out: Path) -> Path:
    """Write `model` (LoRA already merged) and `meta` to the folder `out`."""
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, out / "weights.pt")
    (out / "model.json").write_text(json.dumps(
        {"format": FORMAT, "spec": model.spec.to_dict(), **meta}, indent=2, default=str))
    return out


def load_package(path: Path) -> InferencePackage:
    """Read a folder written by `save_package`."""
    meta_path = path / "model.json"
    if not meta_path.is_file():
        raise StxError(f"{path}: not an stx model folder (no model.json)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise StxError(f"{meta_path}: not valid JSON ({err.__class__.__name__})") from None
    if meta.get("format") != FORMAT:
        raise StxError(f"{meta_path}: unsupported format {meta.get('format')!r} (expected {FORMAT})")
    spec = ModelSpec.from_dict(meta.pop("spec"))
    model = StateTransition(spec)
    if meta.get("mhc"):
        from stx.config import MhcConfig
        from stx.model.mhc import apply_mhc

        apply_mhc(model.transformer_backbone, MhcConfig(**meta["mhc"]))
    from stx.model.checkpoint import _torch_load

    state = _torch_load(path / "weights.pt")
    if not isinstance(state, dict):
        raise StxError(f"{path / 'weights.pt'}: not a state dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise StxError(f"{path / 'weights.pt'}: does not fit the model in model.json ({str(err).splitlines()[0][:160]})"
                       ) from None
    return InferencePackage(model.eval(), meta)
