import torch

from stx.tracking.buffer import MetricBuffer
from stx.tracking.store import default_artifact_root, mask_secrets, resolve_tracking_uri


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


def test_buffer_flushes_in_one_batch_and_keeps_history():
    calls = []
    buffer = MetricBuffer(sink=calls.append)
    for step in range(5):
        buffer.add("train/loss", torch.tensor(float(step)), step)
        buffer.add("lr", 0.1, step)
    assert calls == []  # nothing leaves before a flush
    assert buffer.flush() == 10
    assert len(calls) == 1 and len(calls[0]) == 10
    assert buffer.values("train/loss") == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert buffer.flush() == 0 and len(calls) == 1


def test_an_outage_loses_no_metric_and_training_goes_on():
    state = {"down": True, "received": []}

    def sink(rows):
        if state["down"]:
            raise ConnectionError("connection refused")
        state["received"].extend(rows)

    buffer = MetricBuffer(sink=sink)
    for step in range(3):
        buffer.add("train/loss", torch.tensor(float(step)), step)
    assert buffer.flush() == 0  # no exception reaches the training loop
    buffer.add("train/loss", 3.0, 3)
    assert buffer.flush() == 0 and len(buffer.unsent) == 4
    state["down"] = False
    assert buffer.flush() == 4
    assert [r[2] for r in state["received"]] == [0, 1, 2, 3] and buffer.unsent == []


def test_what_never_got_through_is_spooled_and_synced(tmp_path):
    from click.testing import CliRunner
    from mlflow import MlflowClient

    from stx.cli import cli

    buffer = MetricBuffer(sink=lambda rows: (_ for _ in ()).throw(ConnectionError("down")))
    buffer.add("train/loss", 1.5, 7)
    buffer.flush()
    spool = tmp_path / "unsent_metrics.jsonl"
    assert buffer.spool(spool) == 1 and buffer.unsent == []
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("sync"))
    result = CliRunner().invoke(cli, ["sync", str(spool), "--run-id", run.info.run_id, "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss")] == [(7, 1.5)]
    assert not spool.exists() and spool.with_suffix(".synced").exists()
