"""What a tracking-server outage costs a training run, measured in one run.

    python tests/benchmarks/bench_outage.py [--steps 1500] [--down 15]

Starts a real `mlflow server`, trains `stx run --variant lora` against it, stops the server
for `--down` seconds mid-training and starts it again. Prints the median step time in the
10 s before the outage, during it (until the restarted server answers) and after it (ratio
during / before; goal <= 1.05: the training loop never waits for the store), and how many
of the expected per-step metric rows reached the store, and how many twice (goal: all, 0).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.services import free_port, mlflow_server_cmd, stop, wait_http


def main() -> None:
    parser = argparse.ArgumentParser(description="tracking outage benchmark")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--down", type=float, default=15.0)
    args = parser.parse_args()
    from mlflow import MlflowClient

    from stx.data.builtin import write_demo

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_demo(tmp / "demo.h5ad", n_cells=1500, seed=1)
        (tmp / "config.toml").write_text(f'[datasets]\ndemo = "{tmp / "demo.h5ad"}"\n[data]\nembed_key = "X_state"\n'
                                         'time_col = "day"\nmin_group_cells = 3\n')
        port = free_port()
        uri = f"http://127.0.0.1:{port}"
        server_cmd = mlflow_server_cmd(f"sqlite:///{tmp}/server.db", tmp / "artifacts", port)
        log = open(tmp / "server.log", "a")  # the servers write to it until the end
        server = subprocess.Popen(server_cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_http(f"{uri}/health")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        run = subprocess.Popen(
            [sys.executable, "-m", "stx", "run", "--variant", "lora", "--config", str(tmp / "config.toml"),
             "--set", f"trainer.max_steps={args.steps}", "--set", "trainer.val_every_n_steps=100000",
             "--set", "trainer.checkpoint_every_n_steps=100000", "--set", "tracking.projection=pca",
             "--set", "tracking.register_model=false", "--tracking-uri", uri, "--experiment", "outage"],
            cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        client = MlflowClient(uri)
        run_id = _wait_for_training(client)
        time.sleep(15)  # past the first, slower steps: the "before" window is the last 10 s of this
        down_at = time.time()
        stop(server)
        time.sleep(args.down)
        server = subprocess.Popen(server_cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_http(f"{uri}/health")
        up_at = time.time()
        out, _ = run.communicate(timeout=3600)
        if run.returncode != 0:
            raise SystemExit(out[-3000:])
        steps = client.get_metric_history(run_id, "step_time_s")
        losses = client.get_metric_history(run_id, "train/loss")
        stop(server)
        log.close()

    def median_ms(window):
        values = [m.value for m in steps if window(m.timestamp / 1000)]
        return 1000 * statistics.median(values), len(values)

    before, n_before = median_ms(lambda t: down_at - 10 <= t < down_at)
    during, n_during = median_ms(lambda t: down_at <= t < up_at)
    after, n_after = median_ms(lambda t: t >= up_at)
    print(f"median step time before / during / after a {up_at - down_at:.0f} s outage: {before:.1f} ms ({n_before} "
          f"steps) / {during:.1f} ms ({n_during}) / {after:.1f} ms ({n_after}); during / before = "
          f"{during / before:.3f} (goal <= 1.05)")
    print(f"train/loss rows in the store: {len({m.step for m in losses})} of {args.steps} expected, "
          f"{len(losses) - len({m.step for m in losses})} duplicated")


def _wait_for_training(client, timeout: float = 300.0) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        exp = client.get_experiment_by_name("outage")
        runs = client.search_runs([exp.experiment_id]) if exp else []
        if runs and client.get_metric_history(runs[0].info.run_id, "train/loss"):
            return runs[0].info.run_id
        time.sleep(0.2)
    raise SystemExit("training never started")


if __name__ == "__main__":
    main()
