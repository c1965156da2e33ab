"""Comparison figures: curves overlaid, metric bars with intervals (references included),
per-group heatmaps (references as columns), real vs predicted cells per row, and the
day-to-day trajectories of predicted vs real shifts. Axes carry quantities and units; text is
readable at half size; each figure says which runs it shows; a row has one colour, fixed by
its variant or reference predictor (`row_colors`), in every figure and every compare; the
reference predictors are grey shades and hatched."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from stx.comparison.tables import metric_columns
from stx.evaluate.plots import CONDITION_COLORS, UNITS, project_2d, pyplot, with_subtitle

# Okabe-Ito (colourblind-safe), one fixed colour per variant: the same in every compare whichever
# rows are present; sky blue is left to predicted cells (CONDITION_COLORS) and black to real ones
VARIANT_COLORS = {"baseline": "#0072b2", "lora": "#e69f00", "lora-mhc": "#009e73", "lora-velocity": "#cc79a7",
                  "lora-mhc-velocity": "#d55e00", "scratch": "#882255"}
# the reference predictors that are not runs: grey shades (and hatched bars)
REFERENCE_COLORS = {"baseline": VARIANT_COLORS["baseline"], "mean_shift": "#6e6e6e", "perturbed_mean": "#969696",
                    "truth": "#cccccc"}
# names stx does not know (a variant added later): Paul Tol's muted scheme, none of the above
FALLBACK_COLORS = ("#332288", "#661100", "#44aa99", "#117733", "#999933", "#ddcc77", "#aa4499")
FIXED_COLORS = {**VARIANT_COLORS, **REFERENCE_COLORS}
# the runs each compare figure draws (report._figures: newest_run)
NEWEST = "newest run of each variant"
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


def base_name(name: str) -> str:
    """The variant or reference a row is of: "lora [600 steps, abc123]" -> "lora"."""
    return name.split(" [")[0].strip()


def row_colors(names: list[str]) -> dict[str, str]:
    """A colour per row, fixed by its variant or reference predictor (`FIXED_COLORS`), whichever
    other rows are present; a row of a configuration ("lora [600 steps, ...]") takes its
    variant's. A name stx does not know gets a fallback colour chosen by its name (stable
    across compares), moved on to a free one when another unknown name in `names` holds it."""
    colors = {n: FIXED_COLORS[base_name(n)] for n in names if base_name(n) in FIXED_COLORS}
    taken: dict[str, str] = {}  # fallback colour -> the unknown base name holding it
    for base in sorted({base_name(n) for n in names} - set(FIXED_COLORS)):
        start = zlib.crc32(base.encode())
        for k in range(len(FALLBACK_COLORS)):
            color = FALLBACK_COLORS[(start + k) % len(FALLBACK_COLORS)]
            if color not in taken or k == len(FALLBACK_COLORS) - 1:
                break
        taken.setdefault(color, base)
        colors.update({n: color for n in names if base_name(n) == base})
    return colors


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    """(rows, cols) of a panel grid: wrapped, never one strip too wide to read at half size."""
    cols = max(1, min(n, max_cols))
    return -(-max(n, 1) // cols), cols


def curves(histories: dict[str, dict[str, list[tuple[int, float]]]], keys: list[str], out: Path, title: str,
           log_y: bool = False, hline: tuple[float, str] | None = None, subtitle: str | None = None) -> Path:
    """One line per (row, key): {row: {key: [(step, value)]}}; `subtitle` says which runs
    (the caller's title may say it instead)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
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
    ax.set_title(with_subtitle(title, subtitle))
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(frameon=False)
        if log_y:
            ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "no training curves (only untrained rows)", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def metric_bars(table: pd.DataFrame, out: Path, subtitle: str | None = None) -> Path:
    """A panel per metric: a bar per row with its 95% interval; references hatched. A variant's
    tick says how many runs it pools; `subtitle` replaces the default line on the runs shown."""
    metrics = metric_columns(table)
    plt = pyplot()
    nrows, cols = _grid(len(metrics), 3)
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 4.6 * nrows), dpi=110, squeeze=False)
    ticks = [f"{r} ({int(n)} run{'s' if int(n) != 1 else ''})" if kind == "variant" and pd.notna(n) else str(r)
             for r, kind, n in zip(table["row"], table["kind"], table.get("n_runs", pd.Series([np.nan] * len(table))),
                                   strict=True)]
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
        ax.set_xticks(range(len(table)), ticks, rotation=40, ha="right")
        ax.set_xlabel("row (variant or reference predictor)")
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        ax.set_title(metric)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    fig.suptitle(with_subtitle("held-out metrics, mean and 95% bootstrap interval (hatched: reference predictors)",
                               subtitle or "every run of each variant, its seeds pooled; references: the runs' "
                               "own test predictions"))
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def group_heatmaps(groups: dict[str, pd.DataFrame], metric: str, out: Path, subtitle: str | None = None) -> Path:
    """Cell type x time heatmap of one metric, a panel per row (references included), wrapped
    four to a line; `subtitle` replaces the default line on the runs shown."""
    plt = pyplot()
    n = max(1, len(groups))
    nrows, cols = _grid(n)
    days = max([f["day"].nunique() for f in groups.values() if "day" in f] or [1])
    fig, axes = plt.subplots(nrows, cols, figsize=((1.6 + 0.6 * days) * cols + 2, 3.8 * nrows + 0.8), dpi=110,
                             squeeze=False, layout="constrained")  # wrapped rows: labels never overlap
    lower = metric == "energy_ratio"
    image = None
    for ax, (name, frame) in zip(axes.flat, groups.items(), strict=False):
        grid = frame.pivot_table(index="cell_type", columns="day", values=metric, aggfunc="mean")
        values = grid.to_numpy(float)
        image = ax.imshow(values, vmin=0 if lower else -1, vmax=1.5 if lower else 1,
                          cmap="viridis_r" if lower else "RdBu_r", aspect="auto")
        ax.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns])
        ax.set_yticks(range(grid.shape[0]), [str(c) for c in grid.index])
        ax.set_xlabel("time point")
        ax.set_ylabel("cell type")
        for (i, j), value in np.ndenumerate(values):
            ax.text(j, i, "n/a" if not np.isfinite(value) else f"{value:.2f}", ha="center", va="center", fontsize=9,
                    color="w" if lower and np.isfinite(value) and value > 0.9 else "k")  # dark cells: light text
        ax.set_title(name)
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label=METRIC_LABELS.get(metric, metric))
    fig.suptitle(with_subtitle(f"{metric} per held-out group (cell type x time point)",
                               subtitle or "every run of each variant, mean over its seeds"))
    fig.savefig(out)  # constrained layout already fits the labels: a tight bbox would draw it twice
    plt.close(fig)
    return out


