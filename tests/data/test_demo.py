from __future__ import annotations

import numpy as np

from stx.data.demo import CELL_TYPES, DAYS, make_wound_healing, true_shift_table


def test_layout_matches_the_study(demo_adata):
    a = demo_adata
    assert set(a.obs["condition"].cat.categories) == {"Sham", "Burn"}
    assert set(a.obs["cell_types_simple_short"].unique()) == set(CELL_TYPES)
    assert sorted(a.obs["day"].unique()) == list(DAYS)
    assert a.obs["mouse_id"].nunique() >= 8
    # mice are nested in (condition, day)
    assert (a.obs.groupby("mouse_id", observed=True)[["condition", "day"]].nunique() == 1).all().all()
    assert {"spliced", "unspliced"} <= set(a.layers)
    for layer in ("spliced", "unspliced"):
        values = a.layers[layer].data
        assert (values >= 0).all() and np.allclose(values, np.round(values))
    assert a.obsm["X_state"].shape == (a.n_obs, 64)
    assert a.obsm["truth_velocity"].shape == (a.n_obs, 64)


def test_deterministic_for_a_seed():
    a, b = make_wound_healing(400, seed=5), make_wound_healing(400, seed=5)
    np.testing.assert_array_equal(a.obsm["X_state"], b.obsm["X_state"])
    np.testing.assert_array_equal(a.layers["unspliced"].toarray(), b.layers["unspliced"].toarray())
    c = make_wound_healing(400, seed=6)
    assert not np.array_equal(a.obsm["X_state"], c.obsm["X_state"])


def test_true_shift_matches_what_the_data_shows(demo_adata):
    a = demo_adata
    emb, obs = a.obsm["X_state"], a.obs
    truth = true_shift_table(a)
    assert len(truth) == len(CELL_TYPES) * len(DAYS)
    cors = []
    for (cell_type, day), shift in truth.items():
        group = (obs["cell_types_simple_short"] == cell_type).to_numpy() & (obs["day"] == day).to_numpy()
        burn = (obs["condition"] == "Burn").to_numpy()
        observed = emb[group & burn].mean(0) - emb[group & ~burn].mean(0)
        cors.append(np.corrcoef(observed, shift)[0, 1])
    # counting noise and mouse effects blur the observed shift, but it follows the truth
    assert np.median(cors) > 0.6


def test_effect_differs_by_cell_type_and_moves_smoothly_over_days(demo_adata):
    truth = true_shift_table(demo_adata)
    cos = lambda x, y: float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))  # noqa: E731
    for cell_type in CELL_TYPES:
        d10, d14, d19 = (truth[(cell_type, d)] for d in DAYS)
        assert cos(d10, d14) > cos(d10, d19)  # the direction drifts from day 10 to 19
        assert cos(d10, d19) < 0.99
    assert cos(truth[("Fib", 10)], truth[("Mac", 10)]) < 0.9


def test_truth_velocity_points_along_the_trajectory():
    # cells one small step later on their trajectory sit where the velocity points
    from stx.data.demo import SyntheticWorld

    world = SyntheticWorld()
    rng = np.random.default_rng(0)
    ct = rng.integers(0, len(CELL_TYPES), 300)
    t = rng.uniform(1, 9, 300)
    from stx.data.demo import _embedding_velocity

    v = _embedding_velocity(world, ct, t, np.zeros((300, world.n_genes)))
    step = world.expected_embedding(ct, t + 0.05) - world.expected_embedding(ct, t)
    cos = (v * step).sum(1) / np.linalg.norm(v, axis=1) / np.linalg.norm(step, axis=1)
    assert np.median(cos) > 0.99
