"""Figures a run logs: loss curves, gradient norms, and real vs predicted cells."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: dict[str, list[tuple[int, float]]], keys: list[str], out: Path, title: str,
                log_y: bool = False) -> Path:
    """Line plot of metric histories (missing keys are skipped)."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    drawn = 0
    for key in keys:
        points = history.get(key)
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, label=key, lw=1.2, marker="o" if len(points) < 30 else None, ms=3)
            drawn += 1
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if drawn:
        if log_y:
            ax.set_yscale("log")
        ax.legend(frameon=False)
    else:
        ax.text(0.5, 0.5, "nothing recorded (no training in this variant)", ha="center", va="center",
                transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def project_2d(x: np.ndarray, method: str = "umap", seed: int = 0) -> np.ndarray:
    """2-D coordinates by UMAP (umap-learn) or PCA."""
    if method == "umap":
        import umap

        return umap.UMAP(n_neighbors=15, min_dist=0.3, random_state=seed).fit_transform(x)
    centred = x - x.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def plot_real_vs_predicted(control: np.ndarray, real: np.ndarray, pred: np.ndarray,
                           cell_types: tuple[np.ndarray, np.ndarray, np.ndarray], labels: tuple[str, str],
                           out: Path, method: str = "umap", max_cells: int = 1500, seed: int = 0) -> Path:
    """Two panels over one embedding of control, real perturbed and predicted cells:
    coloured by condition (control / real / predicted) and by cell type."""
    rng = np.random.default_rng(seed)
    parts, names, types = [], [], []
    for x, name, ct in zip((control, real, pred), ("control " + labels[0], "real " + labels[1],
                                                    "predicted " + labels[1]), cell_types, strict=True):
        pick = rng.choice(len(x), min(len(x), max_cells), replace=False) if len(x) else np.zeros(0, int)
        parts.append(x[pick])
        names += [name] * len(pick)
        types.append(ct[pick])
    xy = project_2d(np.concatenate(parts), method, seed)
    names, types = np.asarray(names), np.concatenate(types)
    plt = _figure()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), dpi=110)
    for ax, values, title in ((axes[0], names, "condition"), (axes[1], types, "cell type")):
        for value in dict.fromkeys(values):
            sel = values == value
            ax.scatter(xy[sel, 0], xy[sel, 1], s=3, alpha=0.6, label=str(value))
        ax.set_title(f"{method.upper()} of test cells: {title}")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(markerscale=4, frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
