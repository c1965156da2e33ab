"""Comparison figures: curves overlaid, metric bars with intervals (references included),
per-group heatmaps (references as columns), real vs predicted cells per row, and the
day-to-day trajectories of predicted vs real shifts. Axes carry quantities and units;
a row keeps its colour in every figure; references are grey shades and hatched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from stx.comparison.tables import REFERENCES, metric_columns
from stx.evaluate.plots import CONDITION_COLORS, UNITS, _figure, project_2d

REFERENCE_COLORS = {"baseline": "#4d4d4d", "mean_shift": "#878787", "perturbed_mean": "#bababa", "truth": "#e0e0e0"}
METRIC_LABELS = {
    "energy_ratio": "energy ratio E(P,R)/E(C,R)\n(lower is better; 1 = controls)",
    "pearson_delta": "Pearson r of predicted vs real shift",
    "direction_cos": "cosine of predicted vs real shift",
    "magnitude_ratio": "|predicted shift| / |real shift|\n(1 is right)",
    "temporal_coherence": "cosine of day-to-day changes",
    "cell_cos": "per-cell cosine with the\ncounterfactual response",
    "cell_r2": "per-cell R² of the response\n(0 = group mean)",
    "cell_r2_matched": "per-cell R² after optimal\nmatching (0 = group mean)",
}


def row_colors(names: list[str]) -> dict[str, str]:
    """Stable colours: references grey, variants from a qualitative palette."""
    palette = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d"]
    variants = [n for n in names if n not in REFERENCES]
    colors = {n: palette[i % len(palette)] for i, n in enumerate(variants)}
    colors.update({n: REFERENCE_COLORS[n] for n in names if n in REFERENCE_COLORS})
    return colors


def curves(histories: dict[str, dict[str, list[tuple[int, float]]]], keys: list[str], out: Path, title: str,
           log_y: bool = False, hline: tuple[float, str] | None = None) -> Path:
    """One line per (row, key): {row: {key: [(step, value)]}}."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(7, 4.4), dpi=110)
    colors = row_colors(list(histories))
    for name, history in histories.items():
        for key in keys:
            if history.get(key):
                steps, values = zip(*sorted(history[key]), strict=True)
                ax.plot(steps, values, lw=1.3, color=colors[name], label=f"{name} {key}",
                        ls="-" if key.startswith(("train", "grad")) else "--", marker="o" if len(steps) < 30 else None,
                        ms=3)
    if hline is not None and ax.lines:
        ax.axhline(hline[0], color="k", ls=":", lw=1, label=hline[1])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(UNITS.get(keys[0], keys[0]))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(frameon=False, fontsize=8)
        if log_y:
            ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "no training curves (only untrained rows)", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def metric_bars(table: pd.DataFrame, out: Path) -> Path:
    """A panel per metric: a bar per row with its 95% interval; references hatched."""
    metrics = metric_columns(table)
    plt = _figure()
    cols = min(4, len(metrics))
    nrows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.8 * nrows), dpi=110, squeeze=False)
    colors = row_colors(table["row"].tolist())
    for ax, metric in zip(axes.flat, metrics, strict=False):
        mean = table[metric].astype(float).to_numpy()
        low = np.nan_to_num(mean - table[f"{metric}_low"].astype(float).to_numpy())
        high = np.nan_to_num(table[f"{metric}_high"].astype(float).to_numpy() - mean)
        bars = ax.bar(range(len(table)), np.nan_to_num(mean), yerr=np.vstack([low, high]), capsize=3,
                      color=[colors[r] for r in table["row"]], edgecolor="k", linewidth=0.5)
        for bar, kind in zip(bars, table["kind"], strict=True):
            if kind == "reference":
                bar.set_hatch("//")
        ax.set_xticks(range(len(table)), table["row"], rotation=40, ha="right", fontsize=8)
        ax.set_ylabel(METRIC_LABELS.get(metric, metric), fontsize=8)
        ax.set_title(metric)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    fig.suptitle("held-out metrics, mean and 95% bootstrap interval (hatched: reference predictors)")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def group_heatmaps(groups: dict[str, pd.DataFrame], metric: str, out: Path) -> Path:
    """Cell type x time heatmap of one metric, a panel per row (references included)."""
    plt = _figure()
    n = max(1, len(groups))
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n + 1.5, 3.8), dpi=110, squeeze=False)
    lower = metric == "energy_ratio"
    image = None
    for k, (ax, (name, frame)) in enumerate(zip(axes[0], groups.items(), strict=False)):
        grid = frame.pivot_table(index="cell_type", columns="day", values=metric, aggfunc="mean")
        values = grid.to_numpy(float)
        image = ax.imshow(values, vmin=0 if lower else -1, vmax=1.5 if lower else 1,
                          cmap="viridis_r" if lower else "RdBu_r", aspect="auto")
        ax.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns])
        ax.set_yticks(range(grid.shape[0]), grid.index if k == 0 else [""] * grid.shape[0])
        ax.set_xlabel("time point")
        if k == 0:
            ax.set_ylabel("cell type")
        for (i, j), value in np.ndenumerate(values):
            ax.text(j, i, "n/a" if not np.isfinite(value) else f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="w" if lower and np.isfinite(value) and value > 0.9 else "k")  # dark cells: light text
        ax.set_title(name, fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label=METRIC_LABELS.get(metric, metric))
    fig.suptitle(f"{metric} per held-out group (mean over seeds)", y=1.02)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out


