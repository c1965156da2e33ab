"""The metrics against the demo's ground truth: the truth scores well, the control and
shuffled predictions do not. These must be able to fail."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from stx.config import load_config
from stx.data.builtin import write_demo
from stx.data.demo import true_shift_table
from stx.data.load import load_cells
from stx.data.split import TEST, make_split
from stx.evaluate.predict import Predictions
from stx.evaluate.report import evaluate, mean_shift_predictions, summarize


@pytest.fixture(scope="module")
def demo6000(tmp_path_factory):
    folder = tmp_path_factory.mktemp("truth")
    path = write_demo(folder / "demo.h5ad", n_cells=6000, seed=0)
    cfg_path = folder / "c.toml"
    cfg_path.write_text(f'[datasets]\nd = "{path}"\n[data]\nembed_key = "X_state"\ntime_col = "day"\n')
    cfg = load_config(cfg_path)
    table = load_cells(cfg)
    return table, make_split(table, cfg), true_shift_table(ad.read_h5ad(path))


def _from_controls(table, split, shift_of):
    ctrl = np.flatnonzero(split.mask(TEST) & (table.pert == table.spec.control_index))
    emb = np.stack([table.emb[i] + shift_of(i) for i in ctrl]).astype(np.float32)
    return Predictions(ctrl, np.full(len(ctrl), 1), emb)


def _truth(table, truth):
    return lambda i: truth[(table.spec.cell_types[table.cell_type[i]], int(table.spec.days[table.day[i]]))]


def test_true_shift_meets_the_targets(demo6000):
    table, split, truth = demo6000
    m = summarize(evaluate(table, split, _from_controls(table, split, _truth(table, truth))))
    # measured: pearson 0.92, energy 0.28, direction 0.92, temporal 0.73 on held-out mice
    assert m["eval/pearson_delta"] > 0.85 and m["eval/direction_cos"] > 0.85
    assert m["eval/energy_ratio"] < 0.35 and m["eval/temporal_coherence"] > 0.6


def test_control_and_shuffled_predictions_fail(demo6000):
    table, split, truth = demo6000
    control = summarize(evaluate(table, split, _from_controls(table, split, lambda i: 0.0)))
    assert control["eval/energy_ratio"] == pytest.approx(1.0)
    assert control.get("eval/frac_energy_ratio_target", 0.0) == 0.0
    keys = sorted(truth)
    rng = np.random.default_rng(0)
    wrong = dict(zip(keys, [truth[keys[j]] for j in rng.permutation(len(keys))], strict=True))
    shuffled = summarize(evaluate(table, split, _from_controls(table, split, _truth(table, wrong))))
    right = summarize(evaluate(table, split, _from_controls(table, split, _truth(table, truth))))
    assert shuffled["eval/pearson_delta"] < right["eval/pearson_delta"] - 0.3
    assert shuffled["eval/energy_ratio"] > right["eval/energy_ratio"] + 0.2


def test_mean_shift_reference_is_a_real_bar(demo6000):
    table, split, _ = demo6000
    m = summarize(evaluate(table, split, mean_shift_predictions(table, split)))
    assert 0.7 < m["eval/pearson_delta"] < 0.99 and m["eval/energy_ratio"] < 0.6
