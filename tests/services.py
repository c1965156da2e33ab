"""Throwaway real services for tests, on 127.0.0.1, stopped afterwards."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres_user(cmd: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root: use the machine's postgres account then
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


def postgres_available() -> bool:
    return shutil.which("initdb") is not None and shutil.which("pg_ctl") is not None


@dataclass
class PostgreSQL:
    """A throwaway cluster that a test can stop and start again (same data, same port)."""

    url: str
    data: Path
    log: Path
    options: str

    def stop(self) -> None:
        subprocess.run(_as_postgres_user(["pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop"]),
                       capture_output=True)

    def start(self) -> None:
        subprocess.run(_as_postgres_user(["pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-o",
                                          self.options, "start"]), check=True, capture_output=True)


@contextmanager
def postgresql_server(database: str = "stx") -> Iterator[PostgreSQL]:
    """A fresh PostgreSQL cluster (initdb + pg_ctl) on a free port, with database `database`.

    Its folder lives directly under the system temp dir: pytest's tmp dirs are private to
    root, and the server runs as the postgres account when the tests run as root.
    """
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="stx-pg-"))
    os.chmod(tmp, 0o755)
    data, sock = tmp / "pgdata", tmp / "pgsock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(tmp, "postgres")
        shutil.chown(sock, "postgres")
    port = free_port()
    subprocess.run(_as_postgres_user(["initdb", "-D", str(data), "-A", "trust", "-U", "stx", "--no-sync"]),
                   check=True, capture_output=True)
    server = PostgreSQL(f"postgresql+psycopg://stx@127.0.0.1:{port}/{database}", data, tmp / "pg.log",
                        f"-p {port} -k {sock} -h 127.0.0.1 -c fsync=off")
    server.start()
    try:
        subprocess.run(_as_postgres_user(["createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "stx", database]),
                       check=True, capture_output=True)
        yield server
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def postgresql(database: str = "stx") -> Iterator[str]:
    """A fresh PostgreSQL cluster; yields its SQLAlchemy URL."""
    with postgresql_server(database) as server:
        yield server.url


def wait_http(url: str, timeout: float = 120.0) -> None:
    """Until `url` answers at all (an HTTP error status counts as an answer)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


@contextmanager
def process(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """A background process (its own process group, output to `log`), stopped with its children."""
    with open(log, "a") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield proc
        finally:
            stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, SIGKILL it if it lingers."""
    try:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


def mlflow_server_cmd(backend_uri: str, artifacts: Path, port: int) -> list[str]:
    """`mlflow server` on 127.0.0.1:`port`, one worker, artifacts proxied into `artifacts`."""
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
            "--artifacts-destination", artifacts.as_uri(), "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1"]
