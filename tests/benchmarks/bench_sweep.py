"""Pruning pays: the same study with and without the median pruner, side by side.

    python tests/benchmarks/bench_sweep.py [--trials 8] [--steps 120]

Prints the wall-time ratio pruned / unpruned (goal <= 0.6) and both best values. Both
studies use the same sampler seed and the demo data, on separate throwaway stores.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def study(tmp: Path, pruner: str, trials: int, steps: int):
    from stx.sweeps.study import SweepRequest, run_sweep

    overrides = (f"trainer.max_steps={steps}", f"trainer.val_every_n_steps={max(1, steps // 6)}",
                 "tracking.projection=pca", "tracking.register_model=false", "trainer.checkpoint_every_n_steps=100000")
    req = SweepRequest("lora", trials, None, overrides, f"sqlite:///{tmp}/optuna-{pruner}.db", f"bench-{pruner}",
                       1, None, "tpe", pruner, False, f"sqlite:///{tmp}/mlflow-{pruner}.db", "bench")
    start = time.perf_counter()
    summary = run_sweep(req)
    return time.perf_counter() - start, summary


def main() -> None:
    parser = argparse.ArgumentParser(description="sweep pruning benchmark")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=120)
    args = parser.parse_args()
    logging.getLogger("stx").setLevel(logging.WARNING)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("STX_CACHE_DIR", str(Path(tmp) / "cache"))
        t_none, s_none = study(Path(tmp), "none", args.trials, args.steps)
        t_median, s_median = study(Path(tmp), "median", args.trials, args.steps)
    print(f"{args.trials} trials x {args.steps} steps: with median pruning {t_median:.0f} s ({s_median.n_trials}), "
          f"without {t_none:.0f} s ({s_none.n_trials}); ratio {t_median / t_none:.2f} (goal <= 0.6); best val/loss "
          f"{s_median.best_value:.4f} pruned vs {s_none.best_value:.4f} unpruned")


if __name__ == "__main__":
    main()
