import pytest

from stx.tracking.store import default_artifact_root, describe_error, is_unreachable, mask_secrets, resolve_tracking_uri


def test_tracking_uri_precedence(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert (tmp_path / "mlruns").is_dir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri() == "http://127.0.0.1:5000"
    assert resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_artifacts_beside_the_embedded_store(tmp_path):
    assert default_artifact_root(f"sqlite:///{tmp_path}/mlruns/mlflow.db") == (tmp_path / "mlruns/artifacts").as_uri()
    assert default_artifact_root("http://host:5000") is None


def test_secrets_are_masked():
    assert mask_secrets("postgresql+psycopg://stx:s3cret@db:5432/mlflow") == "postgresql+psycopg://stx:***@db:5432/mlflow"
    assert mask_secrets("see http://u:p@h/x and https://a:b@c") == "see http://u:***@h/x and https://a:***@c"
    assert mask_secrets("sqlite:///mlruns/mlflow.db") == "sqlite:///mlruns/mlflow.db"


def test_unreachable_is_told_apart_from_refused(monkeypatch):
    import sqlalchemy.exc
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from tests.services import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    try:  # a real refused connection, as MLflow reports it
        MlflowClient(f"http://127.0.0.1:{free_port()}").get_run("0" * 32)
    except MlflowException as err:
        refused = err
    assert is_unreachable(refused)
    assert is_unreachable(sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("could not connect to server")))
    assert is_unreachable(TimeoutError())
    assert not is_unreachable(MlflowException("Run '123' not found", error_code="RESOURCE_DOES_NOT_EXIST"))
    assert not is_unreachable(PermissionError("denied"))
    assert describe_error(ValueError("bad\nsecond line")) == "ValueError: bad"
    assert describe_error(ConnectionError("to http://u:pw@host")) == "ConnectionError: to http://u:***@host"


@pytest.mark.parametrize(("url", "masked"), [
    ("postgresql://stx:p@ss@h/db", "postgresql://stx:***@h/db"),
    ("postgresql+psycopg://stx:pa/ss@db.example:5432/mlflow", "postgresql+psycopg://stx:***@db.example:5432/mlflow"),
    ("http://alice:p ss w@mlflow-host:5000", "http://alice:***@mlflow-host:5000"),
    ("http://alice:p%40ss@host/x", "http://alice:***@host/x"),
    ("postgresql://u:a:b:c@h", "postgresql://u:***@h"),
    ("two: http://u:x@h and postgresql://v:y@g/db", "two: http://u:***@h and postgresql://v:***@g/db"),
    ("sqlite:///mlruns/mlflow.db", "sqlite:///mlruns/mlflow.db"),
])
def test_passwords_are_masked_whatever_they_contain(url, masked):
    from stx.tracking.store import mask_secrets

    assert mask_secrets(url) == masked
    assert mask_secrets(f"error: store {url} is not reachable") == f"error: store {masked} is not reachable"


def test_processes_starting_together_do_not_trip_over_each_others_write_probe(tmp_path):
    """Four `stx run` started at once in a fresh folder all probe `mlruns/`: one process's
    probe must not be deleted by another (it was: one shared probe name)."""
    import multiprocessing

    folder = tmp_path / "mlruns"
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(4) as pool:
        pool.map(_probe_many, [folder] * 4)
    assert list(folder.iterdir()) == []  # no probe left behind


def _probe_many(folder):
    from stx.tracking.store import probe_writable

    for _ in range(300):
        probe_writable(folder)
