"""Figures a reader can use: colours fixed by meaning, labelled axes, text readable at half
size, and a title that says which runs are shown. Rendered with Agg from small synthetic inputs."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.figure
import matplotlib.text
import numpy as np
import pandas as pd
import pytest

from stx.comparison import figures
from stx.comparison.tables import REFERENCES
from stx.evaluate import plots
from stx.evaluate.plots import CONDITION_COLORS
from stx.variants import VARIANTS

KNOWN = list(dict.fromkeys([*VARIANTS, *REFERENCES]))  # baseline is both


# ---- colours ---------------------------------------------------------------------------------

def test_a_variant_keeps_its_colour_whichever_rows_are_present():
    alone = figures.row_colors(["lora"])["lora"]
    for names in (["baseline", "lora"], ["lora-mhc", "lora"], ["lora-velocity", "lora-mhc", "lora", "truth"],
                  ["mystery", "lora"], KNOWN):
        assert figures.row_colors(names)["lora"] == alone, names


def test_a_configuration_row_takes_its_variants_colour():
    lora = figures.row_colors(["lora"])["lora"]
    colors = figures.row_colors(["lora-mhc", "lora [20 steps, abc]", "lora [600 steps, def123]"])
    assert colors["lora [20 steps, abc]"] == lora
    assert colors["lora [600 steps, def123]"] == lora
    assert colors["lora-mhc"] == figures.row_colors(["lora-mhc [5 steps, 0a]"])["lora-mhc [5 steps, 0a]"]


def test_known_rows_have_distinct_colours_unlike_the_cell_conditions():
    colors = figures.row_colors(KNOWN)
    assert set(colors) == set(KNOWN)
    assert len({c.lower() for c in colors.values()}) == len(KNOWN)
    conditions = {CONDITION_COLORS["predicted"].lower(), CONDITION_COLORS["real"].lower()}
    assert not conditions & {c.lower() for c in colors.values()}
    assert CONDITION_COLORS["predicted"].lower() != CONDITION_COLORS["real"].lower()


def test_unknown_rows_get_fallback_colours_stable_and_apart():
    colors = figures.row_colors(["lora", "alpha", "beta", "gamma", "alpha [3 steps, x]"])
    unknown = [colors[n] for n in ("alpha", "beta", "gamma")]
    fixed = {c.lower() for c in figures.row_colors(KNOWN).values()} | {c.lower() for c in CONDITION_COLORS.values()}
    assert len(set(unknown)) == 3
    assert not {c.lower() for c in unknown} & fixed
    assert colors["alpha [3 steps, x]"] == colors["alpha"]
    assert figures.row_colors(["alpha"])["alpha"] == colors["alpha"]  # stable when alone


# ---- rendered figures ------------------------------------------------------------------------

@pytest.fixture
def saved(monkeypatch):
    """Every figure saved, kept for inspection after the plot function closes it."""
    kept: list[matplotlib.figure.Figure] = []
    original = matplotlib.figure.Figure.savefig

    def savefig(self, *args, **kwargs):
        kept.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    return kept


def _has_data(ax) -> bool:
    return bool(ax.lines or ax.collections or ax.patches or ax.images)


def _check_readable(fig: matplotlib.figure.Figure, runs_word: str | None = "run") -> None:
    for ax in fig.axes:
        if not ax.get_visible() or not _has_data(ax) or getattr(ax, "_colorbar", None) is not None:
            continue
        assert ax.get_xlabel().strip(), f"no x label on '{ax.get_title()}'"
        assert ax.get_ylabel().strip(), f"no y label on '{ax.get_title()}'"
    for text in fig.findobj(matplotlib.text.Text):
        if not text.get_visible() or not text.get_text().strip():
            continue
        if text.axes is not None and not text.axes.get_visible():
            continue
        assert text.get_fontsize() >= 9, f"{text.get_text()!r} at {text.get_fontsize()} pt"
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    for ax in fig.axes:
        if ax.get_visible() and ax.get_title():
            assert ax.title.get_fontsize() >= 12, ax.get_title()
    if fig._suptitle is not None:
        assert fig._suptitle.get_fontsize() >= 12
        titles.append(fig._suptitle.get_text())
    if runs_word:
        assert any(runs_word in t for t in titles), titles


def _columns(fig: matplotlib.figure.Figure) -> int:
    shown = [ax for ax in fig.axes if ax.get_visible() and getattr(ax, "_colorbar", None) is None]
    return len({round(ax.get_position().x0, 3) for ax in shown})


ROWS = ["baseline", "lora", "lora-mhc", "lora [20 steps, abc]", "mean_shift", "perturbed_mean", "truth"]


def _history(shift: float) -> dict[str, list[tuple[int, float]]]:
    return {"train/energy_loss": [(s, 1 / (s + 1) + shift) for s in range(0, 50, 5)],
            "val/energy_loss": [(s, 1.1 / (s + 1) + shift) for s in range(0, 50, 10)],
            "grad_norm/global": [(s, 2.0 + shift) for s in range(0, 50, 5)]}


def test_compare_curves_are_labelled_readable_and_coloured_by_variant(tmp_path, saved):
    histories = {"lora-mhc": _history(0.1), "lora": _history(0.0)}
    figures.curves(histories, ["train/energy_loss", "val/energy_loss"], tmp_path / "c.png",
                   "energy loss (newest run of each variant; dashed: validation)")
    (fig,) = saved
    _check_readable(fig)
    lora = figures.row_colors(["lora"])["lora"]
    lines = [line for line in fig.axes[0].lines if line.get_label().startswith("lora ")]
    assert lines and all(matplotlib.colors.to_hex(line.get_color()) == lora.lower() for line in lines)


def test_metric_bars_are_labelled_readable_and_say_which_runs(tmp_path, saved):
    rng = np.random.default_rng(0)
    mean = rng.uniform(0.2, 1.2, len(ROWS))
    table = pd.DataFrame({"row": ROWS, "kind": ["variant"] * 4 + ["reference"] * 3, "n_runs": [1, 3, 2, 1, 0, 0, 0],
                          "energy_ratio": mean, "energy_ratio_low": mean - 0.1, "energy_ratio_high": mean + 0.1,
                          "pearson_delta": mean / 2, "pearson_delta_low": mean / 2 - 0.1,
                          "pearson_delta_high": mean / 2 + 0.1})
    figures.metric_bars(table, tmp_path / "b.png")
    (fig,) = saved
    _check_readable(fig)


def _groups(shift: float) -> pd.DataFrame:
    return pd.DataFrame([{"perturbation": "Burn", "cell_type": ct, "day": d, "energy_ratio": 0.5 + shift}
                         for ct in ("A", "B") for d in ("1", "2", "3")])


def test_group_heatmaps_wrap_many_rows_and_stay_readable(tmp_path, saved):
    figures.group_heatmaps({name: _groups(0.1 * k) for k, name in enumerate(ROWS)}, "energy_ratio",
                           tmp_path / "h.png")
    (fig,) = saved
    _check_readable(fig)
    assert _columns(fig) <= 4  # seven rows: wrapped, not one strip


def _cells(n: int, shift: float, rng: np.random.Generator) -> np.ndarray:
    return rng.normal(shift, 1.0, (n, 6))


def test_prediction_grid_is_labelled_readable_and_names_the_runs(tmp_path, saved):
    rng = np.random.default_rng(1)
    predicted = {name: _cells(30, 0.5 + k, rng) for k, name in enumerate(ROWS[:5])}
    figures.prediction_grid(_cells(40, 0, rng), _cells(40, 1, rng), predicted, tmp_path / "g.png")
    (fig,) = saved
    _check_readable(fig, "newest run")
    assert _columns(fig) <= 4
    real = [c for ax in fig.axes for c in ax.collections if c.get_label() == "real perturbed"]
    assert real and all(matplotlib.colors.to_hex(c.get_facecolor()[0], keep_alpha=False)
                        == CONDITION_COLORS["real"].lower() for c in real)


def test_trajectories_draw_real_in_the_real_colour_everywhere(tmp_path, saved):
    rng = np.random.default_rng(2)
    keys = [(ct, d) for ct in ("A", "B") for d in ("1", "2", "3")]
    real = {k: rng.normal(size=5) for k in keys}
    shifts = {name: {k: v + rng.normal(0, 0.1, 5) for k, v in real.items()} for name in ("lora", "lora-mhc")}
    assert figures.trajectories(shifts, real, tmp_path / "t.png") is not None
    (fig,) = saved
    _check_readable(fig, "newest run")
    lines = {line.get_label(): matplotlib.colors.to_hex(line.get_color()) for ax in fig.axes for line in ax.lines}
    assert lines["real"] == CONDITION_COLORS["real"].lower()
    assert lines["lora"] == figures.row_colors(["lora"])["lora"].lower()


def test_run_curves_take_a_subtitle_naming_the_run(tmp_path, saved):
    plots.plot_curves(_history(0), ["train/energy_loss", "val/energy_loss"], tmp_path / "l.png", "lora: loss",
                      subtitle="run 1a2b3c4d, seed 0")
    plots.plot_curves({}, ["grad_norm/global"], tmp_path / "g.png", "baseline: gradient norm")  # old call
    first, empty = saved
    _check_readable(first)
    assert "run 1a2b3c4d" in first.axes[0].get_title()
    assert empty.axes[0].get_xlabel() and empty.axes[0].get_ylabel()


def test_run_cell_figure_is_labelled_readable_and_names_the_run(tmp_path, saved):
    rng = np.random.default_rng(3)
    control, real, pred = _cells(40, 0, rng), _cells(40, 1, rng), _cells(40, 1.2, rng)
    labels = {"cell type": (np.array(["A", "B"] * 20), np.array(["A", "B"] * 20), np.array(["A", "B"] * 20)),
              "time (day)": (np.array(["1", "2"] * 20), np.array(["2", "1"] * 20), np.array(["1", "2"] * 20))}
    plots.plot_real_vs_predicted(control, real, pred, labels, ("ctrl", "Burn"), tmp_path / "cells.png",
                                 subtitle="run 1a2b3c4d (lora, seed 0)")
    (fig,) = saved
    _check_readable(fig, "run 1a2b3c4d")
    by_condition = {c.get_label(): matplotlib.colors.to_hex(c.get_facecolor()[0], keep_alpha=False)
                    for c in fig.axes[0].collections}
    assert by_condition["real Burn"] == CONDITION_COLORS["real"].lower()
    assert by_condition["predicted Burn"] == CONDITION_COLORS["predicted"].lower()


def test_sweep_plots_name_the_study_and_label_the_axes(tmp_path, saved):
    optuna = pytest.importorskip("optuna")
    from stx.sweeps.plots import study_plots

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="demo-study", sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(trial):
        x = trial.suggest_float("lr", 1e-4, 1e-2, log=True)
        r = trial.suggest_int("rank", 4, 32)
        for step in range(3):
            trial.report(x * step + r, step)
        return x + r

    study.optimize(objective, n_trials=5)
    written = study_plots(study, tmp_path, objective="val/loss")
    assert written and len(saved) == len(written)
    for fig in saved:
        ax = fig.axes[0]
        assert "demo-study" in ax.get_title()
        assert ax.title.get_fontsize() >= 12
        assert "val/loss" in ax.get_ylabel() or "val/loss" in ax.get_title()
    history = saved[0].axes[0]
    assert history.get_xlabel() == "trial number" and "val/loss" in history.get_ylabel()
