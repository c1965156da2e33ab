from __future__ import annotations

import logging

import numpy as np
import pytest
import scipy.sparse as sp

from stx.config import load_config
from stx.data.load import load_cells
from stx.errors import DataError


def _save(adata, tmp_path, name="d.h5ad"):
    path = tmp_path / name
    adata.write_h5ad(path)
    return path


def _load(write_config, path, overrides=()):
    return load_cells(load_config(write_config(path), overrides))


def test_loads_demo_into_codes_and_spec(demo_path, demo_adata, write_config):
    table = _load(write_config, demo_path)
    spec = table.spec
    assert spec.perts == ("Sham", "Burn") and spec.control == "Sham"
    assert spec.days == ("10", "14", "19") and spec.has_time
    assert spec.embed_dim == demo_adata.obsm["X_state"].shape[1]
    assert table.emb.dtype == np.float32 and table.emb.shape == (demo_adata.n_obs, spec.embed_dim)
    np.testing.assert_array_equal(table.emb, demo_adata.obsm["X_state"])
    burn = np.asarray(spec.perts)[table.pert] == "Burn"
    np.testing.assert_array_equal(burn, (demo_adata.obs["condition"] == "Burn").to_numpy())
    assert table.skipped_groups == ()


def test_string_columns_sparse_embedding_and_float_days(demo_adata, tmp_path, write_config):
    a = demo_adata.copy()
    a.obs["condition"] = a.obs["condition"].astype(str)
    a.obs["day"] = a.obs["day"].astype(float)
    a.obsm["X_state"] = sp.csr_matrix(a.obsm["X_state"])
    table = _load(write_config, _save(a, tmp_path))
    assert table.spec.days == ("10", "14", "19")
    np.testing.assert_allclose(table.emb, demo_adata.obsm["X_state"])


def test_embedding_from_X(demo_path, write_config):
    table = _load(write_config, demo_path, ["data.embed_key=X"]).spec
    assert table.embed_dim == 256


def _broken(demo_adata, how):
    a = demo_adata[::5].copy()
    if how == "nan":
        a.obsm["X_state"][5, 3] = np.nan
    elif how == "inf":
        a.obsm["X_state"][7, 0] = np.inf
    elif how == "no_control":
        a.obs["condition"] = a.obs["condition"].cat.rename_categories({"Sham": "Control"})
    elif how == "one_condition":
        a = a[a.obs["condition"] == "Sham"].copy()
    elif how == "missing_value":
        a.obs["mouse_id"] = a.obs["mouse_id"].astype(object)
        a.obs.iloc[3, a.obs.columns.get_loc("mouse_id")] = None
    return a


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("nan", "obsm['X_state'] has NaN or inf values in 1 cells"),
        ("inf", "obsm['X_state'] has NaN or inf values in 1 cells"),
        ("no_control", "control label 'Sham' (data.control_pert) not found in obs['condition']; labels: Burn, Control"),
        ("one_condition", "obs['condition'] has only 'Sham'"),
        ("missing_value", "obs column 'mouse_id' (data.batch_col) has 1 missing values"),
    ],
)
def test_bad_data_is_reported(demo_adata, tmp_path, write_config, how, message):
    path = _save(_broken(demo_adata, how), tmp_path)
    with pytest.raises(DataError) as info:
        _load(write_config, path)
    assert message in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('[data]\nembed_key = "X_pca"', "obsm['X_pca'] not found (data.embed_key); available: X_state, truth_noise_free"),
        ('[data]\npert_col = "conditon"', "obs column 'conditon' not found (data.pert_col); did you mean 'condition'?"),
        ('[data]\ncell_type_key = "celltype"', "obs column 'celltype' not found (data.cell_type_key)"),
        ('[data]\ntime_col = "timepoint"', "obs column 'timepoint' not found (data.time_col)"),
    ],
)
def test_missing_keys_and_columns(demo_path, tmp_path, extra, message):
    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(f'[datasets]\ndemo = "{demo_path}"\n' + extra.replace("[data]\n", "[data]\nembed_key = \"X_state\"\n", 1)
                        if "embed_key" not in extra else f'[datasets]\ndemo = "{demo_path}"\n' + extra)
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        load_cells(load_config(cfg_path))


def test_missing_and_unreadable_files(tmp_path, write_config):
    with pytest.raises(DataError, match="file not found"):
        _load(write_config, tmp_path / "absent.h5ad")
    junk = tmp_path / "junk.h5ad"
    junk.write_text("this is not hdf5")
    with pytest.raises(DataError, match=r"junk.h5ad: not a readable .h5ad \(HDF5\) file"):
        _load(write_config, junk)


def test_truncated_file(demo_path, tmp_path, write_config):
    cut = tmp_path / "cut.h5ad"
    cut.write_bytes(demo_path.read_bytes()[: demo_path.stat().st_size // 3])
    with pytest.raises(DataError, match="cut.h5ad"):
        _load(write_config, cut)


def test_group_without_perturbed_cells_is_skipped_with_a_warning(demo_adata, tmp_path, write_config, caplog):
    a = demo_adata.copy()
    drop = (a.obs["cell_types_simple_short"] == "Neut") & (a.obs["day"] == 14) & (a.obs["condition"] == "Burn")
    path = _save(a[~drop.to_numpy()].copy(), tmp_path)
    with caplog.at_level(logging.WARNING, logger="stx"):
        table = _load(write_config, path)
    assert table.skipped_groups == (("Neut", "14", "no perturbed cells"),)
    assert "skipping group (Neut, day 14): no perturbed cells" in caplog.text


def test_two_datasets_share_vocabularies_and_check_widths(demo_adata, tmp_path):
    a, b = demo_adata[::7][:200].copy(), demo_adata[1::7][:200].copy()
    pa, pb = _save(a, tmp_path, "a.h5ad"), _save(b, tmp_path, "b.h5ad")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[datasets]\na = "{pa}"\nb = "{pb}"\n[training]\nb = "test"\n[data]\nembed_key = "X_state"\ntime_col = "day"\n')
    table = load_cells(load_config(cfg))
    assert table.n_cells == 400 and set(table.dataset.tolist()) == {0, 1}
    b.obsm["X_state"] = b.obsm["X_state"][:, :10]
    _save(b, tmp_path, "b.h5ad")
    with pytest.raises(DataError, match=r"data sets disagree on the width of obsm\['X_state'\] \(a.h5ad: 64, b.h5ad: 10\)"):
        load_cells(load_config(cfg))


def test_duplicate_cell_ids_across_files_are_prefixed(demo_adata, tmp_path):
    a = demo_adata[::7][:200].copy()
    pa, pb = _save(a, tmp_path, "a.h5ad"), _save(a, tmp_path, "b.h5ad")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[datasets]\na = "{pa}"\nb = "{pb}"\n[data]\nembed_key = "X_state"\n')
    table = load_cells(load_config(cfg))
    assert len(set(table.obs_names)) == 400 and table.obs_names[0].startswith("a:")


