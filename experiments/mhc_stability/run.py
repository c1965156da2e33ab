"""Does mHC stabilise fine-tuning? lora vs lora-mhc, 3 seeds each, deliberately high lr.

    python experiments/mhc_stability/run.py [--steps 400] [--lr 5e-3] [--seeds 0 1 2]

Runs on the embedded demo with stx-mini and writes results.md next to this file: gradient-
norm CV (last half), gradient-norm and loss spike counts, final and best val loss, held-out
energy ratio, step time. Everything is also in MLflow (experiment "mhc_stability").
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from seeds import run_seeds, table

METRICS = ["grad_norm/cv", "grad_norm/spikes", "loss/spikes", "grad_norm/max", "val/loss", "val/best_loss",
           "eval/energy_ratio", "eval/pearson_delta", "step_time_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    overrides = [f"trainer.max_steps={args.steps}", f"trainer.lr={args.lr}", "trainer.val_every_n_steps=50",
                 "trainer.lr_warmup_steps=20", "tracking.projection=pca"]
    results = run_seeds(["lora", "lora-mhc"], args.seeds, overrides, "mhc_stability")
    text = (f"# mHC stability on the demo ({date.today()})\n\n"
            f"`python experiments/mhc_stability/run.py --steps {args.steps} --lr {args.lr} --seeds "
            f"{' '.join(map(str, args.seeds))}`: stx-mini, batch 8 x 32 cells, mean ± sd over seeds; "
            f"`val/loss` is the last validation, `step_time_s` the last step's time.\n\n"
            + table(results, METRICS) + "\n")
    out = Path(__file__).with_name("results.md")
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
