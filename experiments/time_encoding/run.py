"""Does the time axis help? lora with the time point on one learned axis (the default) vs
as a free category, on a world where the time course is one movement and one where it is not.

    python experiments/time_encoding/run.py [--seeds 0 1 2] [--steps 600] [--quick]

Worlds (`stx data demo --describe`): `burn` (the study's design: each cell type's Burn
response moves along one direction as the days pass: the positive control for the axis)
and `time-switch` (the programs switch at every time point, so the three days' responses
are not on one line: the negative control). In both, the perturbed cells of Fib:14
(between two trained days) and Kera:19 (after them) are withheld from training, so the
model has to place them from the other time points.

Writes results.md next to this file: mean ± sd over seeds, and per world the verdict of
the axis against the category (paired bootstrap over test groups and seeds; a difference
counts only when its 95% interval excludes 0). Every run is in MLflow (experiment
"time_encoding"). `--quick`: one seed, 20 steps, 1,500 cells (a smoke test). A case and
seed that already finished with the same configuration is read back (`--fresh` retrains).
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

WORLDS = ("burn", "time-switch")
HELDOUT = ("Fib:14", "Kera:19")
SHOWN = ["eval/energy_ratio", "eval/pearson_delta", "eval/temporal_coherence", "eval/cell_cos",
         "eval/heldout/energy_ratio", "eval/heldout/pearson_delta"]
JUDGED = ("energy_ratio", "pearson_delta", "temporal_coherence")
CASES = (Case("lora (time axis)", "lora", ("model.time_encoding=axis",)),
         Case("lora (time category)", "lora", ("model.time_encoding=category",)))


def verdicts(results: dict, heldout: bool) -> str:
    axis, category = (results[c.name] for c in CASES)
    metrics = JUDGED if not heldout else JUDGED[:2]  # one held-out group per cell type: no time pairs
    head = "| comparison | " + " | ".join(metrics) + " |\n" + "|---" * (len(metrics) + 1) + "|\n"
    cells = [" ".join(paired_verdict(axis, category, m, heldout)) for m in metrics]
    return head + f"| {CASES[0].name} vs {CASES[1].name} | " + " | ".join(cells) + " |\n"


def main() -> None:
    parser = experiment_parser(__doc__, steps=600)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results.md"))
    parser.add_argument("--worlds", nargs="+", choices=WORLDS, default=list(WORLDS))
    args = parser.parse_args()
    seeds, steps, cells = ([0], 20, 1500) if args.quick else (args.seeds, args.steps, 8000)
    sections, seconds = [], 0.0
    for world in args.worlds:
        base = world_overrides(world, cells, steps, HELDOUT, args.quick)
        results = run_cases(CASES, seeds, base, "time_encoding", reuse=not args.fresh)
        seconds += total_seconds(results)
        sections.append(f"## World `{world}`\n\n{seed_table(results, SHOWN)}\n\n"
                        "Trained test groups (Δ = how much better the axis is, 95% interval over groups and seeds):"
                        f"\n\n{verdicts(results, heldout=False)}\nHeld-out groups (never trained on):\n\n"
                        f"{verdicts(results, heldout=True)}")
    write_report(args, "Time as an axis or as a category", "experiments/time_encoding/run.py", seeds, steps,
                 f"stx-mini, lora, {cells} cells per world, perturbed cells of {', '.join(HELDOUT)} withheld from "
                 f"training; mean ± sd over seeds", seconds, sections)


if __name__ == "__main__":
    main()
