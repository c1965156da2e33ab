"""RNA velocity in the model's embedding space (`stx velocity`), prepared with scVelo.

From spliced/unspliced counts: scVelo's `filter_and_normalize`, scanpy's log1p/PCA/
neighbours, `moments`, `velocity` (deterministic mode) and `velocity_graph`, then one of
two projections into the embedding the model predicts in:

* `transition`: scVelo's transition-matrix projection (`velocity_embedding` with
  `all_comps=True, autoscale=False`), valid for any embedding. Its vectors are built from
  unit displacements, so their *direction* is meaningful, their magnitude is not.
* `linear`: when the embedding is a known linear map of (log-normalised) expression with
  loadings in `varm` (the demo's, or a PCA with stored loadings), the exact push-forward
  of the gene-space velocity, `v_emb = (k v / (1 + k Ms)) @ W` for a log1p embedding of
  counts normalised to `k` x scVelo's scale (`v @ W` for a linear one). Its magnitude is
  calibrated.

scVelo 0.3.4 traps handled here (see shared notes): the stochastic mode crashes on
NumPy >= 2.4 (stx uses the deterministic mode and says so), `filter_and_normalize` no
longer selects genes (stx keeps all genes and logs with scanpy), and results are joined
back on `obs_names`. Results are cached by input hash and settings, so a second run is
instant.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stx.errors import DataError

log = logging.getLogger(__name__)

CONFIDENCE_KEY = "velocity_confidence"
INFO_KEY = "stx_velocity"
PROJECTIONS = ("auto", "transition", "linear")


@dataclass(frozen=True)
class VelocityReport:
    """What `prepare_velocity` did."""

    out: str
    key: str
    projection: str
    mode: str
    seconds: float
    mean_confidence: float
    cached: bool
    scvelo: str


def velocity_key_for(embed_key: str) -> str:
    """scVelo's naming: `velocity_<basis>` for `X_<basis>` (and `velocity_X` for X)."""
    return f"velocity_{embed_key.removeprefix('X_')}" if embed_key != "X" else "velocity_X"


def push_forward(velocity: np.ndarray, loadings: np.ndarray, log1p_of: np.ndarray | None = None,
                 scale: float = 1.0) -> np.ndarray:
    """Velocity through a linear embedding `emb = f(x) @ loadings`.

    f is the identity (log1p_of=None) or log1p(scale * x) evaluated at x = log1p_of, whose
    derivative is scale / (1 + scale * x). velocity [N, G], loadings [G, D] -> [N, D].
    """
    v = np.nan_to_num(np.asarray(velocity, dtype=np.float64))
    if log1p_of is not None:
        v = scale * v / (1.0 + scale * np.asarray(log1p_of, dtype=np.float64))
    return (v @ np.asarray(loadings, dtype=np.float64)).astype(np.float32)


def _cache_path(in_path: Path, settings: dict) -> Path:
    from stx.data.builtin import cache_dir
    from stx.data.load import file_sha256

    digest = hashlib.sha256((file_sha256(in_path) + json.dumps(settings, sort_keys=True)).encode()).hexdigest()
    return cache_dir() / "velocity" / f"{digest[:24]}.h5ad"


