"""Does velocity alignment help? lora vs lora-velocity on three synthetic worlds, 3 seeds.

    python experiments/velocity_effect/run.py [--seeds 0 1 2] [--steps 600] [--quick]

Worlds (`stx data demo --describe`): `velocity-aligned` (Burn moves cells along their own
velocity: the positive control), `velocity-misleading` (against it: the negative control)
and `burn` (the study's design, mostly off the trajectory). In every world the perturbed
cells of two groups are withheld from training (data.heldout_groups), so the data term
cannot decide them alone: there the velocity prior (applied to those groups' control
sets, model.velocity.unseen_groups) is all the model has. Each world also gets a
lambda = 1 row; the two velocity worlds rows with the *true* velocity (the generator's,
instead of scVelo's estimate: the prior as good as it can be, per set and per cell); the
burn world a `scratch` row (stx-mini's architecture from a random start, same budget):
what the pretrained weights are worth.

Writes results.md next to this file: mean ± sd over seeds, and per world a verdict for
lora-velocity against lora (paired bootstrap over test groups and seeds; a difference
counts only when its 95% interval excludes 0). Every run is in MLflow (experiment
"velocity_effect"). `--quick`: one seed, 20 steps, 1,500 cells, no lambda 1 or true-velocity rows (a smoke test).
A case and seed that already finished in the experiment with the same configuration is
read back, not trained again (`--fresh` retrains everything).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import (
    Case,
    experiment_parser,
    paired_verdict,
    run_cases,
    seed_table,
    total_seconds,
    world_overrides,
    write_report,
)

WORLDS = ("velocity-aligned", "velocity-misleading", "burn")
HELDOUT = ("Fib:14", "Kera:19")
SHOWN = ["eval/energy_ratio", "eval/pearson_delta", "eval/cell_cos", "eval/cell_r2_matched",
         "eval/heldout/energy_ratio", "eval/heldout/pearson_delta", "eval/heldout/cell_cos",
         "eval/heldout/cell_r2_matched", "train/velocity_cos", "train/velocity_grad_ratio"]
JUDGED = ("energy_ratio", "pearson_delta", "cell_cos", "cell_r2_matched")


# the demo's true velocity of each cell's Sham state: the prior as it would be with a perfect
# velocity estimate (scVelo's points at the mean response with cos 0.59 per set, the truth 0.82)
ORACLE = ("model.velocity.velocity_key=truth_sham_velocity", "model.velocity.lambda=1.0")


def cases(world: str, full: bool = True) -> list[Case]:
    """The rows of a world; `full = False` (--quick) leaves out the lambda 1 and true-velocity rows."""
    out = [Case("lora", "lora"), Case("lora-velocity", "lora-velocity")]
    if full:
        out.append(Case("lora-velocity (lambda 1)", "lora-velocity", ("model.velocity.lambda=1.0",)))
    if full and world != "burn":
        out += [Case("lora-velocity (true velocity, lambda 1)", "lora-velocity", ORACLE),
                Case("lora-velocity (true velocity, lambda 1, per cell)", "lora-velocity",
                     (*ORACLE, "model.velocity.reduce=cell"))]
    if world == "burn":
        out.append(Case("scratch", "scratch"))
    return out


def verdicts(results: dict, heldout: bool) -> list[str]:
    lines = []
    for name in [n for n in results if n.startswith("lora-velocity")] + (["lora"] if "scratch" in results else []):
        if "lora" not in results:
            break
        versus = "scratch" if name == "lora" else "lora"
        cells = []
        for metric in JUDGED:
            text, verdict = paired_verdict(results[name], results[versus], metric, heldout)
            cells.append(f"{text} {verdict}")
        lines.append(f"| {name} vs {versus} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = experiment_parser(__doc__, steps=600)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results.md"))
    parser.add_argument("--worlds", nargs="+", choices=WORLDS, default=list(WORLDS),
                        help="run only these worlds (e.g. one per process, then concatenate the files)")
    parser.add_argument("--cases", nargs="+", help="run only the cases with these names (default: all)")
    args = parser.parse_args()
    seeds, steps, cells = ([0], 20, 1500) if args.quick else (args.seeds, args.steps, 8000)
    sections = []
    seconds = 0.0
    for world in args.worlds:
        base = world_overrides(world, cells, steps, HELDOUT, args.quick)
        chosen = [c for c in cases(world, full=not args.quick) if not args.cases or c.name in args.cases]
        results = run_cases(chosen, seeds, base, "velocity_effect", reuse=not args.fresh)
        seconds += total_seconds(results)
        head = "| comparison | " + " | ".join(JUDGED) + " |\n" + "|---" * (len(JUDGED) + 1) + "|"
        sections.append(
            f"## World `{world}`\n\n" + seed_table(results, SHOWN) + "\n\n"
            "Held-out groups (never trained on; Δ = how much better, 95% interval over groups and seeds):\n\n"
            + head + "\n" + "\n".join(verdicts(results, heldout=True)) + "\n\n"
            "All other test groups:\n\n" + head + "\n" + "\n".join(verdicts(results, heldout=False)) + "\n")
    write_report(args, "Velocity alignment on three synthetic worlds", "experiments/velocity_effect/run.py", seeds,
                 steps, f"stx-mini, {cells} cells per world, perturbed cells of {', '.join(HELDOUT)} withheld from "
                 f"training; lambda 0.1 (default) or 1 after the default warmup; mean ± sd over seeds",
                 seconds, sections)


if __name__ == "__main__":
    main()
