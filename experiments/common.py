"""Shared by the experiment scripts: run cases x seeds through `run_experiment` (the code
path of `stx run`, tracked in MLflow like any run), then judge differences.

Two rules, both "a difference counts only when it exceeds the spread across seeds":
* held-out metrics have one value per test group and seed: the difference is bootstrapped
  over groups and seeds, paired by both (stx compare's statistics), and counts when its
  95% interval excludes 0;
* run-level numbers (gradient-norm spikes, CV, divergence) have one value per seed: the
  difference counts when the seeds do not overlap at all (every seed of one side beats
  every seed of the other).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pandas as pd

from stx.comparison.stats import NO_CLEAR, verdict
from stx.comparison.tables import Row, paired_difference
from stx.config import load_config
from stx.errors import TrainingDiverged
from stx.evaluate.report import summarize
from stx.experiment import run_experiment
from stx.tracking.store import resolve_tracking_uri


@dataclass(frozen=True)
class Case:
    """One row of an experiment: a variant with its overrides."""

    name: str
    variant: str
    overrides: tuple[str, ...] = ()


@dataclass
class Result:
    """What the seeds of one case produced."""

    case: Case
    metrics: list[dict[str, float]] = field(default_factory=list)  # per seed (diverged seeds: empty)
    groups: list[pd.DataFrame] = field(default_factory=list)  # the model's per-group metrics, column `seed`
    diverged: list[int] = field(default_factory=list)  # seeds whose training diverged
    seconds: float = 0.0
    reused: int = 0  # seeds read back from an earlier, identical run (run_cases(reuse=True))
    references: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # per reference, per seed

    def row(self) -> Row:
        """The case as a comparison row (seeds pooled)."""
        frame = pd.concat(self.groups, ignore_index=True) if self.groups else pd.DataFrame()
        return Row(self.case.name, "variant", frame)


def run_cases(cases: Sequence[Case], seeds: Sequence[int], base: Sequence[str], experiment: str,
              tracking_uri: str | None = None, reuse: bool = True) -> dict[str, Result]:
    """Every case with every seed; a run that diverges is counted, not fatal. With `reuse`, a
    case and seed that already finished in the experiment is read back, not trained again."""
    from mlflow import MlflowClient

    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri)
    out = {case.name: Result(case) for case in cases}
    for seed in seeds:
        for case in cases:
            cfg = load_config(None, [*base, *case.overrides, f"trainer.seed={seed}", "tracking.register_model=false"])
            done = _finished_run(client, experiment, cfg, case.variant, seed) if reuse else None
            if done is not None:
                run_id = done.info.run_id
                out[case.name].seconds += (done.info.end_time - done.info.start_time) / 1000
                out[case.name].reused += 1
            else:
                start = time.perf_counter()
                try:
                    run_id = run_experiment(cfg, case.variant, uri, experiment=experiment, progress=False).run_id
                except TrainingDiverged:
                    out[case.name].diverged.append(seed)
                    out[case.name].seconds += time.perf_counter() - start
                    continue
                out[case.name].seconds += time.perf_counter() - start
            out[case.name].metrics.append(client.get_run(run_id).data.metrics)
            frame = pd.read_csv(Path(cfg.tracking.output_dir).resolve() / run_id / "eval" / "metrics_by_group.csv")
            out[case.name].groups.append(frame[frame["predictor"] == "model"].assign(seed=seed))
            for name, rows in frame[frame["predictor"] != "model"].groupby("predictor"):
                out[case.name].references.setdefault(str(name), []).append(summarize(rows))
    return out


def _finished_run(client, experiment: str, cfg, variant: str, seed: int):  # noqa: ANN001
    """A FINISHED run of this case and seed already in the experiment (same variant, same
    config digest: everything that changes what a run learns), whose outputs are still on
    disk; None if there is none. An interrupted script then picks up where it stopped."""
    from stx.experiment import config_digest
    from stx.variants import resolve_variant

    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    resolved = resolve_variant(variant)
    query = (f"tags.`stx.config_digest` = '{config_digest(cfg, resolved)}' and "
             f"tags.`stx.variant` = '{resolved.name}' and "
             f"params.`trainer.seed` = '{seed}' and attributes.status = 'FINISHED'")
    for run in client.search_runs([found.experiment_id], query, order_by=["attributes.start_time DESC"]):
        if (Path(cfg.tracking.output_dir).resolve() / run.info.run_id / "eval" / "metrics_by_group.csv").is_file():
            return run
    return None


def mean_sd(values: Sequence[float]) -> str:
    """"0.123 ± 0.004" over seeds (a single value alone, n/a for none)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3g}"
    sd = statistics.stdev(values)
    return f"{statistics.mean(values):.3g} ± {sd:.2g}" if sd > 0 else f"{values[0]:.3g}"


