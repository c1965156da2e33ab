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


def test_system_metrics_are_mlflows_own_and_can_be_switched_off(tmp_path, monkeypatch):
    import time

    from stx.tracking import run as run_module

    monkeypatch.setattr(run_module, "SYSTEM_METRICS_INTERVAL_S", 0.2)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with tracked_run(uri, "sys", "on", {}, {}, system_metrics=True) as on:
        time.sleep(1.5)
    with tracked_run(uri, "sys", "off", {}, {}, system_metrics=False) as off:
        time.sleep(0.5)
    client = MlflowClient(uri)
    assert any(k.startswith("system/cpu") for k in client.get_run(on.run_id).data.metrics)
    assert not [k for k in client.get_run(off.run_id).data.metrics if k.startswith("system/")]


def test_the_git_commit_of_the_configs_repository_is_recorded(tmp_path):
    import subprocess

    from stx.experiment import _git_commit

    assert _git_commit(tmp_path) is None  # not a repository: no tag rather than an error
    for cmd in (["git", "init", "-q"], ["git", "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q",
                                                "--allow-empty", "-m", "x"]):
        subprocess.run(cmd, cwd=tmp_path, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert _git_commit(tmp_path) == head and len(head) == 40
