"""TrackedRun: what happens to a record the store refuses."""

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from stx.cli import cli
from stx.errors import StxError
from stx.tracking.outbox import Outbox
from stx.tracking.run import tracked_run


def _refuse(*args, **kwargs):
    raise PermissionError("Access Denied for bucket stx-artifacts")


def test_a_refused_upload_is_held_and_the_run_does_not_claim_finished(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    artifact = tmp_path / "eval.csv"
    artifact.write_text("a\n1\n")
    monkeypatch.setattr(MlflowClient, "log_artifact", _refuse)
    with tracked_run(uri, "refused", "r", {}, {}) as run:
        run.outbox = Outbox(tmp_path / "out" / "outbox.jsonl", run.run_id)
        run.log_artifact(artifact, "eval", attempts=2)  # retried, then held with a warning
        run.log_metrics({"eval/x": 1.0})  # the store still answers: this goes straight in
    client = MlflowClient(uri)
    record = client.get_run(run.run_id)
    assert record.info.status == "RUNNING"  # an artifact is missing: not FINISHED yet
    assert record.data.tags["stx.sync_pending"] == str(run.outbox.path)
    assert record.data.metrics["eval/x"] == 1.0
    assert [op["op"] for op in run.outbox.load()] == ["artifact", "terminate"]

    monkeypatch.undo()  # permissions fixed
    result = CliRunner().invoke(cli, ["sync", str(tmp_path / "out"), "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    record = client.get_run(run.run_id)
    assert record.info.status == "FINISHED" and "stx.sync_pending" not in record.data.tags
    assert [a.path for a in client.list_artifacts(run.run_id, "eval")] == ["eval/eval.csv"]


def test_without_an_outbox_a_refused_upload_is_an_error_naming_the_file(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    artifact = tmp_path / "resolved.toml"
    artifact.write_text("")
    monkeypatch.setattr(MlflowClient, "log_artifact", _refuse)
    with pytest.raises(StxError, match=r"could not upload resolved.toml .* after 2 attempts \(PermissionError: Access"):
        with tracked_run(uri, "refused", "r", {}, {}) as run:
            run.log_artifact(artifact, attempts=2)
    assert MlflowClient(uri).get_run(run.run_id).info.status == "FAILED"
