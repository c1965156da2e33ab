"""The outbox a run fills while the store is away, and `stx sync` replaying it."""

import json

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from stx.cli import cli
from stx.tracking.outbox import Outbox


@pytest.fixture
def held_run(tmp_path):
    """A RUNNING run with an outbox of every kind of operation but the registration."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("sync"))
    out = tmp_path / "stx_outputs" / run.info.run_id
    (out / "eval").mkdir(parents=True)
    (out / "eval" / "metrics.csv").write_text("a,b\n1,2\n")
    box = Outbox(out / "outbox.jsonl", run.info.run_id)
    box.add("metrics", rows=[["train/loss", 1.5, 7, 1000], ["train/loss", 1.25, 8, 1001]])
    box.add("artifact", path=str(out / "eval" / "metrics.csv"), artifact_path="eval")
    box.add("tags", tags={"stx.note": "held"})
    box.add("terminate", status="FINISHED")
    client.set_tag(run.info.run_id, "stx.sync_pending", str(box.path))
    return uri, client, run.info.run_id, out


def test_sync_sends_everything_in_order_and_finishes_the_run(held_run):
    uri, client, run_id, out = held_run
    result = CliRunner().invoke(cli, ["sync", str(out), "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert "Sent 4 held operations (2 metric values, 1 artifacts)" in result.output
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["stx.note"] == "held"
    assert "stx.sync_pending" not in run.data.tags
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")] == [(7, 1.5), (8, 1.25)]
    assert [a.path for a in client.list_artifacts(run_id, "eval")] == ["eval/metrics.csv"]
    assert not (out / "outbox.jsonl").exists() and (out / "outbox.jsonl.synced").exists()


def test_an_interrupted_sync_keeps_the_rest_and_resumes(held_run):
    uri, client, run_id, out = held_run
    (out / "eval" / "metrics.csv").rename(out / "eval" / "moved.csv")
    result = CliRunner().invoke(cli, ["sync", str(out / "outbox.jsonl"), "--tracking-uri", uri])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "metrics.csv is gone" in result.output
    left = [json.loads(line)["op"] for line in (out / "outbox.jsonl").read_text().splitlines()]
    assert left == ["artifact", "tags", "terminate"]  # the metrics landed and were dropped
    assert client.get_run(run_id).info.status == "RUNNING"  # not FINISHED while records are missing
    (out / "eval" / "moved.csv").rename(out / "eval" / "metrics.csv")
    result = CliRunner().invoke(cli, ["sync", str(out), "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert len(client.get_metric_history(run_id, "train/loss")) == 2  # sent once
    assert client.get_run(run_id).info.status == "FINISHED"


@pytest.mark.parametrize(("content", "message"), [
    ("not json\n", "not an outbox written by stx"),
    ('{"op": "explode", "run_id": "x"}\n', "line 1: not an outbox operation"),
    ("", "empty, nothing to send"),
])
def test_bad_outboxes_are_refused_in_one_line(tmp_path, content, message):
    path = tmp_path / "outbox.jsonl"
    path.write_text(content)
    result = CliRunner().invoke(cli, ["sync", str(path), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    assert result.exit_code == 2 and message in result.output and result.output.count("\n") == 1, result.output


def test_sync_of_a_run_from_another_store(held_run, tmp_path):
    _, _, _, out = held_run
    result = CliRunner().invoke(cli, ["sync", str(out), "--tracking-uri", f"sqlite:///{tmp_path}/other.db"])
    assert result.exit_code == 2 and "is not in the tracking store" in result.output
    result = CliRunner().invoke(cli, ["sync", str(tmp_path / "stx_outputs"), "--tracking-uri", "sqlite:///x.db"])
    assert result.exit_code == 2 and "no outbox.jsonl here" in result.output


def test_resume_refuses_a_run_waiting_for_sync(held_run, monkeypatch):
    uri, client, run_id, out = held_run
    client.set_tag(run_id, "stx.variant", "lora")
    client.set_tag(run_id, "stx.output_dir", str(out))
    result = CliRunner().invoke(cli, ["run", "--resume", run_id, "--tracking-uri", uri])
    assert result.exit_code == 2 and f"stx sync {out}" in result.output, result.output
