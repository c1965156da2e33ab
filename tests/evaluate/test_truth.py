"""The metrics against the demo's ground truth: the truth is the ceiling, predictors that
ignore their input or copy it cannot beat it, and a shuffled truth fails. These must be
able to fail: each cheating predictor here beat the truth under the old definitions."""

from __future__ import annotations

import numpy as np
import pytest

from stx.config import load_config
from stx.data.builtin import write_demo
from stx.data.load import load_cells
from stx.data.split import make_split
from stx.evaluate.design import make_design
from stx.evaluate.metrics import METRICS, better
from stx.evaluate.predict import Predictions
from stx.evaluate.references import control, mean_shift, perturbed_mean, truth
from stx.evaluate.report import evaluate, summarize


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("truth")
    path = write_demo(folder / "demo.h5ad", n_cells=8000, seed=0)
    cfg_path = folder / "c.toml"
    cfg_path.write_text(f'[datasets]\nd = "{path}"\n[data]\nembed_key = "X_state"\ntime_col = "day"\n')
    cfg = load_config(cfg_path)
    table = load_cells(cfg)
    split = make_split(table, cfg)
    design = make_design(table, split, seed=0)
    return table, split, design


def _score(table, split, design, predictor):
    return summarize(evaluate(table, design, predictor(table, split, design.tasks), min_cells=10))


def test_truth_is_the_ceiling_on_the_headline(demo):
    table, split, design = demo
    best = _score(table, split, design, truth)
    # measured: energy 0.16, pearson 0.95, temporal 0.80, cell_r2 1 on held-out mice
    assert best["eval/energy_ratio"] < 0.25 and best["eval/pearson_delta"] > 0.9
    assert best["eval/cell_r2"] == pytest.approx(1.0) and best["eval/cell_cos"] == pytest.approx(1.0)
    for other in (mean_shift, perturbed_mean, control):
        scores = _score(table, split, design, other)
        assert scores["eval/energy_ratio"] > best["eval/energy_ratio"], other.__name__


def test_predictors_that_ignore_or_copy_their_input_never_beat_the_truth(demo):
    table, split, design = demo
    best = _score(table, split, design, truth)
    for cheat in (perturbed_mean, control):
        scores = _score(table, split, design, cheat)
        for metric in METRICS:
            key = f"eval/{metric}"
            assert not better(metric, scores[key], best[key]), (cheat.__name__, metric, scores[key], best[key])


def test_the_control_copy_scores_as_no_better_than_control(demo):
    table, split, design = demo
    scores = _score(table, split, design, control)
    assert scores["eval/energy_ratio"] == pytest.approx(1.0, abs=0.15)
    assert scores["eval/pearson_delta"] == 0.0 and scores["eval/magnitude_ratio"] == 0.0
    assert scores["eval/cell_r2"] < 0


def test_a_shuffled_truth_fails(demo):
    table, split, design = demo
    rng = np.random.default_rng(0)
    right = truth(table, split, design.tasks)
    # every group gets the true responses of another group's cells
    groups = table.group[right.source]
    donors = {g: rng.choice(np.flatnonzero(groups != g), (groups == g).sum()) for g in np.unique(groups)}
    emb = right.emb.copy()
    for g, rows in donors.items():
        emb[groups == g] = table.emb[right.source[groups == g]] + table.truth_response[right.source[rows]]
    shuffled = summarize(evaluate(table, design, Predictions(right.source, right.pert, emb), min_cells=10))
    best = summarize(evaluate(table, design, right, min_cells=10))
    assert shuffled["eval/pearson_delta"] < best["eval/pearson_delta"] - 0.3
    assert shuffled["eval/energy_ratio"] > best["eval/energy_ratio"] + 0.3


def test_mean_shift_is_a_real_bar_but_below_the_truth(demo):
    table, split, design = demo
    m = _score(table, split, design, mean_shift)
    t = _score(table, split, design, truth)
    assert 0.8 < m["eval/pearson_delta"] <= t["eval/pearson_delta"] and m["eval/energy_ratio"] < 0.4


def test_fed_and_reference_halves_are_disjoint_and_cover_the_test_controls(demo):
    _table, _split, design = demo
    assert not (design.fed & design.reference).any()
    for task in design.tasks:
        assert abs(len(task.fed) - len(task.reference)) <= 1
        assert not set(task.fed) & set(task.reference)
