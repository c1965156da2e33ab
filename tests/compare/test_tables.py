from __future__ import annotations

import math

import pandas as pd
import pytest

from stx.compare.query import RunRecord, cast_params, check_same_data
from stx.compare.tables import better, comparison_table, mean_ci, to_markdown
from stx.errors import StxError


def _record(variant, run_id, sha="a", **metrics):
    return RunRecord(run_id, variant, "1", sha, metrics, {}, {}, "")


def test_mean_ci():
    mean, low, high = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and low == pytest.approx(2 - 4.303 * 1 / math.sqrt(3), rel=1e-3) and high > 3
    assert math.isnan(mean_ci([5.0])[1]) and math.isnan(mean_ci([])[0])


def test_better_knows_each_metrics_direction():
    assert better("energy_ratio", 0.2, 0.5) and not better("energy_ratio", 0.5, 0.2)
    assert better("magnitude_ratio", 1.1, 0.7) and not better("magnitude_ratio", 1.6, 0.7)
    assert better("pearson_delta", 0.8, 0.5)
    assert not better("pearson_delta", float("nan"), 0.5)


def test_table_with_seeds_and_references():
    records = [
        _record("baseline", "b", **{"eval/pearson_delta": 0.2, "eval/energy_ratio": 0.9,
                                    "ref/mean_shift/pearson_delta": 0.5, "ref/mean_shift/energy_ratio": 0.6}),
        *[_record("lora", f"l{i}", **{"eval/pearson_delta": v, "eval/energy_ratio": 0.25, "val/loss": 1.0,
                                      "ref/mean_shift/pearson_delta": 0.5, "ref/mean_shift/energy_ratio": 0.6})
          for i, v in enumerate((0.7, 0.8, 0.9))],
    ]
    by_group = {"b": pd.DataFrame({"pearson_delta": [0.1, 0.3], "energy_ratio": [0.8, 1.0]})}
    table = comparison_table(records, by_group).set_index("variant")
    assert list(table.index) == ["baseline", "lora", "mean_shift"]
    assert table.loc["lora", "n_runs"] == 3 and table.loc["lora", "ci_over"] == "seeds"
    assert table.loc["lora", "pearson_delta"] == pytest.approx(0.8)
    assert table.loc["baseline", "ci_over"] == "groups" and table.loc["baseline", "pearson_delta"] == pytest.approx(0.2)
    assert table.loc["lora", "pearson_delta_vs_baseline"] == pytest.approx(0.6)
    assert table.loc["lora", "pearson_delta_vs_mean_shift"] == pytest.approx(0.3)
    assert table.loc["lora", "beats_mean_shift_energy_ratio"] and not table.loc["baseline", "beats_mean_shift_energy_ratio"]
    assert "pearson_delta" in table.loc["lora", "targets_met"] and "energy_ratio" in table.loc["lora", "targets_met"]
    assert table.loc["baseline", "targets_met"] == "none"
    text = to_markdown(table.reset_index())
    assert "| lora | 3 (seeds) |" in text and "beats baseline" in text


def test_mixed_data_sets_are_refused_unless_allowed():
    records = [_record("lora", "1", sha="aaa"), _record("baseline", "2", sha="bbb")]
    with pytest.raises(StxError, match="different data sets.*--allow-mixed"):
        check_same_data(records, allow_mixed=False)
    check_same_data(records, allow_mixed=True)


def test_params_are_cast_in_one_place():
    params = cast_params({"trainer.lr": "0.0005", "model.lora.r": "16", "data.embed_key": "X_state"})
    assert params == {"trainer.lr": 5e-4, "model.lora.r": 16, "data.embed_key": "X_state"}
