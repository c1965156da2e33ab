"""Errors a user can fix. The CLI prints them as one line and exits 2, with no traceback."""

from __future__ import annotations


class StxError(Exception):
    """A mistake in the user's input (file, key, column, value)."""

    exit_code = 2


class ConfigError(StxError):
    """A config file or `--set` override is malformed, unknown or of the wrong type."""


class DataError(StxError):
    """An input `.h5ad` file does not have the layout the config describes."""


class TrainingDiverged(StxError):
    """The loss became NaN or infinite: training stops and the run ends FAILED with the step."""
