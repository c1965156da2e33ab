"""Which tracking store stx writes to, and how secrets in its address are hidden."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

DEFAULT_DIR = Path("mlruns")


def probe_writable(folder: Path) -> None:
    """Create `folder` if needed and write a file in it (OSError if stx cannot): permissions,
    read-only mounts and full disks show up now, not after a run has trained."""
    folder.mkdir(parents=True, exist_ok=True)
    # a name of its own: processes starting together in one folder must not delete each other's probe
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".stx-write-test-"):
        pass


def resolve_tracking_uri(cli_uri: str | None = None) -> str:
    """`--tracking-uri` > `MLFLOW_TRACKING_URI` > the embedded `sqlite:///mlruns/mlflow.db`.

    Never MLflow's implicit default. The embedded store is made absolute (relative to the
    working directory) so that subprocesses and later `stx ui` calls find the same file.
    """
    uri = cli_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    root = DEFAULT_DIR.resolve()
    try:
        probe_writable(root)
    except OSError as err:
        from stx.errors import StxError

        raise StxError(f"{root}: cannot keep the embedded tracking store there ({err.strerror or err}); run from a "
                       f"writable directory, or pass --tracking-uri / set MLFLOW_TRACKING_URI") from None
    return f"sqlite:///{root / 'mlflow.db'}"


def default_artifact_root(uri: str) -> str | None:
    """`mlruns/artifacts` beside an embedded sqlite store; None lets a server decide."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        return (db.parent / "artifacts").resolve().as_uri()
    return None


# scheme://user:PASSWORD@host: the password is everything up to the last "@" that is followed
# by a host (and a port) and then the end of the address, so "/", "@", ":" and spaces in an
# unencoded password are masked too; "://" never belongs to a password (a second URL does)
_SECRET = re.compile(r"(?P<scheme>[a-zA-Z][\w+.-]*://)(?P<user>[^:/@\s]+):(?P<pw>(?:(?!://).)*?)"
                     r"@(?P<host>[A-Za-z0-9.\-\[\]]+(?::\d+)?)(?=[/?#\s'\",;)]|$)")


def mask_secrets(text: str) -> str:
    """Replace passwords in URLs (`scheme://user:pass@host`) with `***`."""
    return _SECRET.sub(r"\g<scheme>\g<user>:***@\g<host>", text)


_UNREACHABLE = re.compile(r"Max retries exceeded|Connection refused|Connection reset|Failed to establish|timed out|"
                          r"failed with error code 50[234]|could not connect|server closed the connection|"
                          r"Name or service not known|database is locked", re.IGNORECASE)


def is_unreachable(err: BaseException) -> bool:
    """True when `err` (or what caused it) says the store could not be reached, as opposed to
    the store refusing the request: the first is worth holding and resending, the second is not."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, (ConnectionError, TimeoutError)):
            return True
        name = type(err).__name__
        if name in {"OperationalError", "InterfaceError", "MaxRetryError", "NewConnectionError", "ReadTimeout",
                    "ConnectTimeout", "EndpointConnectionError"}:
            return True
        if _UNREACHABLE.search(str(err)):
            return True
        err = err.__cause__ or err.__context__
        seen += 1
    return False


def describe_error(err: BaseException, limit: int = 160) -> str:
    """`Class: first line of the message`, secrets masked: for one-line reports."""
    text = mask_secrets(str(err)).splitlines()[0][:limit] if str(err).strip() else ""
    return f"{err.__class__.__name__}: {text}" if text else err.__class__.__name__