def prediction_grid(real_control: np.ndarray, real_perturbed: np.ndarray, predicted: dict[str, np.ndarray],
                    out: Path, method: str = "pca", max_cells: int = 800, seed: int = 0,
                    subtitle: str = NEWEST) -> Path:
    """One shared 2-D map; a panel per row with control, real perturbed and its predictions;
    `subtitle` says which run of each row is drawn."""
    rng = np.random.default_rng(seed)

    def pick(x: np.ndarray) -> np.ndarray:
        return x[rng.choice(len(x), min(len(x), max_cells), replace=False)] if len(x) else x

    parts = [pick(real_control), pick(real_perturbed)] + [pick(p) for p in predicted.values()]
    xy, axis = project_2d(np.concatenate(parts), method, seed)
    bounds = np.cumsum([0, *map(len, parts)])
    plt = pyplot()
    n = max(1, len(predicted))
    nrows, cols = _grid(n, 3)
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 4.8 * nrows), dpi=110, squeeze=False)
    row_color = row_colors(list(predicted))
    for k, (ax, name) in enumerate(zip(axes.flat, predicted, strict=False)):
        ax.scatter(*xy[bounds[0]:bounds[1]].T, s=3, c=CONDITION_COLORS["control"], label="control", alpha=0.5)
        ax.scatter(*xy[bounds[1]:bounds[2]].T, s=3, c=CONDITION_COLORS["real"], label="real perturbed", alpha=0.5)
        ax.scatter(*xy[bounds[k + 2]:bounds[k + 3]].T, s=3, c=CONDITION_COLORS["predicted"], label="predicted",
                   alpha=0.5)
        ax.set_title(name)
        for spine in ax.spines.values():  # the row's colour, as in the other figures
            spine.set_edgecolor(row_color[name])
            spine.set_linewidth(2)
        ax.set_xlabel(axis[0])
        ax.set_ylabel(axis[1])
        ax.legend(markerscale=4, frameon=False)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle(with_subtitle(f"{method.upper()} of held-out cells (up to {max_cells} per kind and row)", subtitle))
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def trajectories(shifts: dict[str, dict[tuple[str, str], np.ndarray]], real: dict[tuple[str, str], np.ndarray],
                 out: Path, subtitle: str = NEWEST) -> Path | None:
    """Per cell type: the real shift from control over time (the real-cells colour, solid) and
    each row's predicted shift (its row colour, dashed), in the 2-D PCA of all real shifts.
    None when there is no time course to draw; `subtitle` says which run of each row is drawn."""
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
    plt = pyplot()
    nrows, cols = _grid(len(cell_types), 3)
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 4.6 * nrows), dpi=110, squeeze=False)
    for ax, cell_type in zip(axes.flat, cell_types, strict=False):
        days = sorted({d for c, d in keys if c == cell_type}, key=_day_key)
        path = np.stack([xy(real[(cell_type, d)]) for d in days])
        ax.plot(*path.T, "-o", c=CONDITION_COLORS["real"], label="real", ms=4)
        for name, shift in shifts.items():
            points = [xy(shift[(cell_type, d)]) for d in days if (cell_type, d) in shift]
            if len(points) == len(days):
                ax.plot(*np.stack(points).T, "--o", c=colors[name], label=name, ms=3)
        ax.annotate(f"day {days[0]}", path[0], fontsize=10)
        ax.annotate(f"day {days[-1]}", path[-1], fontsize=10)
        ax.set_title(cell_type)
        ax.set_xlabel(f"shift PC 1 ({100 * share[0]:.0f}% of variance), embedding units")
        ax.set_ylabel(f"shift PC 2 ({100 * share[1]:.0f}%), embedding units")
    for ax in list(axes.flat)[len(cell_types):]:
        ax.set_visible(False)
    axes[0][0].legend(frameon=False)
    fig.suptitle(with_subtitle("shift from control over time, real (solid) vs predicted (dashed), PCA of the real "
                               "shifts", subtitle))
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _day_key(day: str) -> tuple[int, float, str]:
    try:
        return (0, float(day), day)
    except ValueError:
        return (1, 0.0, day)
