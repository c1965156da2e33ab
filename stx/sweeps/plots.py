"""Optuna's own matplotlib figures of a study, saved as PNGs, each titled with the study's name
and its trials, axes labelled with what they measure, text readable at half size."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

log = logging.getLogger(__name__)


def _objective_name(study, objective: str | None) -> str:  # noqa: ANN001 - optuna.Study
    if objective:
        return objective
    names = getattr(study, "metric_names", None)
    return names[0] if names else "objective value"


def study_plots(study, out: Path, objective: str | None = None) -> list[Path]:  # noqa: ANN001 - optuna.Study
    """Optimisation history, parameter importances, parallel coordinates, intermediate values.

    `objective` (e.g. `sweep.objective`, "val/loss") names the value on the axes; without it,
    the study's metric name or "objective value". A figure that the study cannot support yet
    (e.g. importances with one finished trial) is skipped with a log line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ov

    from stx.evaluate.plots import FONT_SIZES

    target = _objective_name(study, objective)
    done = sum(t.state == TrialState.COMPLETE for t in study.trials)
    try:
        direction = f", {study.direction.name.lower()}d"
    except Exception:  # a multi-objective study has no single direction
        direction = ""
    runs = f"study '{study.study_name}': {done} complete of {len(study.trials)} trials"
    labels = {  # name: (title, x label, y label); None keeps Optuna's
        "optimization_history": ("optimisation history", "trial number", f"{target}{direction}"),
        "param_importances": (f"hyperparameter importance for {target}", "importance (share of the objective's "
                              "variance, sums to 1)", "hyperparameter"),
        "parallel_coordinate": (f"hyperparameters of each trial, coloured by {target}", "hyperparameter", target),
        "intermediate_values": (f"{target} reported during training (pruning)", "optimizer step", target),
    }
    written = []
    for name, fn in (("optimization_history", ov.plot_optimization_history),
                     ("param_importances", ov.plot_param_importances),
                     ("parallel_coordinate", ov.plot_parallel_coordinate),
                     ("intermediate_values", ov.plot_intermediate_values)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna marks these plots experimental
                kwargs = {} if name == "intermediate_values" else {"target_name": target}
                axes = fn(study, **kwargs)
            ax = axes.flat[0] if hasattr(axes, "flat") else axes
            figure = ax.figure
            title, xlabel, ylabel = labels[name]
            for loc in ("left", "right"):  # Optuna titles some plots on the left
                ax.set_title("", loc=loc)
            ax.set_title(f"{title}\n{runs}", fontsize=FONT_SIZES["axes.titlesize"])
            if name != "parallel_coordinate":  # its x axis is the hyperparameters, one tick each
                ax.set_xlabel(xlabel, fontsize=FONT_SIZES["axes.labelsize"])
            ax.set_ylabel(ylabel, fontsize=FONT_SIZES["axes.labelsize"])
            for each in figure.axes:
                each.tick_params(labelsize=FONT_SIZES["xtick.labelsize"])
                if each.get_legend() is not None:
                    for text in each.get_legend().get_texts():
                        text.set_fontsize(FONT_SIZES["legend.fontsize"])
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            figure.savefig(out / f"{name}.png", dpi=110)
            plt.close(figure)
            written.append(out / f"{name}.png")
        except Exception as err:  # optuna raises various errors when a plot has too little data
            log.info("sweep plot %s skipped: %s", name, err)
    return written
