from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stx.comparison.query import RunRecord, cast_params, check_same_data
from stx.comparison.stats import NO_CLEAR, bootstrap, score, verdict
from stx.comparison.tables import build_rows, comparison_table, differences, summary_lines, to_markdown
from stx.errors import StxError

GROUPS = [("Burn", ct, d) for ct in ("A", "B", "C") for d in ("1", "2")]


def _record(variant, run_id, seed=0, sha="a"):
    return RunRecord(run_id, variant, "1", sha, {"val/energy_loss": 1.0}, {"trainer.seed": seed}, {}, "")


def _frame(values, predictor="model", small=None):
    rows = []
    for i, (p, ct, d) in enumerate(GROUPS):
        rows.append({"perturbation": p, "cell_type": ct, "day": d, "small": bool(small and i in small),
                     "heldout": False, "predictor": predictor, "energy_ratio": values[i],
                     "pearson_delta": 1 - values[i], "magnitude_ratio": 1.0})
    return pd.DataFrame(rows)


def test_bootstrap_covers_the_mean_and_resamples_both_levels():
    rng = np.random.default_rng(0)
    m = rng.normal(0.5, 0.1, (1, 40))
    one = bootstrap(m)
    assert one.low < one.mean < one.high and one.n_seeds == 1 and one.n_groups == 40
    assert one.high - one.low == pytest.approx(2 * 1.96 * 0.1 / np.sqrt(40), rel=0.3)
    # seeds that disagree widen the interval even when every group agrees within a seed
    seeds = np.array([[0.2] * 10, [0.8] * 10, [0.5] * 10])
    wide = bootstrap(seeds)
    assert wide.high - wide.low > 0.3
    assert np.isnan(bootstrap(np.array([[0.3]])).low)  # one value: no interval
    assert bootstrap(np.array([[np.nan, 1.0, 3.0]])).mean == 2.0


def test_scores_and_verdicts():
    assert score("energy_ratio", np.array([0.2]))[0] == -0.2
    assert score("magnitude_ratio", np.array([0.8, 1.3])).tolist() == pytest.approx([-0.2, -0.3])
    assert verdict(bootstrap(np.full((2, 5), 0.1) + np.arange(5) * 0.01)) == "better"
    assert verdict(bootstrap(-np.full((2, 5), 0.1) - np.arange(5) * 0.01)) == "worse"
    assert verdict(bootstrap(np.array([[-0.1, 0.1, -0.1, 0.1]]))) == NO_CLEAR


def _rows(lora_values, velocity_values, mean_shift):
    records, by_run = [], {}
    for i, values in enumerate(lora_values):
        records.append(_record("lora", f"l{i}", seed=i))
        by_run[f"l{i}"] = pd.concat([_frame(values), _frame(mean_shift, "mean_shift"),
                                     _frame([0.1] * 6, "truth")])
    for i, values in enumerate(velocity_values):
        records.append(_record("lora-velocity", f"v{i}", seed=i))
        by_run[f"v{i}"] = _frame(values)
    return build_rows(records, by_run)


