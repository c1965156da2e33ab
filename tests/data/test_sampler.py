from __future__ import annotations

import numpy as np
import pytest
import torch

from stx.config import load_config
from stx.data import keys
from stx.data.load import load_cells
from stx.data.sampler import SetSampler
from stx.data.split import TRAIN, make_split


@pytest.fixture(scope="module")
def table_and_split(demo_path, tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "c.toml"
    path.write_text(f'[datasets]\ndemo = "{demo_path}"\n[data]\nembed_key = "X_state"\ntime_col = "day"\n')
    cfg = load_config(path)
    table = load_cells(cfg)
    return table, make_split(table, cfg)


def test_batch_shapes_and_dtypes(table_and_split):
    table, split = table_and_split
    sampler = SetSampler(table, split.mask(TRAIN), batch_size=5, cell_set_len=16, seed=0)
    batch = sampler.sample()
    assert set(batch) == set(keys.BATCH_KEYS)
    d = table.spec.embed_dim
    assert batch[keys.CTRL_EMB].shape == (5, 16, d) and batch[keys.CTRL_EMB].dtype == torch.float32
    assert batch[keys.PERT_CELL_EMB].shape == (5, 16, d)
    assert batch[keys.PERT_INDEX].shape == (5,) and batch[keys.PERT_INDEX].dtype == torch.int64
    assert batch[keys.BATCH_INDEX].shape == (5, 16)
    assert batch[keys.CTRL_CELL_INDEX].shape == (5, 16)


def test_sets_come_from_one_group_and_the_right_split(table_and_split):
    table, split = table_and_split
    mask = split.mask(TRAIN)
    sampler = SetSampler(table, mask, batch_size=32, cell_set_len=8, seed=3)
    for _ in range(5):
        batch = sampler.sample()
        ctrl, pert = batch[keys.CTRL_CELL_INDEX].numpy(), batch[keys.PERT_CELL_INDEX].numpy()
        assert mask[ctrl].all() and mask[pert].all()
        assert (table.pert[ctrl] == table.spec.control_index).all()
        for i in range(32):
            assert len(set(table.group[ctrl[i]]) | set(table.group[pert[i]])) == 1
            assert (table.pert[pert[i]] == batch[keys.PERT_INDEX][i].item()).all()
            assert (table.cell_type[ctrl[i]] == batch[keys.CELL_TYPE_INDEX][i].item()).all()
            assert (table.day[ctrl[i]] == batch[keys.DAY_INDEX][i].item()).all()
        np.testing.assert_array_equal(batch[keys.CTRL_EMB].numpy(), table.emb[ctrl])
        np.testing.assert_array_equal(batch[keys.BATCH_INDEX].numpy(), table.batch[ctrl])


def test_both_perturbed_and_control_tasks_are_drawn(table_and_split):
    table, split = table_and_split
    sampler = SetSampler(table, split.mask(TRAIN), batch_size=256, cell_set_len=2, seed=0)
    perts = set(sampler.sample()[keys.PERT_INDEX].tolist())
    assert perts == {0, 1}
    only_perturbed = SetSampler(table, split.mask(TRAIN), batch_size=64, cell_set_len=2, include_control=False)
    assert set(only_perturbed.sample()[keys.PERT_INDEX].tolist()) == {1}


def test_seeded_and_reproducible(table_and_split):
    table, split = table_and_split
    a = SetSampler(table, split.mask(TRAIN), 4, 8, seed=11).fixed_batches(3)
    b = SetSampler(table, split.mask(TRAIN), 4, 8, seed=11).fixed_batches(3)
    c = SetSampler(table, split.mask(TRAIN), 4, 8, seed=12).sample()
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x[keys.CTRL_CELL_INDEX], y[keys.CTRL_CELL_INDEX])
    assert not torch.equal(a[0][keys.CTRL_CELL_INDEX], c[keys.CTRL_CELL_INDEX])


def test_empty_selection_is_an_error(table_and_split):
    table, _ = table_and_split
    with pytest.raises(ValueError, match="no \\(group, perturbation\\)"):
        SetSampler(table, np.zeros(table.n_cells, bool), 2, 4)


def test_time_input_and_extra_covariates_travel_with_the_sets(table_and_split):
    from stx.data.covariates import CovariatePlan

    table, split = table_and_split
    plan = CovariatePlan(("day",), (table.spec.days,), time=True)
    sampler = SetSampler(table, split.mask(TRAIN), batch_size=16, cell_set_len=8, seed=1, covariates=plan)
    batch = sampler.sample()
    cov = batch[keys.COVARIATES]
    assert cov.shape == (16, 8, 1)
    # the time input of every cell is its set's (target) time point
    assert (cov[..., 0] == batch[keys.DAY_INDEX][:, None]).all()
    assert (torch.from_numpy(table.day)[batch[keys.CTRL_CELL_INDEX]] == cov[..., 0]).all()


def test_unseen_groups_get_target_free_sets_only_when_asked(table_and_split):
    from stx.data.split import heldout_group_codes

    table, split = table_and_split
    held = heldout_group_codes(table, ("Fib:14",))
    mask = split.mask(TRAIN) & ~(np.isin(table.group, list(held)) & (table.pert != table.spec.control_index))
    plain = SetSampler(table, mask, batch_size=64, cell_set_len=8, seed=0)
    assert plain.sample()[keys.HAS_TARGET].all()
    prior = SetSampler(table, mask, batch_size=256, cell_set_len=8, seed=0, unseen_tasks=True)
    batch = prior.sample()
    free = ~batch[keys.HAS_TARGET]
    assert free.any() and (batch[keys.PERT_INDEX][free] != table.spec.control_index).all()
    group = torch.from_numpy(table.group)[batch[keys.CTRL_CELL_INDEX][free]]
    assert set(group.unique().tolist()) == set(held)