def prediction_grid(real_control: np.ndarray, real_perturbed: np.ndarray, predicted: dict[str, np.ndarray],
                    out: Path, method: str = "pca", max_cells: int = 800, seed: int = 0) -> Path:
    """One shared 2-D map; a panel per row with control, real perturbed and its predictions."""
    rng = np.random.default_rng(seed)

    def pick(x: np.ndarray) -> np.ndarray:
        return x[rng.choice(len(x), min(len(x), max_cells), replace=False)] if len(x) else x

    parts = [pick(real_control), pick(real_perturbed)] + [pick(p) for p in predicted.values()]
    xy, axis = project_2d(np.concatenate(parts), method, seed)
    bounds = np.cumsum([0, *map(len, parts)])
    plt = _figure()
    n = max(1, len(predicted))
    cols = min(n, 4)
    nrows = -(-n // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3.9 * nrows), dpi=110, squeeze=False)
    for k, (ax, name) in enumerate(zip(axes.flat, predicted, strict=False)):
        ax.scatter(*xy[bounds[0]:bounds[1]].T, s=3, c=CONDITION_COLORS["control"], label="control", alpha=0.5)
        ax.scatter(*xy[bounds[1]:bounds[2]].T, s=3, c=CONDITION_COLORS["real"], label="real perturbed", alpha=0.5)
        ax.scatter(*xy[bounds[k + 2]:bounds[k + 3]].T, s=3, c=CONDITION_COLORS["predicted"], label="predicted",
                   alpha=0.5)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(axis[0], fontsize=8)
        ax.set_ylabel(axis[1], fontsize=8)
        ax.legend(markerscale=4, frameon=False, fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle(f"{method.upper()} of held-out cells (up to {max_cells} per kind and row)")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def trajectories(shifts: dict[str, dict[tuple[str, str], np.ndarray]], real: dict[tuple[str, str], np.ndarray],
                 out: Path) -> Path | None:
    """Per cell type: the real shift from control over time (black) and each row's predicted
    shift, in the 2-D PCA of all real shifts. None when there is no time course to draw."""
    keys = sorted(real)
    cell_types = sorted({c for c, _ in keys})
    if not any(len({d for c, d in keys if c == ct}) > 1 for ct in cell_types):
        return None
    stack = np.stack([real[k] for k in keys])
    centre = stack.mean(0)
    _, s, vt = np.linalg.svd(stack - centre, full_matrices=False)
    basis = np.zeros((stack.shape[1], 2))
    basis[:, :min(2, len(vt))] = vt[:2].T  # fewer than two components: the second axis stays 0
    share = s[:2] ** 2 / max(float((s ** 2).sum()), 1e-30)
    share = np.pad(share, (0, 2 - len(share)))

    def xy(v: np.ndarray) -> np.ndarray:
        return (v - centre) @ basis

    colors = row_colors(list(shifts))
    plt = _figure()
    cols = min(len(cell_types), 4)
    nrows = -(-len(cell_types) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.8 * cols, 3.6 * nrows), dpi=110, squeeze=False)
    for ax, cell_type in zip(axes.flat, cell_types, strict=False):
        days = sorted({d for c, d in keys if c == cell_type}, key=_day_key)
        path = np.stack([xy(real[(cell_type, d)]) for d in days])
        ax.plot(*path.T, "-o", c="k", label="real", ms=4)
        for name, shift in shifts.items():
            points = [xy(shift[(cell_type, d)]) for d in days if (cell_type, d) in shift]
            if len(points) == len(days):
                ax.plot(*np.stack(points).T, "--o", c=colors[name], label=name, ms=3)
        ax.annotate(days[0], path[0], fontsize=7)
        ax.annotate(days[-1], path[-1], fontsize=7)
        ax.set_title(cell_type, fontsize=9)
        ax.set_xlabel(f"shift PC1 ({100 * share[0]:.0f}%), embedding units", fontsize=8)
        ax.set_ylabel(f"shift PC2 ({100 * share[1]:.0f}%)", fontsize=8)
    for ax in list(axes.flat)[len(cell_types):]:
        ax.set_visible(False)
    axes[0][0].legend(frameon=False, fontsize=7)
    fig.suptitle("shift from control over time, real vs predicted (PCA of the real shifts)")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _day_key(day: str) -> tuple[int, float, str]:
    try:
        return (0, float(day), day)
    except ValueError:
        return (1, 0.0, day)
