from __future__ import annotations

import logging
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest
from click.testing import CliRunner

from stx.cli import cli
from stx.config import load_config
from stx.data.load import load_cells
from stx.data.velocity import prepare_velocity, push_forward
from stx.errors import DataError


def test_push_forward_is_exact_for_a_linear_embedding():
    rng = np.random.default_rng(0)
    x, v, w = rng.random((50, 20)), rng.normal(size=(50, 20)), rng.normal(size=(20, 5))
    # emb = x @ w is linear, so d emb/dt = (dx/dt) @ w exactly, whatever the step
    h = 0.5
    emb_velocity = ((x + h * v) @ w - x @ w) / h
    np.testing.assert_allclose(push_forward(v, w), emb_velocity, rtol=1e-5, atol=1e-5)
    # log1p embedding: the chain rule, against a central difference
    scale, h = 2.0, 1e-5
    finite = (np.log1p(scale * (x + h * v)) @ w - np.log1p(scale * (x - h * v)) @ w) / (2 * h)
    np.testing.assert_allclose(push_forward(v, w, log1p_of=x, scale=scale), finite, rtol=1e-3, atol=1e-3)


def _cos(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def prepared(demo_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("vel")
    return {proj: prepare_velocity(demo_path, "X_state", out / f"{proj}.h5ad", projection=proj,
                                   loadings_key="state_loadings" if proj == "linear" else None, use_cache=False)
            for proj in ("transition", "linear")}


@pytest.mark.parametrize(("projection", "threshold"), [("transition", 0.3), ("linear", 0.35)])
def test_scvelo_velocity_points_along_the_true_trajectories(prepared, projection, threshold):
    # Measured on this 1,500-cell demo: mean cosine with the true velocity 0.41 (transition) and
    # 0.47 (linear); 0.56 / 0.52 on 6,000 cells (more neighbours, better moments). Random
    # directions in 64 dims give 0 +- 0.003 over 1,500 cells, so these thresholds fail for any
    # projection that does not follow the truth, with room for the noise of other seeds.
    report = prepared[projection]
    a = ad.read_h5ad(report.out)
    v = a.obsm["velocity_state"]
    assert v.shape == a.obsm["X_state"].shape
    assert np.nanmean(_cos(v, a.obsm["truth_velocity"])) > threshold
    assert 0 < a.obs["velocity_confidence"].mean() <= 1
    assert a.uns["stx_velocity"]["magnitude_calibrated"] == (projection == "linear")
    assert report.mode == "deterministic"


def test_second_run_comes_from_the_cache(demo_path, tmp_path):
    first = prepare_velocity(demo_path, "X_state", tmp_path / "a.h5ad")
    second = prepare_velocity(demo_path, "X_state", tmp_path / "b.h5ad")
    assert not first.cached and second.cached and second.seconds < 1.0
    assert second.scvelo == first.scvelo  # the version that computed the cached velocity
    np.testing.assert_array_equal(ad.read_h5ad(tmp_path / "a.h5ad").obsm["velocity_state"],
                                  ad.read_h5ad(tmp_path / "b.h5ad").obsm["velocity_state"])


def test_a_cache_hit_does_not_import_scvelo(demo_path, tmp_path):
    """scVelo, and scanpy with it, take seconds to import; a run whose velocity is cached
    needs neither."""
    prepare_velocity(demo_path, "X_state", tmp_path / "a.h5ad")
    code = ("import sys; from pathlib import Path; from stx.data.velocity import prepare_velocity; "
            f"r = prepare_velocity(Path({str(demo_path)!r}), 'X_state', None); assert r.cached, r; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('scvelo', 'scanpy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cli_velocity(demo_path, tmp_path):
    result = CliRunner().invoke(cli, ["velocity", "--data", str(demo_path), "--basis", "X_state",
                                      "--out", str(tmp_path / "v.h5ad")])
    assert result.exit_code == 0, result.output
    assert "obsm['velocity_state'] (transition projection" in result.output
    assert "deterministic mode" in result.output


def _config(tmp_path, data, extra=""):
    path = tmp_path / "c.toml"
    path.write_text(f'[datasets]\nd = "{data}"\n[data]\nembed_key = "X_state"\ntime_col = "day"\n'
                    f'[model.velocity]\nvelocity_key = "velocity_state"\n{extra}')
    return load_config(path)


def test_loading_prepares_velocity_on_first_use(demo_path, tmp_path):
    table = load_cells(_config(tmp_path, demo_path), velocity=True)
    assert table.velocity.shape == table.emb.shape and table.velocity_weight.shape == (table.n_cells,)
    assert not table.velocity_calibrated  # transition projection by default without loadings


def test_no_velocity_and_no_layers(demo_adata, tmp_path):
    a = demo_adata.copy()
    del a.layers["spliced"]
    a.write_h5ad(tmp_path / "x.h5ad")
    with pytest.raises(DataError, match=r"no obsm\['velocity_state'\] \(model.velocity.velocity_key\) and no "
                                        r"layers\['spliced'\]/\['unspliced'\].*velocyto, STARsolo") as info:
        load_cells(_config(tmp_path, tmp_path / "x.h5ad"), velocity=True)
    # it never suggests a command that would fail on this file
    assert "run 'stx velocity" not in str(info.value)


def test_velocity_width_must_match(demo_adata, tmp_path):
    a = demo_adata.copy()
    a.obsm["velocity_state"] = np.ones((a.n_obs, 10), np.float32)
    a.write_h5ad(tmp_path / "x.h5ad")
    with pytest.raises(DataError, match=r"obsm\['velocity_state'\] has 10 dims but the embedding obsm\['X_state'\] has 64"):
        load_cells(_config(tmp_path, tmp_path / "x.h5ad"), velocity=True)


def test_all_zero_velocity_is_an_error(demo_adata, tmp_path):
    a = demo_adata.copy()
    a.obsm["velocity_state"] = np.zeros((a.n_obs, 64), np.float32)
    a.write_h5ad(tmp_path / "x.h5ad")
    with pytest.raises(DataError, match="is all zero or NaN"):
        load_cells(_config(tmp_path, tmp_path / "x.h5ad"), velocity=True)


def test_few_confident_cells_warn(demo_adata, tmp_path, caplog):
    a = demo_adata.copy()
    a.obsm["velocity_state"] = np.ones((a.n_obs, 64), np.float32)
    a.obs["velocity_confidence"] = np.where(np.arange(a.n_obs) < 50, 0.9, 0.1).astype(np.float32)
    a.write_h5ad(tmp_path / "x.h5ad")
    with caplog.at_level(logging.WARNING, logger="stx"):
        load_cells(_config(tmp_path, tmp_path / "x.h5ad"), velocity=True)
    assert f"only 50 of {a.n_obs} cells" in caplog.text
