"""Which tracking store stx writes to, and how secrets in its address are hidden."""

from __future__ import annotations

import os
import re
from pathlib import Path

DEFAULT_DIR = Path("mlruns")


def resolve_tracking_uri(cli_uri: str | None = None) -> str:
    """`--tracking-uri` > `MLFLOW_TRACKING_URI` > the embedded `sqlite:///mlruns/mlflow.db`.

    Never MLflow's implicit default. The embedded store is made absolute (relative to the
    working directory) so that subprocesses and later `stx ui` calls find the same file.
    """
    uri = cli_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    root = DEFAULT_DIR.resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def default_artifact_root(uri: str) -> str | None:
    """`mlruns/artifacts` beside an embedded sqlite store; None lets a server decide."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        return (db.parent / "artifacts").resolve().as_uri()
    return None


def mask_secrets(text: str) -> str:
    """Replace passwords in URLs (`scheme://user:pass@host`) with `***`."""
    return re.sub(r"(?P<scheme>[a-zA-Z][\w+.-]*://)(?P<user>[^:/@\s]+):(?P<pw>[^@/\s]+)@",
                  r"\g<scheme>\g<user>:***@", text)
