"""Experimental designs through the CLI: one cell type, one time point, no time column,
neither, and a time course with controls only at baseline. Each goes through validate,
every variant, compare (all its figures) and predict."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from stx.cli import cli

FAST = ["--set", "trainer.max_steps=4", "--set", "trainer.val_every_n_steps=2", "--set", "trainer.batch_size=4",
        "--set", "trainer.cell_set_len=8", "--set", "trainer.checkpoint_every_n_steps=4",
        "--set", "model.velocity.warmup_steps=2", "--set", "tracking.system_metrics=false"]


def _shapes(adata):
    # controls only at day 10, treated cells only at days 14 and 19
    baseline_only = adata[((adata.obs["condition"] == "Sham") == (adata.obs["day"] == 10)).to_numpy()].copy()
    return {
        "one-cell-type": (adata, ['data.cell_type_key=""']),
        "one-time-point": (adata[(adata.obs["day"] == 14).to_numpy()].copy(), []),
        "no-time": (adata, ['data.time_col=""']),
        "neither": (adata, ['data.cell_type_key=""', 'data.time_col=""']),
        "time-zero-controls": (baseline_only, ["data.control_time=10"]),
    }


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["one-cell-type", "one-time-point", "no-time", "neither", "time-zero-controls"])
def test_design_runs_end_to_end(shape, demo_adata, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    adata, overrides = _shapes(demo_adata)[shape]
    data = tmp_path / f"{shape}.h5ad"
    adata.write_h5ad(data)
    config = tmp_path / "c.toml"
    config.write_text(f'[datasets]\nd = "{data}"\n[data]\nembed_key = "X_state"\ntime_col = "day"\n'
                      'min_group_cells = 3\n[model.velocity]\nvelocity_key = "truth_velocity"\n')
    sets = [a for o in overrides for a in ("--set", o)]
    runner = CliRunner()
    result = runner.invoke(cli, ["data", "validate", "--config", str(config), *sets])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["run", "--variant", "all", "--config", str(config), *FAST, *sets,
                                 "--experiment", shape])
    assert result.exit_code == 0, result.output
    assert result.output.count("finished in") == 5 and "Compared 5 runs" in result.output
    out = tmp_path / "results" / f"{shape}-all"
    for name in ("comparison.md", "metric_bars.png", "energy_ratio_heatmap.png", "loss_curves.png", "cells_pca.png"):
        assert (out / name).is_file(), name
    has_time = shape in ("one-cell-type", "time-zero-controls")
    assert (out / "trajectories.png").is_file() == has_time
    table = pd.read_csv(out / "comparison.csv").set_index("row")
    assert np.isfinite(table.loc["lora", "energy_ratio"])
    assert np.isfinite(table.loc["lora", "temporal_coherence"]) if has_time else \
        "temporal_coherence" not in table or not np.isfinite(table.loc["lora", "temporal_coherence"])

    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    lora = client.search_runs([client.get_experiment_by_name(shape).experiment_id], "tags.`stx.variant` = 'lora'")[0]
    result = runner.invoke(cli, ["predict", "--model", lora.info.run_id, "--data", str(data),
                                 "--out", str(tmp_path / "pred.h5ad")])
    assert result.exit_code == 0, result.output
    pred = ad.read_h5ad(tmp_path / "pred.h5ad")
    n_controls = int((adata.obs["condition"] == "Sham").sum())
    if shape == "time-zero-controls":  # every baseline control at each later time point
        assert pred.n_obs == 2 * n_controls and set(pred.obs["day"].astype(str)) == {"14", "19"}
    else:
        assert pred.n_obs == n_controls
    if shape == "time-zero-controls":
        # baseline controls predicted at the later time points the model was trained on
        groups = pd.read_csv(client.download_artifacts(lora.info.run_id, "eval/metrics_by_group.csv", str(tmp_path)))
        assert set(groups.loc[groups.predictor == "model", "day"].astype(str)) == {"14", "19"}