def prepare_velocity(in_path: Path, embed_key: str, out_path: Path | None, projection: str = "auto",
                     loadings_key: str | None = None, log1p: bool = True, target_sum: float = 1e4,
                     n_neighbors: int = 30, use_cache: bool = True) -> VelocityReport:
    """Write `in_path` plus `obsm[velocity_<basis>]` and `obs["velocity_confidence"]` to `out_path`.

    With `out_path=None` the result stays in the cache and `report.out` says where (no copy).
    """
    import anndata as ad

    from stx.data.builtin import write_h5ad_atomic

    if projection not in PROJECTIONS:
        raise DataError(f"projection '{projection}': choose one of {', '.join(PROJECTIONS)}")
    start = time.perf_counter()
    key = velocity_key_for(embed_key)
    settings = {"embed_key": embed_key, "projection": projection, "loadings": loadings_key, "log1p": log1p,
                "target_sum": target_sum, "n_neighbors": n_neighbors, "v": 1}
    from stx.data.load import open_h5ad

    open_h5ad(in_path).close()  # a clear error for a missing or unreadable file
    cached = _cache_path(in_path, settings)
    if out_path is None:
        out_path, use_cache = cached, True
    if use_cache and cached.exists():
        out_path.parent.mkdir(parents=True, exist_ok=True)
        if cached.resolve() != out_path.resolve():
            shutil.copyfile(cached, out_path)
        info = ad.read_h5ad(out_path, backed="r").uns[INFO_KEY]
        # the scVelo that computed the cached velocity (importing scVelo, and so scanpy, costs ~3 s)
        return VelocityReport(str(out_path), key, str(info["projection"]), str(info["mode"]),
                              time.perf_counter() - start, float(info["mean_confidence"]), True, str(info["scvelo"]))

    import scvelo

    adata = ad.read_h5ad(in_path)
    missing = [layer for layer in ("spliced", "unspliced") if layer not in adata.layers]
    if missing:
        raise DataError(f"{in_path}: no layers['{missing[0]}']: velocity needs spliced and unspliced counts "
                        f"(velocyto, STARsolo or alevin-fry output), or a precomputed obsm['{key}']")
    if embed_key != "X" and embed_key not in adata.obsm:
        raise DataError(f"{in_path}: obsm['{embed_key}'] not found (the basis to express velocity in)")
    if projection == "auto":
        projection = "linear" if loadings_key and loadings_key in adata.varm else "transition"
    if projection == "linear" and (not loadings_key or loadings_key not in adata.varm):
        raise DataError(f"{in_path}: the linear projection needs loadings in varm (got {loadings_key!r}; "
                        f"available: {', '.join(adata.varm.keys()) or 'none'})")

    velocity, confidence = _scvelo_velocity(adata, embed_key, projection, loadings_key, log1p, target_sum,
                                            n_neighbors)
    adata.obsm[key] = velocity
    adata.obs[CONFIDENCE_KEY] = confidence
    info = {"projection": projection, "mode": "deterministic", "scvelo": scvelo.__version__,
            "basis": embed_key, "mean_confidence": float(np.nanmean(confidence)),
            "magnitude_calibrated": projection == "linear",
            "note": "deterministic mode: scVelo's stochastic mode fails on NumPy >= 2.4 (theislab/scvelo#1341)"}
    adata.uns[INFO_KEY] = info
    write_h5ad_atomic(adata, out_path)
    if use_cache and cached.resolve() != out_path.resolve():
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out_path, cached)
    return VelocityReport(str(out_path), key, projection, "deterministic", time.perf_counter() - start,
                          info["mean_confidence"], False, scvelo.__version__)


def _scvelo_velocity(adata, embed_key: str, projection: str, loadings_key: str | None, log1p: bool,  # noqa: ANN001
                     target_sum: float, n_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
    import anndata as ad
    import scanpy as sc
    import scvelo as scv

    scv.settings.verbosity = 0
    work = ad.AnnData(X=adata.layers["spliced"].copy(), obs=adata.obs[[]].copy(), var=adata.var[[]].copy(),
                      layers={"spliced": adata.layers["spliced"].copy(), "unspliced": adata.layers["unspliced"].copy()})
    emb = np.asarray(adata.X.toarray() if embed_key == "X" and hasattr(adata.X, "toarray")
                     else adata.X if embed_key == "X" else adata.obsm[embed_key], dtype=np.float32)
    basis = "stx_basis"
    work.obsm[f"X_{basis}"] = emb
    totals = np.asarray(work.layers["spliced"].sum(1)).ravel()
    log.info("scVelo %s: normalise, moments, velocity (deterministic), velocity graph", scv.__version__)
    scv.pp.filter_and_normalize(work, min_shared_counts=20)
    if work.n_vars < 10:
        raise DataError("fewer than 10 genes have enough spliced/unspliced counts for velocity "
                        "(scVelo's min_shared_counts=20)")
    sc.pp.log1p(work)
    n_pcs = int(min(30, work.n_vars - 1, work.n_obs - 1))
    sc.pp.pca(work, n_comps=n_pcs)
    sc.pp.neighbors(work, n_neighbors=n_neighbors, n_pcs=n_pcs)
    scv.pp.moments(work, n_neighbors=n_neighbors, n_pcs=n_pcs)
    scv.tl.velocity(work, mode="deterministic")
    scv.tl.velocity_graph(work, n_jobs=1, show_progress_bar=False)
    scv.tl.velocity_confidence(work)
    if projection == "transition":
        scv.tl.velocity_embedding(work, basis=basis, all_comps=True, autoscale=False)
        velocity = work.obsm[f"velocity_{basis}"]
    else:
        genes = adata.var_names.get_indexer(work.var_names)
        loadings = np.asarray(adata.varm[loadings_key])[genes]
        scale = target_sum / float(np.median(totals)) if log1p else 1.0
        velocity = push_forward(work.layers["velocity"], loadings, work.layers["Ms"] if log1p else None, scale)
    # scVelo can drop cells: join back on obs_names, missing cells get NaN (excluded by the loss)
    out = np.full((adata.n_obs, emb.shape[1]), np.nan, np.float32)
    conf = np.full(adata.n_obs, np.nan, np.float32)
    rows = adata.obs_names.get_indexer(work.obs_names)
    out[rows] = np.asarray(velocity, np.float32)
    conf[rows] = work.obs["velocity_confidence"].to_numpy(np.float32)
    return out, conf
