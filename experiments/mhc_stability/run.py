"""Does mHC stabilise fine-tuning? lora vs lora-mhc in a normal and a stress setting, 3 seeds.

    python experiments/mhc_stability/run.py [--seeds 0 1 2] [--steps 400] [--quick]

`normal` is the embedded demo config. `stress` is a setting where plain LoRA is unstable
on a CPU within minutes, chosen by measurement: lr 8e-3 with no gradient clipping (at the
peak of the warmup the loss jumps back up by a third, and the run ends far worse: held-out
energy_ratio about 0.42 instead of 0.18). What is compared is stability, not accuracy:
the loss's largest rise above its best so far (`loss/max_rise`: 1 when it never went back
up), the loss rebound at the end, gradient-norm spikes (steps above 5x the rolling
median), gradient-norm CV over the last half and the largest gradient norm, and how many
seeds diverged (NaN/inf loss) or blew up (max_rise > 1.25), with held-out energy_ratio
beside them. (A 5x loss-spike rule never fires on the bounded energy loss.)

A difference counts only when it exceeds the spread across seeds: every seed of one
variant beats every seed of the other. Writes results.md next to this file; every run is
in MLflow (experiment "mhc_stability"). `--quick`: one seed, 20 steps, 1,500 cells.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import Case, experiment_parser, mean_sd, run_cases, seed_table, seeds_verdict, total_seconds, write_report

SETTINGS = {
    "normal": (),
    "stress": ("trainer.lr=8e-3", "trainer.grad_clip=0"),
}
COLLAPSE = 1.25  # loss/max_rise above this: the loss climbed back a quarter above its best (healthy runs: ~1.0)
STABILITY = [("loss/max_rise", True), ("loss/rebound", True), ("grad_norm/spikes", True), ("grad_norm/cv", True),
             ("grad_norm/max", True)]
SHOWN = ["loss/max_rise", "loss/rebound", "grad_norm/spikes", "grad_norm/cv", "grad_norm/max", "loss/spikes",
         "grad_norm/median", "val/energy_loss", "eval/energy_ratio", "step_time_s"]


def main() -> None:
    parser = experiment_parser(__doc__, steps=400)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results.md"))
    args = parser.parse_args()
    seeds, steps, cells = ([0], 20, 1500) if args.quick else (args.seeds, args.steps, 8000)
    sections, seconds = [], 0.0
    for setting, overrides in SETTINGS.items():
        base = [f'datasets.demo="builtin:demo?cells={cells}"', f"trainer.max_steps={steps}",
                f"trainer.val_every_n_steps={max(steps // 8, 10)}", f"trainer.checkpoint_every_n_steps={steps}",
                "trainer.log_every_n_steps=5", f"data.min_group_cells={3 if args.quick else 10}", *overrides]
        results = run_cases([Case("lora", "lora"), Case("lora-mhc", "lora-mhc")], seeds, base, "mhc_stability",
                            reuse=not args.fresh)
        seconds += total_seconds(results)
        lora, mhc = results["lora"], results["lora-mhc"]
        lines = ["| measure | lora | lora-mhc | lora-mhc vs lora |", "|---|---|---|---|"]
        for key, lower in STABILITY:
            a = [m.get(key, math.nan) for m in mhc.metrics]
            b = [m.get(key, math.nan) for m in lora.metrics]
            lines.append(f"| {key} | {mean_sd(b)} | {mean_sd(a)} | {seeds_verdict(a, b, lower)} |")
        failed = {name: len(r.diverged) + sum(m.get("loss/max_rise", 0) > COLLAPSE for m in r.metrics)
                  for name, r in results.items()}
        label = f"diverged or blown-up seeds (max_rise > {COLLAPSE})"
        lines.append(f"| {label} | {failed['lora']} of {len(seeds)} | {failed['lora-mhc']} of {len(seeds)} | "
                     f"{seeds_verdict([failed['lora-mhc']], [failed['lora']])} |")
        sections.append(f"## Setting `{setting}` ({' '.join(overrides) or 'the demo defaults'})\n\n"
                        + "\n".join(lines) + "\n\nAll run metrics (mean ± sd over the seeds that finished):\n\n"
                        + seed_table(results, SHOWN) + "\n")
    write_report(args, "mHC stability", "experiments/mhc_stability/run.py", seeds, steps,
                 f"stx-mini on the burn demo ({cells} cells), batch 8 x 32 cells", seconds, sections)


if __name__ == "__main__":
    main()
