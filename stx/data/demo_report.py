"""Measured properties of a demo world (`stx data demo --describe`): how much of the Burn
response runs along the cells' trajectories, how well scVelo's velocity points along it,
and how large the per-cell differences are against cell noise. Tests assert them."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import anndata as ad


@dataclass(frozen=True)
class WorldProperties:
    """What a generated data set shows (Sham cells, their counterfactual Burn response)."""

    world: str
    n_cells: int
    along_share: float  # share of the response's energy along each cell's true velocity
    cos_true_velocity: float  # mean cosine of each cell's response with its true velocity (signed)
    cos_scvelo_velocity: float  # the same with scVelo's estimate (NaN when not computed)
    within_share: float  # share of the response's energy that differs from cell to cell within a group
    noise_ratio: float  # within-group spread of the response / cell noise (counting noise + mouse effects)
    response_norm: float  # mean norm of the per-cell response

    def as_dict(self) -> dict[str, float | str | int]:
        """Plain values (for tables)."""
        return asdict(self)


def _cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    ok = (na > 0) & (nb > 0) & np.isfinite(b).all(1)
    out = np.full(len(a), np.nan)
    out[ok] = (a[ok] * b[ok]).sum(1) / (na[ok] * nb[ok])
    return out


def describe_world(adata: ad.AnnData, velocity: np.ndarray | None = None) -> WorldProperties:
    """Measure a demo data set; `velocity` is an estimated velocity in the embedding [N, D]."""
    sham = (adata.obs["condition"] == "Sham").to_numpy()
    r = np.asarray(adata.obsm["truth_response"], np.float64)[sham]
    v = np.asarray(adata.obsm["truth_sham_velocity"], np.float64)[sham]
    v_hat = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    group = (adata.obs["cell_types_simple_short"].astype(str) + "|" + adata.obs["day"].astype(str)).to_numpy()[sham]
    spread = np.zeros_like(r)
    for g in np.unique(group):
        rows = group == g
        spread[rows] = r[rows] - r[rows].mean(0)
    x = np.asarray(adata.obsm["X_state"], np.float64)[sham]
    noise = x - np.asarray(adata.obsm["truth_noise_free"], np.float64)[sham]
    estimated = float(np.nanmean(_cos_rows(r, np.asarray(velocity, np.float64)[sham]))) if velocity is not None \
        else float("nan")
    return WorldProperties(
        world=str(adata.uns.get("stx_demo", {}).get("world", "?")),
        n_cells=int(adata.n_obs),
        along_share=float(((r * v_hat).sum(1) ** 2).sum() / (r ** 2).sum()),
        cos_true_velocity=float(np.nanmean(_cos_rows(r, v))),
        cos_scvelo_velocity=estimated,
        within_share=float((spread ** 2).sum() / (r ** 2).sum()),
        noise_ratio=float(np.sqrt((spread ** 2).sum(1).mean() / (noise ** 2).sum(1).mean())),
        response_norm=float(np.linalg.norm(r, axis=1).mean()),
    )
