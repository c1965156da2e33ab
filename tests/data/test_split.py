from __future__ import annotations

import numpy as np
import pytest

from stx.config import load_config
from stx.data.load import load_cells
from stx.data.split import TEST, TRAIN, VAL, make_split
from stx.errors import DataError


def _table(write_config, path, overrides=()):
    cfg = load_config(write_config(path), overrides)
    return load_cells(cfg), cfg


def test_split_by_mouse_is_deterministic_and_leak_free(demo_path, write_config):
    table, cfg = _table(write_config, demo_path)
    a, b = make_split(table, cfg), make_split(table, cfg)
    np.testing.assert_array_equal(a.codes, b.codes)
    assert a.mode == "batch"
    for code in (TRAIN, VAL, TEST):
        assert a.mask(code).any()
    # no mouse in two splits
    for mouse in np.unique(table.batch):
        assert len(set(a.codes[table.batch == mouse].tolist())) == 1
    # every (condition, day) is represented in the test split
    test = a.mask(TEST)
    for p in range(len(table.spec.perts)):
        for d in range(len(table.spec.days)):
            assert (test & (table.pert == p) & (table.day == d)).any()


def test_other_seed_gives_other_split(demo_path, write_config):
    table, cfg = _table(write_config, demo_path)
    _, cfg2 = _table(write_config, demo_path, ["data.split_seed=7"])
    assert not np.array_equal(make_split(table, cfg).codes, make_split(table, cfg2).codes)


def test_few_mice_falls_back_to_stratified_cell_split(demo_path, write_config):
    table, cfg = _table(write_config, demo_path, ['data.batch_col=""'])
    split = make_split(table, cfg)
    assert split.mode == "cell"
    # every stratum (condition x cell type x day) with enough cells has cells in each split
    stratum = (table.pert * 10 + table.cell_type) * 10 + table.day
    for s in np.unique(stratum):
        codes = split.codes[stratum == s]
        if len(codes) >= 10:
            assert set(codes.tolist()) == {TRAIN, VAL, TEST}
    share = np.bincount(split.codes) / table.n_cells
    assert share[TEST] == pytest.approx(cfg.data.test_fraction, abs=0.03)


def test_forcing_batch_split_without_enough_batches(demo_path, write_config, demo_adata, tmp_path):
    a = demo_adata.copy()
    a.obs["mouse_id"] = np.where(a.obs["condition"] == "Burn", "B1", "S1")
    path = tmp_path / "two_mice.h5ad"
    a.write_h5ad(path)
    table, cfg = _table(write_config, path, ["data.split=batch"])
    with pytest.raises(DataError, match=r"needs at least 3 batches \(mouse_id\) per condition"):
        make_split(table, cfg)
    table, cfg = _table(write_config, path)
    assert make_split(table, cfg).mode == "cell"


def test_test_role_dataset_is_entirely_held_out(demo_adata, tmp_path):
    a, b = demo_adata[::2].copy(), demo_adata[1::2].copy()
    a.write_h5ad(tmp_path / "a.h5ad")
    b.write_h5ad(tmp_path / "b.h5ad")
    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(f'[datasets]\na = "{tmp_path}/a.h5ad"\nb = "{tmp_path}/b.h5ad"\n'
                        '[training]\nb = "test"\n[data]\nembed_key = "X_state"\ntime_col = "day"\n')
    cfg = load_config(cfg_path)
    table = load_cells(cfg)
    split = make_split(table, cfg)
    assert (split.codes[table.dataset == 1] == TEST).all()
    assert (split.codes[table.dataset == 0] == TRAIN).any()
    frame = split.frame(table)
    assert list(frame.columns) == ["obs_name", "dataset", "split"]
    assert set(frame.loc[frame.dataset == "b", "split"]) == {"test"}


def test_heldout_groups_send_their_perturbed_cells_to_test(demo_path, tmp_path):
    from stx.data.split import TEST, heldout_group_codes
    from stx.errors import DataError

    path = tmp_path / "c.toml"
    path.write_text(f'[datasets]\nd = "{demo_path}"\n[data]\nembed_key = "X_state"\ntime_col = "day"\n'
                    'heldout_groups = ["Fib:14", "Mac"]\n')
    cfg = load_config(path)
    table = load_cells(cfg)
    split = make_split(table, cfg)
    held = heldout_group_codes(table, cfg.data.heldout_groups)
    assert len(held) == 4 and split.heldout == held
    in_held = np.isin(table.group, list(held))
    burn = table.pert != table.spec.control_index
    assert (split.codes[in_held & burn] == TEST).all()
    assert (split.codes[in_held & ~burn] != TEST).any()  # their controls are split as usual
    for bad, message in (("Foo", "cell type 'Foo'"), ("Fib:99", "time '99'")):
        with pytest.raises(DataError, match=message):
            heldout_group_codes(table, (bad,))
