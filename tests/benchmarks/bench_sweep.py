"""Pruning pays: the same study with and without the median pruner, side by side.

    python tests/benchmarks/bench_sweep.py [--trials 8] [--steps 120]

Prints the wall-time ratio pruned / unpruned (goal <= 0.6), both best values, and the fixed
cost per trial (a trial's wall time in its worker, recorded by the sweep as the Optuna
user attribute `wall_time_s`, minus its training time from its MLflow run: config, model
build, evaluation, figures, artifacts, package; goal < 10 s). The first trial of a worker
also loads the data and imports the training stack; the median shows the steady cost. Both studies use the
same sampler seed and the demo data, on separate throwaway stores.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def study(tmp: Path, pruner: str, trials: int, steps: int):
    from stx.sweeps.study import SweepRequest, run_sweep

    overrides = (f"trainer.max_steps={steps}", f"trainer.val_every_n_steps={max(1, steps // 6)}",
                 "tracking.projection=pca", "tracking.register_model=false", "trainer.checkpoint_every_n_steps=100000")
    req = SweepRequest("lora", trials, None, overrides, f"sqlite:///{tmp}/optuna-{pruner}.db", f"bench-{pruner}",
                       1, None, "tpe", pruner, False, f"sqlite:///{tmp}/mlflow-{pruner}.db", "bench")
    start = time.perf_counter()
    summary = run_sweep(req)
    return time.perf_counter() - start, summary, fixed_costs(tmp, pruner)


def fixed_costs(tmp: Path, pruner: str) -> list[float]:
    """Per finished trial: its whole wall time in the worker (config, model build, run,
    evaluation, figures, artifacts, package) minus its training time."""
    import optuna
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp}/mlflow-{pruner}.db")
    study = optuna.load_study(study_name=f"bench-{pruner}", storage=f"sqlite:///{tmp}/optuna-{pruner}.db")
    out = []
    for trial in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        train = client.get_run(trial.user_attrs["mlflow_run_id"]).data.metrics.get("train/wall_time_s")
        if train is not None:
            out.append(trial.user_attrs["wall_time_s"] - train)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="sweep pruning benchmark")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=120)
    args = parser.parse_args()
    logging.getLogger("stx").setLevel(logging.WARNING)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("STX_CACHE_DIR", str(Path(tmp) / "cache"))
        t_none, s_none, fixed = study(Path(tmp), "none", args.trials, args.steps)
        t_median, s_median, _ = study(Path(tmp), "median", args.trials, args.steps)
    print(f"{args.trials} trials x {args.steps} steps: with median pruning {t_median:.0f} s ({s_median.n_trials}), "
          f"without {t_none:.0f} s ({s_none.n_trials}); ratio {t_median / t_none:.2f} (goal <= 0.6); best val/loss "
          f"{s_median.best_value:.4f} pruned vs {s_none.best_value:.4f} unpruned; fixed cost per trial (unpruned "
          f"study) median {statistics.median(fixed):.1f} s, max {max(fixed):.1f} s over {len(fixed)} trials "
          f"(goal < 10 s); threads {torch.get_num_threads()}, cpu")


if __name__ == "__main__":
    main()
