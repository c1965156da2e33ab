"""Optuna's own matplotlib figures of a study, saved as PNGs."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

log = logging.getLogger(__name__)


def study_plots(study, out: Path) -> list[Path]:  # noqa: ANN001 - optuna.Study
    """Optimisation history, parameter importances, parallel coordinates, intermediate values.

    A figure that the study cannot support yet (e.g. importances with one finished trial)
    is skipped with a log line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ov

    written = []
    for name, fn in (("optimization_history", ov.plot_optimization_history),
                     ("param_importances", ov.plot_param_importances),
                     ("parallel_coordinate", ov.plot_parallel_coordinate),
                     ("intermediate_values", ov.plot_intermediate_values)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna marks these plots experimental
                axes = fn(study)
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            figure.savefig(out / f"{name}.png", dpi=110)
            plt.close(figure)
            written.append(out / f"{name}.png")
        except Exception as err:  # optuna raises various errors when a plot has too little data
            log.info("sweep plot %s skipped: %s", name, err)
    return written
