"""stx: fine-tune Arc's State Transition model on new perturbations, tracked in MLflow."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "stx-perturb"  # the name on the package index (`stx` there is another project)

try:
    __version__ = version(DISTRIBUTION)
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+local"

from stx.errors import StxError  # noqa: E402

_API = ("run", "run_all", "resume", "abandon", "compare", "sweep", "predict", "load")
__all__ = ["DISTRIBUTION", "StxError", "__version__", *_API]


def __getattr__(name: str) -> object:
    # the API is imported on first use, so `import stx` (and `stx --help`) stays instant
    if name in _API:
        from stx import api

        return getattr(api, name)
    raise AttributeError(f"module 'stx' has no attribute {name!r}")
