"""`stx compare` on a store with many runs, measured side by side with a naive reader.

    python tests/benchmarks/bench_compare.py [--runs 500]

Fills a fresh sqlite store with N finished runs of the five variants (metrics as stx logs
them; per-group tables on the newest run of each variant), then prints the wall time of
`stx compare --runs all` (goal < 3 s for 500 runs) and the ratio to a naive reader that
fetches every run one by one with its metric histories.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def fill(uri: str, n: int, tmp: Path) -> list[str]:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag

    from stx.evaluate.metrics import METRICS
    from stx.variants import VARIANTS

    client = MlflowClient(uri)
    exp = client.create_experiment("bench", artifact_location=(tmp / "artifacts").as_uri())
    rng = np.random.default_rng(0)
    ids = []
    csv = tmp / "eval"
    csv.mkdir()
    pd.DataFrame({"perturbation": "Burn", "cell_type": ["Fib", "Mac"], "day": [10, 14],
                  **{m: rng.random(2) for m in METRICS}}).to_csv(csv / "metrics_by_group.csv", index=False)
    for i in range(n):
        variant = list(VARIANTS)[i % len(VARIANTS)]
        run = client.create_run(exp, run_name=f"{variant}-{i}")
        now = int(time.time() * 1000)
        metrics = [Metric(f"eval/{m}", float(rng.random()), now, 0) for m in METRICS]
        metrics += [Metric(f"ref/mean_shift/{m}", 0.5, now, 0) for m in METRICS]
        metrics += [Metric("train/loss", float(v), now, s) for s, v in enumerate(rng.random(50))]
        metrics += [Metric(k, float(rng.random()), now, 0) for k in ("val/loss", "grad_norm/cv", "step_time_s")]
        client.log_batch(run.info.run_id, metrics=metrics,
                         tags=[RunTag("stx.variant", variant), RunTag("stx.data_sha256", "same")])
        if i >= n - len(VARIANTS):  # the newest run of each variant is the one compare shows
            client.log_artifact(run.info.run_id, str(csv / "metrics_by_group.csv"), "eval")
        client.set_terminated(run.info.run_id, "FINISHED")
        ids.append(run.info.run_id)
    return ids


def naive(uri: str, ids: list[str]) -> float:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    start = time.perf_counter()
    for run_id in ids:
        client.get_run(run_id)
        client.get_metric_history(run_id, "train/loss")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description="stx compare reading benchmark")
    parser.add_argument("--runs", type=int, default=500)
    args = parser.parse_args()
    import logging
    import os

    from stx.comparison.report import compare

    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"

    logging.getLogger("stx").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        ids = fill(uri, args.runs, Path(tmp))
        compare(uri, Path(tmp) / "warm", experiment="bench", runs="all", projection="pca", log_run=False)
        start = time.perf_counter()
        result = compare(uri, Path(tmp) / "out", experiment="bench", runs="all", projection="pca", log_run=False)
        ours = time.perf_counter() - start
        theirs = naive(uri, ids)
    print(f"stx compare over {result.n_runs} runs: {ours:.2f} s (goal < 3 s); naive per-run loop (get_run + one "
          f"metric history each): {theirs:.2f} s; ratio {ours / theirs:.2f}")


if __name__ == "__main__":
    main()