def test_rows_intervals_and_paired_verdicts():
    lora = [[0.30, 0.32, 0.28, 0.31, 0.29, 0.30], [0.31, 0.33, 0.29, 0.30, 0.30, 0.31]]
    velocity = [[v - 0.05 for v in lora[0]], [v - 0.05 for v in lora[1]]]
    rows = _rows(lora, velocity, [0.5, 0.2, 0.6, 0.1, 0.7, 0.3])
    assert [r.name for r in rows] == ["lora", "lora-velocity", "mean_shift", "truth"]
    table = comparison_table(rows).set_index("row")
    assert table.loc["lora", "energy_ratio"] == pytest.approx(np.mean(lora))
    assert table.loc["mean_shift", "kind"] == "reference"
    # the deterministic reference still gets an interval from its groups, like every row
    assert table.loc["mean_shift", "energy_ratio_low"] < table.loc["mean_shift", "energy_ratio_high"]
    diffs = differences(rows)
    pair = diffs[(diffs.row == "lora-velocity") & (diffs.versus == "lora") & (diffs.metric == "energy_ratio")].iloc[0]
    assert pair["delta"] == pytest.approx(0.05) and pair["verdict"] == "better" and pair["seeds"] == 2
    # mean_shift's groups vary a lot: lora's lower mean is not a clear win over it
    ms = diffs[(diffs.row == "lora") & (diffs.versus == "mean_shift") & (diffs.metric == "energy_ratio")].iloc[0]
    assert ms["verdict"] == NO_CLEAR
    text = to_markdown(comparison_table(rows), diffs)
    assert "| mean_shift | reference |" in text and NO_CLEAR in text
    # the seeds' spread: sd over seeds of each seed's mean over groups; none for a reference
    sd = np.std([np.mean(lora[0]), np.mean(lora[1])], ddof=1)
    assert table.loc["lora", "energy_ratio_seed_sd"] == pytest.approx(sd) and table.loc["lora", "n_seeds"] == 2
    assert np.isnan(table.loc["mean_shift", "energy_ratio_seed_sd"])
    assert "## Spread across seeds" in text
    assert f"| lora | 2 | {np.mean(lora):.3f} ± {sd:.3f} | {1 - np.mean(lora):.3f} ± {sd:.3f} |" in text
    spread = text.split("## Spread across seeds")[1].split("##")[0]
    assert "| mean_shift | reference | 0.400 | 0.600 |" in spread  # beside the references it must beat
    lines = summary_lines(comparison_table(rows), diffs)
    assert any(line.startswith("lora-velocity:") and "vs lora: better on energy_ratio" in line for line in lines)
    assert not any("vs mean_shift: better" in line for line in lines if line.startswith("lora:"))


def test_small_groups_are_left_out_of_the_means():
    records = [_record("lora", "l0")]
    frame = _frame([0.3, 0.3, 0.3, 0.3, 0.3, 9.0])
    frame.loc[5, "small"] = True
    table = comparison_table(build_rows(records, {"l0": frame})).set_index("row")
    assert table.loc["lora", "energy_ratio"] == pytest.approx(0.3) and table.loc["lora", "n_groups"] == 5


def test_single_seed_differences_are_marked():
    rows = _rows([[0.3] * 6], [[0.2] * 6], [0.5] * 6)
    diffs = differences(rows)
    assert (diffs["seeds"] == 1).all()
    assert "(1 seed)" in to_markdown(comparison_table(rows), diffs)
    assert "Spread across seeds" not in to_markdown(comparison_table(rows), diffs)  # one seed has no spread


def test_mixed_data_sets_are_refused_unless_allowed():
    records = [_record("lora", "1", sha="aaa"), _record("baseline", "2", sha="bbb")]
    with pytest.raises(StxError, match="different data sets.*--allow-mixed"):
        check_same_data(records, allow_mixed=False)
    check_same_data(records, allow_mixed=True)


def test_params_are_cast_in_one_place():
    params = cast_params({"trainer.lr": "0.0005", "model.lora.r": "16", "data.embed_key": "X_state"})
    assert params == {"trainer.lr": 5e-4, "model.lora.r": 16, "data.embed_key": "X_state"}


def test_runs_of_different_configurations_are_never_pooled():
    records = [RunRecord("a", "lora", "1", "x", {}, {"trainer.seed": 0}, {"stx.config_digest": "aaaaaaaaaaaa",
                                                                          "stx.steps": "600"}, ""),
               RunRecord("b", "lora", "1", "x", {}, {"trainer.seed": 1}, {"stx.config_digest": "aaaaaaaaaaaa",
                                                                          "stx.steps": "600"}, ""),
               RunRecord("c", "lora", "1", "x", {}, {"trainer.seed": 0}, {"stx.config_digest": "bbbbbbbbbbbb",
                                                                          "stx.steps": "20"}, "")]
    rows = build_rows(records, {r: _frame([0.3] * 6) for r in "abc"})
    names = [r.name for r in rows]
    assert names == ["lora [20 steps, bbbbbb]", "lora [600 steps, aaaaaa]"]
    assert [len(r.runs) for r in rows] == [1, 2]


