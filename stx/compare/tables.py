"""Variant-versus-baseline tables: means with 95% CIs, differences from the reference rows,
training dynamics, and which targets of the original study are met."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from stx.compare.query import RunRecord, finite
from stx.evaluate.metrics import METRICS, TARGETS, meets_target
from stx.variants import VARIANTS

MEAN_SHIFT = "mean_shift"
DYNAMICS = {
    "final_val_loss": "val/loss", "best_val_loss": "val/best_loss", "grad_norm_cv": "grad_norm/cv",
    "grad_norm_spikes": "grad_norm/spikes", "loss_spikes": "loss/spikes", "step_time_s": "step_time_s",
    "trainable_fraction": "trainable_fraction", "wall_time_s": "run/wall_time_s",
}


def mean_ci(values: list[float] | np.ndarray) -> tuple[float, float, float]:
    """Mean and a 95% t-interval (the interval is NaN for fewer than two values)."""
    from scipy import stats

    x = np.asarray([v for v in values if finite(float(v))], dtype=float)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half


def better(metric: str, a: float, b: float) -> bool:
    """Whether value a beats value b on a metric (energy lower, magnitude closer to 1, else higher)."""
    if not (finite(a) and finite(b)):
        return False
    if metric == "energy_ratio":
        return a < b
    if metric == "magnitude_ratio":
        return abs(a - 1) < abs(b - 1)
    return a > b


def _order(variant: str) -> tuple[int, str]:
    names = list(VARIANTS)
    return (names.index(variant), variant) if variant in names else (len(names), variant)


def comparison_table(records: list[RunRecord], by_group: dict[str, pd.DataFrame],
                     baseline: str = "baseline") -> pd.DataFrame:
    """One row per variant plus the mean_shift reference; CIs across seeds when a variant has
    several runs, else across (cell type, day) groups."""
    rows = []
    variants = sorted({r.variant for r in records}, key=_order)
    for variant in variants:
        runs = [r for r in records if r.variant == variant]
        row: dict[str, object] = {"variant": variant, "n_runs": len(runs),
                                  "ci_over": "seeds" if len(runs) > 1 else "groups"}
        for metric in METRICS:
            if len(runs) > 1:
                values = [r.metrics.get(f"eval/{metric}", math.nan) for r in runs]
            else:
                frame = by_group.get(runs[0].run_id)
                values = frame[metric].astype(float).tolist() if frame is not None and metric in frame else \
                    [runs[0].metrics.get(f"eval/{metric}", math.nan)]
            row[metric], row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = mean_ci(values)
        for name, key in DYNAMICS.items():
            row[name] = mean_ci([r.metrics.get(key, math.nan) for r in runs])[0]
        rows.append(row)
    # the simple bar: the training split's mean shift, evaluated by every run on its own split
    ref: dict[str, object] = {"variant": MEAN_SHIFT, "n_runs": len(records), "ci_over": "runs"}
    for metric in METRICS:
        values = [r.metrics.get(f"ref/mean_shift/{metric}", math.nan) for r in records]
        ref[metric], ref[f"{metric}_ci_low"], ref[f"{metric}_ci_high"] = mean_ci(values)
    rows.append(ref)
    table = pd.DataFrame(rows)
    for reference in (baseline, MEAN_SHIFT):
        match = table[table["variant"] == reference]
        for metric in METRICS:
            base = float(match[metric].iloc[0]) if len(match) else math.nan
            table[f"{metric}_vs_{reference}"] = table[metric].astype(float) - base
            table[f"beats_{reference}_{metric}"] = [better(metric, float(v), base) for v in table[metric]]
    table["targets_met"] = [
        ", ".join(m for m in TARGETS if finite(float(row[m])) and meets_target(m, float(row[m]))) or "none"
        for _, row in table.iterrows()
    ]
    return table


def _fmt(value: object, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float | int) and finite(float(value)) else "–"


def to_markdown(table: pd.DataFrame, baseline: str = "baseline") -> str:
    """Three tables for a reader: metrics with CIs, at a glance, training dynamics."""
    lines = ["## Held-out metrics (mean [95% CI])", "",
             "| variant | runs | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
    for _, row in table.iterrows():
        cells = []
        for m in METRICS:
            ci = f" [{_fmt(row[f'{m}_ci_low'])}, {_fmt(row[f'{m}_ci_high'])}]" if finite(row[f"{m}_ci_low"]) else ""
            cells.append(_fmt(row[m]) + ci)
        lines.append(f"| {row['variant']} | {row['n_runs']} ({row['ci_over']}) | " + " | ".join(cells) + " |")
    targets = ", ".join(f"{m} {op} {t}" for m, (op, t) in TARGETS.items())
    lines += ["", f"## At a glance (✓ = better than the reference; targets of the study: {targets})", "",
              f"| variant | beats {baseline} | beats mean_shift | targets met |", "|---|---|---|---|"]
    for _, row in table.iterrows():
        if row["variant"] in (baseline, MEAN_SHIFT):
            continue
        cells = []
        for reference in (baseline, MEAN_SHIFT):
            won = [m for m in METRICS if row[f"beats_{reference}_{m}"]]
            cells.append(f"{len(won)}/{len(METRICS)} ({', '.join(won) or 'none'})")
        lines.append(f"| {row['variant']} | {cells[0]} | {cells[1]} | {row['targets_met']} |")
    lines += ["", "## Training dynamics (mean over runs)", "",
              "| variant | " + " | ".join(DYNAMICS) + " |", "|---|" + "---|" * len(DYNAMICS)]
    for _, row in table.iterrows():
        if row["variant"] == MEAN_SHIFT:
            continue
        lines.append(f"| {row['variant']} | " + " | ".join(_fmt(row[k], 4) for k in DYNAMICS) + " |")
    return "\n".join(lines) + "\n"
