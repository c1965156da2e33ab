"""Run variants with several seeds through `run_experiment` and tabulate MLflow's numbers.

Used by the experiment scripts in this folder; every run lands in the tracking store like
any `stx run` (default: ./mlruns), so the results can be inspected in `stx ui` too.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from stx.config import load_config
from stx.experiment import run_experiment
from stx.tracking.store import resolve_tracking_uri


def run_seeds(variants: Sequence[str], seeds: Sequence[int], overrides: Sequence[str], experiment: str,
              tracking_uri: str | None = None) -> dict[str, list[dict[str, float]]]:
    """{variant: [metrics of each seed's run]} (final metrics as MLflow holds them)."""
    from mlflow import MlflowClient

    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri)
    out: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for seed in seeds:
        for variant in variants:
            cfg = load_config(None, [*overrides, f"trainer.seed={seed}", "tracking.register_model=false"])
            summary = run_experiment(cfg, variant, uri, experiment=experiment, progress=False)
            out[variant].append(client.get_run(summary.run_id).data.metrics)
    return out


def table(results: dict[str, list[dict[str, float]]], metrics: Sequence[str]) -> str:
    """Markdown: one row per variant, mean +- sd over seeds for each metric."""
    lines = ["| variant | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for variant, runs in results.items():
        cells = []
        for metric in metrics:
            values = [r[metric] for r in runs if metric in r]
            if not values:
                cells.append("n/a")
            elif len(values) == 1:
                cells.append(f"{values[0]:.4g}")
            else:
                cells.append(f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.2g}")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