def _one_pivot_each(row, metric, heldout):
    """The matrix as one pivot per metric (before the pivots were shared)."""
    frame = row.groups
    keep = ~frame["small"].astype(bool)
    keep &= frame["heldout"].astype(bool) == heldout
    sub = frame[keep]
    if sub.empty:
        return pd.DataFrame()
    return sub.pivot_table(index="seed", columns=["perturbation", "cell_type", "day"], values=metric,
                           aggfunc="mean", dropna=False)


def test_shared_pivots_equal_one_pivot_per_metric():
    rng = np.random.default_rng(0)
    frames = {}
    for i in range(3):
        frame = _frame(list(rng.random(6)), small={1})
        frame["cell_r2"] = np.where(rng.random(6) < 0.3, np.nan, rng.random(6))
        frame["temporal_coherence"] = np.nan  # a metric with no value at all
        frame.loc[4, "heldout"] = True
        frame.loc[5, "day"] = np.nan  # a group without a time point still pivots
        frame["other"] = rng.random(6)  # a column that is not one of the metrics
        frames[f"l{i}"] = frame
    records = [_record("lora", f"l{i}", seed=i % 2) for i in range(3)]  # two runs share a seed: averaged
    (row,) = build_rows(records, frames)
    for heldout in (False, True):
        for metric in ("energy_ratio", "pearson_delta", "magnitude_ratio", "temporal_coherence", "cell_r2", "other"):
            pd.testing.assert_frame_equal(row.matrix(metric, heldout), _one_pivot_each(row, metric, heldout))
    assert row.matrix("cell_cos").empty  # not in the runs' tables: no matrix


def test_runs_tables_are_pooled_the_same_way_whatever_their_columns():
    from stx.comparison.tables import _own_groups

    a = pd.concat([_frame([0.3] * 6), _frame([0.5] * 6, "mean_shift")], ignore_index=True)
    b = pd.concat([_frame([0.2] * 6), _frame([0.4] * 6, "truth")], ignore_index=True)
    fast = _own_groups([(a, 0), (b, 1)])
    slow = _own_groups([(a, 0), (b.assign(extra=1.0), 1)]).drop(columns="extra")  # other columns: one at a time
    pd.testing.assert_frame_equal(fast, slow)
    assert fast["seed"].tolist() == [0] * 6 + [1] * 6 and (fast["predictor"] == "model").all()
    assert _own_groups([]) is None


def test_bootstrap_equals_the_three_operand_sum():
    """The matrix-product form and the shared resampling counts give the einsum's interval."""
    rng = np.random.default_rng(3)
    m = rng.random((7, 11))
    m[2, 3] = np.nan
    est = bootstrap(m)
    draw = np.random.default_rng(0)
    w_seed = draw.multinomial(7, np.full(7, 1 / 7), size=2000).astype(float)
    w_group = draw.multinomial(11, np.full(11, 1 / 11), size=2000).astype(float)
    finite = np.isfinite(m)
    total = np.einsum("bs,sg,bg->b", w_seed, np.where(finite, m, 0.0), w_group)
    count = np.einsum("bs,sg,bg->b", w_seed, finite.astype(float), w_group)
    low, high = np.percentile(total / count, [2.5, 97.5])
    assert est.low == pytest.approx(low, rel=1e-12) and est.high == pytest.approx(high, rel=1e-12)
    assert bootstrap(m) == est  # the counts are shared, never consumed


def test_one_config_on_two_data_sets_is_two_rows():
    """--allow-mixed lets runs of one config on different data into one compare, never one row."""
    tags = {"stx.config_digest": "aaaaaaaaaaaa", "stx.steps": "600"}
    records = [RunRecord("a", "lora", "1", "d1" * 8, {}, {"trainer.seed": 0}, tags, ""),
               RunRecord("b", "lora", "1", "d2" * 8, {}, {"trainer.seed": 1}, tags, "")]
    rows = build_rows(records, {r: _frame([0.3] * 6) for r in "ab"})
    assert sorted(r.name for r in rows) == ["lora [600 steps, aaaaaa, data d1d1d1]",
                                            "lora [600 steps, aaaaaa, data d2d2d2]"]
