"""Figures a run logs: loss curves, gradient norms, and real vs predicted cells.

Every axis is labelled with its quantity and unit; colours keep one meaning across figures
(`CONDITION_COLORS` for control / real / predicted, a qualitative palette for categories); text
stays readable at half size (`FONT_SIZES`: 10 pt ticks and legends, 12 pt titles); a figure says
which run(s) it shows in its title or `subtitle`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# one meaning, one colour, in every figure (per-run and compare): observed cells are near-black,
# predicted ones sky blue, a colour no variant or reference predictor uses (stx.comparison.figures)
CONDITION_COLORS = {"control": "#b3b3b3", "real": "#1a1a1a", "predicted": "#56b4e9"}
FONT_SIZES = {"font.size": 10, "axes.labelsize": 10, "xtick.labelsize": 10, "ytick.labelsize": 10,
              "legend.fontsize": 10, "legend.title_fontsize": 10, "axes.titlesize": 12, "figure.titlesize": 13}
UNITS = {
    "train/loss": "energy distance (+ auxiliary terms)", "val/loss": "energy distance (+ auxiliary terms)",
    "train/energy_loss": "energy distance", "val/energy_loss": "energy distance",
    "grad_norm/global": "L2 norm of the gradient", "lr": "learning rate",
}


def projection_for(setting: str, dims: int) -> str:
    """`auto`: PCA for an embedding that is already low-dimensional (<= 100), else UMAP."""
    if setting != "auto":
        return setting
    return "pca" if dims <= 100 else "umap"


def pyplot():  # noqa: ANN201 - the matplotlib.pyplot module
    """matplotlib.pyplot, drawing off screen (Agg) at stx's font sizes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(FONT_SIZES)
    return plt


def with_subtitle(title: str, subtitle: str | None) -> str:
    """`title`, and on a second line what the figure shows (which run(s))."""
    return f"{title}\n{subtitle}" if subtitle else title


def plot_curves(history: dict[str, list[tuple[int, float]]], keys: list[str], out: Path, title: str,
                log_y: bool = False, hline: tuple[float, str] | None = None, subtitle: str | None = None) -> Path:
    """Line plot of metric histories (missing keys are skipped); `hline` = (value, label);
    `subtitle` (e.g. "run 1a2b3c4d, seed 0") names the run drawn."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4), dpi=110)
    drawn = 0
    for key in keys:
        points = history.get(key)
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, label=key, lw=1.2, marker="o" if len(points) < 30 else None, ms=3)
            drawn += 1
    if hline is not None and drawn:
        ax.axhline(hline[0], color="k", ls=":", lw=1, label=hline[1])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(UNITS.get(keys[0], keys[0]) if keys else "value")
    ax.set_title(with_subtitle(title, subtitle))
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


def project_2d(x: np.ndarray, method: str = "pca", seed: int = 0) -> tuple[np.ndarray, tuple[str, str]]:
    """2-D coordinates by PCA or UMAP (umap-learn), with their axis labels."""
    if method == "umap":
        import umap

        xy = umap.UMAP(n_neighbors=15, min_dist=0.3, random_state=seed).fit_transform(x)
        return xy, ("UMAP 1 (arbitrary units)", "UMAP 2 (arbitrary units)")
    centred = x - x.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    share = s ** 2 / max(float((s ** 2).sum()), 1e-30)
    return centred @ vt[:2].T, (f"PC1 ({100 * share[0]:.0f}% of variance)", f"PC2 ({100 * share[1]:.0f}% of variance)")


def category_colors(values: list[str]) -> dict[str, str]:
    """A colour per category, stable for the same set of values."""
    import matplotlib

    palette = matplotlib.colormaps["tab10" if len(values) <= 10 else "tab20"]
    return {v: matplotlib.colors.to_hex(palette(i % palette.N)) for i, v in enumerate(sorted(values, key=str))}


def plot_real_vs_predicted(control: np.ndarray, real: np.ndarray, pred: np.ndarray,
                           labels: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], conditions: tuple[str, str],
                           out: Path, method: str = "pca", max_cells: int = 1500, seed: int = 0,
                           subtitle: str | None = None) -> Path:
    """Panels over one 2-D map of control, real perturbed and predicted cells: by condition,
    then predicted cells by each label (cell type, time point); `subtitle` names the run drawn."""
    rng = np.random.default_rng(seed)
    picks = [rng.choice(len(x), min(len(x), max_cells), replace=False) if len(x) else np.zeros(0, int)
             for x in (control, real, pred)]
    xy, axis = project_2d(np.concatenate([x[p] for x, p in zip((control, real, pred), picks, strict=True)]),
                          method, seed)
    bounds = np.cumsum([0, *map(len, picks)])
    plt = pyplot()
    n = 1 + len(labels)
    cols = min(n, 3)  # wrapped: never a strip too wide to read at half size
    fig, axes = plt.subplots(-(-n // cols), cols, figsize=(5 * cols, 4.6 * -(-n // cols)), dpi=110, squeeze=False)
    panels = list(axes.flat)[:n]
    ax = panels[0]
    names = (f"control ({conditions[0]})", f"real {conditions[1]}", f"predicted {conditions[1]}")
    for k, (name, kind) in enumerate(zip(names, ("control", "real", "predicted"), strict=True)):
        ax.scatter(*xy[bounds[k]:bounds[k + 1]].T, s=3, alpha=0.5, c=CONDITION_COLORS[kind], label=name)
    ax.set_title("held-out cells by condition")
    for ax, (title, values) in zip(panels[1:], labels.items(), strict=True):
        shown = values[2][picks[2]]
        colors = category_colors(list(dict.fromkeys(np.concatenate(values).tolist())))
        ax.scatter(*xy[bounds[0]:bounds[2]].T, s=2, c="#dddddd", label="real cells")
        for value in sorted(dict.fromkeys(shown.tolist()), key=str):
            sel = shown == value
            ax.scatter(*xy[bounds[2]:bounds[3]][sel].T, s=3, alpha=0.6, c=colors[value], label=str(value))
        ax.set_title(f"predicted cells by {title}")
    for ax in panels:
        ax.set_xlabel(axis[0])
        ax.set_ylabel(axis[1])
        ax.legend(markerscale=4, frameon=False)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle(with_subtitle(f"{method.upper()} of the held-out test cells (up to {max_cells} per kind)", subtitle))
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
