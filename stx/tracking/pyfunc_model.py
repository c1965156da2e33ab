"""Model code MLflow runs when it loads a registered stx model (models from code)."""

import warnings

import mlflow.models

warnings.filterwarnings("ignore", message=".*type hints to the `predict` method.*")

from stx.tracking.pyfunc import STPyfunc  # noqa: E402

mlflow.models.set_model(STPyfunc())