def seed_table(results: dict[str, Result], metrics: Sequence[str]) -> str:
    """Markdown: one row per case, mean ± sd over seeds of each run metric."""
    lines = ["| case | seeds | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 2) + "|"]
    for name, result in results.items():
        n = len(result.metrics) + len(result.diverged)
        cells = [mean_sd([m.get(k, math.nan) for m in result.metrics]) for k in metrics]
        lines.append(f"| {name} | {n} | " + " | ".join(cells) + " |")
    # the references (the same for every case: they do not train) bracket the rows above
    references = next((r.references for r in results.values() if r.references), {})
    for name in ("baseline", "mean_shift", "perturbed_mean", "truth"):
        if name in references:
            cells = [mean_sd([m.get(k, math.nan) for m in references[name]]) for k in metrics]
            lines.append(f"| *{name}* (reference) | {len(references[name])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_verdict(a: Result, b: Result, metric: str, heldout: bool = False) -> tuple[str, str]:
    """("+0.012 [+0.004, +0.020]", verdict) for a against b (positive = a better)."""
    diff = paired_difference(a.row(), b.row(), metric, heldout)
    if not diff.finite:
        return "n/a", NO_CLEAR
    interval = f" [{diff.low:+.3f}, {diff.high:+.3f}]" if math.isfinite(diff.low) else ""
    return f"{diff.mean:+.3f}{interval}", verdict(diff)


def seeds_verdict(a: Sequence[float], b: Sequence[float], lower_is_better: bool = True) -> str:
    """better / worse when every seed of a beats every seed of b (or the reverse)."""
    a = [v for v in a if math.isfinite(v)]
    b = [v for v in b if math.isfinite(v)]
    if not a or not b:
        return NO_CLEAR
    sign = 1 if lower_is_better else -1
    if max(sign * x for x in a) < min(sign * x for x in b):
        return "better"
    if min(sign * x for x in a) > max(sign * x for x in b):
        return "worse"
    return NO_CLEAR


def total_seconds(results: dict[str, Result]) -> float:
    """Wall time of all runs."""
    return sum(r.seconds for r in results.values())


def experiment_parser(doc: str, steps: int) -> argparse.ArgumentParser:
    """The options every experiment script takes: --seeds, --steps, --quick, --out, --fresh."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--quick", action="store_true", help="one seed, 20 steps, 1,500 cells")
    parser.add_argument("--fresh", action="store_true",
                        help="train every case again (default: read back cases and seeds already finished in the "
                             "experiment with the same configuration, so an interrupted run picks up where it stopped)")
    return parser


def world_overrides(world: str, cells: int, steps: int, heldout: Sequence[str], quick: bool) -> list[str]:
    """Config overrides of a run on a synthetic world with some groups' perturbed cells withheld."""
    groups = ", ".join(f'"{g}"' for g in heldout)
    return [f'datasets.demo="builtin:demo?world={world}&cells={cells}"', f"trainer.max_steps={steps}",
            f"trainer.val_every_n_steps={max(steps // 4, 10)}", f"data.heldout_groups=[{groups}]",
            f"data.min_group_cells={3 if quick else 10}", f"trainer.checkpoint_every_n_steps={steps}"]


def write_report(args: argparse.Namespace, title: str, script: str, seeds: Sequence[int], steps: int, setup: str,
                 seconds: float, sections: Sequence[str]) -> str:
    """The results file every experiment writes (and prints): title and date, the command that
    made it, the setup, the wall time, then the sections."""
    text = (f"# {title} ({date.today()})\n\n`python {script} --seeds {' '.join(map(str, seeds))} --steps {steps}"
            f"{' --quick' if args.quick else ''}`: {setup}. Wall time on this machine: {seconds / 60:.1f} min.\n\n"
            + "\n".join(sections))
    args.out.write_text(text)
    print(text)
    return text
