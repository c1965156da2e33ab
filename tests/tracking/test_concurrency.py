"""Several `stx run` processes on one fresh embedded sqlite store at once."""

from __future__ import annotations

import os
import subprocess
import sys

from mlflow import MlflowClient

WRITERS = 4
FAST = ["--set", "trainer.max_steps=30", "--set", "trainer.val_every_n_steps=10", "--set", "trainer.batch_size=4",
        "--set", "trainer.cell_set_len=16", "--set", "tracking.projection=pca",
        "--set", "trainer.log_every_n_steps=1",  # a write to the store every step: as much contention as it gets
        "--set", "trainer.checkpoint_every_n_steps=10"]


def test_four_writers_on_a_fresh_store_all_finish(tmp_path, demo_path):
    (tmp_path / "config.toml").write_text(f'[datasets]\ndemo = "{demo_path}"\n[data]\nembed_key = "X_state"\n'
                                          'time_col = "day"\nmin_group_cells = 3\n')
    # one torch thread each: four processes spinning two threads on two cores are 2.5x slower
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}, "OMP_NUM_THREADS": "1"}
    assert not (tmp_path / "mlruns").exists()  # the first start creates the tables: all four race for it
    procs = [subprocess.Popen([sys.executable, "-m", "stx", "run", "--variant", "lora", "--config",
                               str(tmp_path / "config.toml"), *FAST, "--seed", str(seed)],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for seed in range(WRITERS)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-3000:]
        assert "locked" not in out and "unreachable" not in out, out[-3000:]

    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # not a registry an earlier test set globally
    runs = client.search_runs([client.get_experiment_by_name(tmp_path.name).experiment_id])
    assert len(runs) == WRITERS and {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(r.data.params["trainer.seed"] for r in runs) == [str(s) for s in range(WRITERS)]
    for run in runs:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == list(range(30))
    versions = sorted(int(v.version) for v in client.search_model_versions("name = 'stx-lora'"))
    assert versions == list(range(1, WRITERS + 1))
    assert not list((tmp_path / "stx_outputs").glob("*/outbox.jsonl"))  # nothing held back
