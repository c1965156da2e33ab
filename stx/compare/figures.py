"""Comparison figures: curves overlaid, metric bars with CIs, per-group heatmaps, real vs
predicted cells per variant, and the day-to-day trajectories of predicted vs real shifts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from stx.compare.tables import MEAN_SHIFT
from stx.evaluate.metrics import METRICS
from stx.evaluate.plots import _figure, project_2d


def curves(histories: dict[str, dict[str, list[tuple[int, float]]]], keys: list[str], out: Path, title: str,
           log_y: bool = False) -> Path:
    """One line per (variant, key): {variant: {key: [(step, value)]}}."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for variant, history in histories.items():
        for key in keys:
            if history.get(key):
                steps, values = zip(*sorted(history[key]), strict=True)
                ax.plot(steps, values, lw=1.2, label=f"{variant} {key}", ls="-" if key.startswith("train") or
                        key.startswith("grad") else "--", marker="o" if len(steps) < 30 else None, ms=3)
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(frameon=False, fontsize=7)
        if log_y:
            ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def metric_bars(table: pd.DataFrame, out: Path) -> Path:
    """One panel per metric: a bar per variant with its 95% CI."""
    plt = _figure()
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 4), dpi=110)
    colors = ["#999999" if v in ("baseline", MEAN_SHIFT) else f"C{i}" for i, v in enumerate(table["variant"])]
    for ax, metric in zip(axes, METRICS, strict=True):
        mean = table[metric].astype(float).to_numpy()
        low = mean - table[f"{metric}_ci_low"].astype(float).to_numpy()
        high = table[f"{metric}_ci_high"].astype(float).to_numpy() - mean
        err = np.nan_to_num(np.vstack([low, high]))
        ax.bar(range(len(table)), np.nan_to_num(mean), yerr=err, color=colors, capsize=3)
        ax.set_xticks(range(len(table)), table["variant"], rotation=45, ha="right", fontsize=8)
        ax.set_title(metric)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def group_heatmaps(by_variant: dict[str, pd.DataFrame], metric: str, out: Path) -> Path:
    """Cell type x day heatmap of one metric, a panel per variant."""
    plt = _figure()
    n = max(1, len(by_variant))
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.8), dpi=110, squeeze=False)
    for k, (ax, (variant, frame)) in enumerate(zip(axes[0], by_variant.items(), strict=False)):
        grid = frame.pivot_table(index="cell_type", columns="day", values=metric, aggfunc="mean")
        image = ax.imshow(grid.to_numpy(float), vmin=-1, vmax=1, cmap="RdBu_r", aspect="auto")
        ax.set_xticks(range(grid.shape[1]), grid.columns)
        ax.set_yticks(range(grid.shape[0]), grid.index if k == 0 else [""] * grid.shape[0])
        for (i, j), value in np.ndenumerate(grid.to_numpy(float)):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7)
        ax.set_title(variant, fontsize=9)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label=metric)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out


def prediction_grid(real_control: np.ndarray, real_perturbed: np.ndarray, predicted: dict[str, np.ndarray],
                    out: Path, method: str = "umap", max_cells: int = 800, seed: int = 0) -> Path:
    """One shared 2-D map; a panel per variant with control, real perturbed and its predictions."""
    rng = np.random.default_rng(seed)

    def pick(x: np.ndarray) -> np.ndarray:
        return x[rng.choice(len(x), min(len(x), max_cells), replace=False)] if len(x) else x

    parts = [pick(real_control), pick(real_perturbed)] + [pick(p) for p in predicted.values()]
    xy = project_2d(np.concatenate(parts), method, seed)
    bounds = np.cumsum([0, *map(len, parts)])
    plt = _figure()
    n = max(1, len(predicted))
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 4), dpi=110, squeeze=False)
    for k, (ax, variant) in enumerate(zip(axes[0], predicted, strict=False)):
        for i, (label, color) in enumerate((("control", "#bbbbbb"), ("real perturbed", "C1"))):
            ax.scatter(*xy[bounds[i]:bounds[i + 1]].T, s=3, c=color, label=label, alpha=0.6)
        ax.scatter(*xy[bounds[k + 2]:bounds[k + 3]].T, s=3, c="C2", label="predicted", alpha=0.6)
        ax.set_title(variant, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(markerscale=4, frameon=False, fontsize=7)
    fig.suptitle(f"{method.upper()} of held-out cells")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def trajectories(shifts: dict[str, dict[tuple[str, str], np.ndarray]], real: dict[tuple[str, str], np.ndarray],
                 out: Path) -> Path:
    """Per cell type: the real shift over days (black) and each variant's predicted shift,
    both in the 2-D PCA of all real shifts."""
    keys = sorted(real)
    if not keys:
        return out
    stack = np.stack([real[k] for k in keys])
    centre = stack.mean(0)
    _, _, vt = np.linalg.svd(stack - centre, full_matrices=False)
    basis = vt[:2].T

    def xy(v: np.ndarray) -> np.ndarray:
        return (v - centre) @ basis

    cell_types = sorted({c for c, _ in keys})
    plt = _figure()
    fig, axes = plt.subplots(1, len(cell_types), figsize=(3.4 * len(cell_types), 3.6), dpi=110, squeeze=False)
    for ax, cell_type in zip(axes[0], cell_types, strict=True):
        days = sorted({d for c, d in keys if c == cell_type}, key=lambda d: float(d) if d.replace(".", "").isdigit()
                      else 0.0)
        path = np.stack([xy(real[(cell_type, d)]) for d in days])
        ax.plot(*path.T, "-o", c="k", label="real", ms=4)
        for k, (variant, shift) in enumerate(shifts.items()):
            points = [xy(shift[(cell_type, d)]) for d in days if (cell_type, d) in shift]
            if len(points) == len(days):
                ax.plot(*np.stack(points).T, "--o", c=f"C{k}", label=variant, ms=3)
        ax.annotate(days[0], path[0], fontsize=7)
        ax.annotate(days[-1], path[-1], fontsize=7)
        ax.set_title(cell_type, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].legend(frameon=False, fontsize=7)
    fig.suptitle("shift from control over days: real vs predicted (PCA of real shifts)")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
