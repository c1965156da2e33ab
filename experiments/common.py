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

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from stx.comparison.stats import NO_CLEAR, verdict
from stx.comparison.tables import Row, paired_difference
from stx.config import load_config
from stx.errors import TrainingDiverged
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

    def row(self) -> Row:
        """The case as a comparison row (seeds pooled)."""
        frame = pd.concat(self.groups, ignore_index=True) if self.groups else pd.DataFrame()
        return Row(self.case.name, "variant", frame)


def run_cases(cases: Sequence[Case], seeds: Sequence[int], base: Sequence[str], experiment: str,
              tracking_uri: str | None = None) -> dict[str, Result]:
    """Every case with every seed; a run that diverges is counted, not fatal."""
    from mlflow import MlflowClient

    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri)
    out = {case.name: Result(case) for case in cases}
    for seed in seeds:
        for case in cases:
            cfg = load_config(None, [*base, *case.overrides, f"trainer.seed={seed}", "tracking.register_model=false"])
            start = time.perf_counter()
            try:
                summary = run_experiment(cfg, case.variant, uri, experiment=experiment, progress=False)
            except TrainingDiverged:
                out[case.name].diverged.append(seed)
                out[case.name].seconds += time.perf_counter() - start
                continue
            out[case.name].seconds += time.perf_counter() - start
            out[case.name].metrics.append(client.get_run(summary.run_id).data.metrics)
            frame = pd.read_csv(Path(cfg.tracking.output_dir).resolve() / summary.run_id / "eval" /
                                "metrics_by_group.csv")
            out[case.name].groups.append(frame[frame["predictor"] == "model"].assign(seed=seed))
    return out


def mean_sd(values: Sequence[float]) -> str:
    """"0.123 ± 0.004" over seeds (a single value alone, n/a for none)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"{statistics.mean(values):.3g} ± {statistics.stdev(values):.2g}"


def seed_table(results: dict[str, Result], metrics: Sequence[str]) -> str:
    """Markdown: one row per case, mean ± sd over seeds of each run metric."""
    lines = ["| case | seeds | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 2) + "|"]
    for name, result in results.items():
        n = len(result.metrics) + len(result.diverged)
        cells = [mean_sd([m.get(k, math.nan) for m in result.metrics]) for k in metrics]
        lines.append(f"| {name} | {n} | " + " | ".join(cells) + " |")
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
