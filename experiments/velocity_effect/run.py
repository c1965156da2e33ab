"""Does velocity alignment help? lora vs lora-velocity (cell and set reduction), 3 seeds each.

    python experiments/velocity_effect/run.py [--steps 400] [--seeds 0 1 2]

Runs on the embedded demo (velocity prepared with scVelo, linear push-forward through the
demo's loadings) and writes results.md next to this file: held-out metrics (direction_cos
and temporal_coherence above all), the final velocity cosine, and step time. Everything is
also in MLflow (experiment "velocity_effect").
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from seeds import run_seeds, table

METRICS = ["eval/direction_cos", "eval/temporal_coherence", "eval/pearson_delta", "eval/energy_ratio",
           "eval/magnitude_ratio", "train/velocity_cos", "val/best_loss", "step_time_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    base = [f"trainer.max_steps={args.steps}", "trainer.val_every_n_steps=50", "model.velocity.warmup_steps=100",
            "tracking.projection=pca"]
    results = run_seeds(["lora", "lora-velocity"], args.seeds, base, "velocity_effect")
    by_set = run_seeds(["lora-velocity"], args.seeds, [*base, "model.velocity.reduce=set"], "velocity_effect")
    results["lora-velocity (reduce=set)"] = by_set["lora-velocity"]
    text = (f"# Velocity alignment on the demo ({date.today()})\n\n"
            f"`python experiments/velocity_effect/run.py --steps {args.steps} --seeds "
            f"{' '.join(map(str, args.seeds))}`: stx-mini, lambda 0.1 after a 100-step warmup, mu 0.01, "
            f"held-out mice, mean ± sd over seeds.\n\n" + table(results, METRICS) + "\n")
    out = Path(__file__).with_name("results.md")
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
