from __future__ import annotations

import numpy as np
import pytest

from stx.data.demo import CELL_TYPES, DAYS, WORLDS, make_wound_healing, true_shift_table


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
    assert a.obsm["truth_response"].shape == (a.n_obs, 64)


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
    from stx.data.demo import GeneSpace

    world = GeneSpace()
    rng = np.random.default_rng(0)
    ct = rng.integers(0, len(CELL_TYPES), 300)
    t = rng.uniform(1, 9, 300)
    from stx.data.demo import _embedding_velocity

    v = _embedding_velocity(world, ct, t, np.zeros((300, world.n_genes)))
    step = world.expected_embedding(ct, t + 0.05) - world.expected_embedding(ct, t)
    cos = (v * step).sum(1) / np.linalg.norm(v, axis=1) / np.linalg.norm(step, axis=1)
    assert np.median(cos) > 0.99


def test_counterfactuals_are_exact_for_the_observed_cells(demo_adata):
    # a Burn cell's observed embedding is its Sham counterfactual plus its response
    a = demo_adata
    burn = (a.obs["condition"] == "Burn").to_numpy()
    assert np.isfinite(a.obsm["truth_response"]).all()
    # the group truth is the mean response of the group's Sham cells
    truth = true_shift_table(a)
    obs = a.obs
    group = (obs["cell_types_simple_short"] == "Fib").to_numpy() & (obs["day"] == 14).to_numpy() & ~burn
    np.testing.assert_allclose(truth[("Fib", 14)], a.obsm["truth_response"][group].mean(0), rtol=1e-5, atol=1e-5)


def test_coupled_poisson_keeps_both_marginals():
    from stx.data.demo import coupled_poisson

    rng = np.random.default_rng(0)
    lam0, lam1 = np.full(200_000, 5.0), np.where(np.arange(200_000) % 2 == 0, 8.0, 2.0)
    c0, c1 = coupled_poisson(rng, lam0, lam1)
    assert c0.mean() == pytest.approx(5.0, rel=0.02) and c0.var() == pytest.approx(5.0, rel=0.05)
    for lam in (8.0, 2.0):
        sel = lam1 == lam
        assert c1[sel].mean() == pytest.approx(lam, rel=0.02) and c1[sel].var() == pytest.approx(lam, rel=0.05)
    # coupled: the pair differs far less than two independent draws would
    assert np.var(c1[lam1 == 8.0] - c0[lam1 == 8.0]) < 0.5 * (8.0 + 5.0)


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    """Each world at 3,000 cells with scVelo's velocity (linear projection), measured."""
    import anndata as ad

    from stx.data.builtin import write_demo
    from stx.data.demo_report import describe_world
    from stx.data.velocity import prepare_velocity

    out = {}
    folder = tmp_path_factory.mktemp("worlds")
    for name in ("burn", "velocity-aligned", "velocity-misleading"):
        path = write_demo(folder / f"{name}.h5ad", n_cells=3000, seed=2, world=name)
        report = prepare_velocity(path, "X_state", folder / f"{name}-v.h5ad", projection="linear",
                                  loadings_key="state_loadings", use_cache=False)
        out[name] = describe_world(ad.read_h5ad(path), ad.read_h5ad(report.out).obsm[report.key])
    return out


def test_velocity_aligned_world_is_a_positive_control(worlds):
    p = worlds["velocity-aligned"]
    # measured at 8,000 cells (stx data demo --describe): along 0.68, cos(true v) 0.80, cos(scVelo v) 0.56, noise 0.98
    assert p.along_share > 0.5 and p.cos_true_velocity > 0.6
    assert p.cos_scvelo_velocity > 0.4
    assert p.within_share > 0.5 and p.noise_ratio > 0.7  # per-cell structure comparable to cell noise


def test_velocity_misleading_world_runs_against_the_velocity(worlds):
    p = worlds["velocity-misleading"]
    assert p.along_share > 0.5 and p.cos_true_velocity < -0.6 and p.cos_scvelo_velocity < -0.4


def test_burn_world_is_velocity_neutral(worlds):
    p = worlds["burn"]
    assert p.along_share < 0.2 and abs(p.cos_scvelo_velocity) < 0.3


def _time_line_share(world: str) -> float:
    """Smallest share, over cell types, of the three days' true mean responses that one line
    through them explains (1: the time course is one movement along one direction)."""
    table = true_shift_table(make_wound_healing(n_cells=3000, seed=2, world=world))
    shares = []
    for cell_type in CELL_TYPES:
        x = np.stack([table[(cell_type, d)] for d in DAYS])
        sv = np.linalg.svd(x - x.mean(0), compute_uv=False)
        shares.append(sv[0] ** 2 / (sv**2).sum())
    return min(shares)


def test_time_switch_world_is_the_negative_control_of_the_time_axis():
    # measured at 3,000 cells, seed 2: burn 0.977, time-switch 0.79
    assert _time_line_share("burn") > 0.95
    assert _time_line_share("time-switch") < 0.85
    assert "time-switch" in WORLDS
