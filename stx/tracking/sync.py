"""`stx sync`: send a run's outbox to the tracking store, in order, one operation at a time."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stx.errors import StxError
from stx.tracking.outbox import Outbox
from stx.tracking.run import TrackedRun, connect
from stx.tracking.store import describe_error, is_unreachable, mask_secrets


@dataclass(frozen=True)
class SyncResult:
    """What one `stx sync` sent."""

    run_id: str
    sent: int
    metric_values: int
    artifacts: int
    registered: bool
    status: str
    archived: Path


def sync_outbox(where: Path, uri: str) -> SyncResult:
    """Replay the outbox at `where` into the run it belongs to on `uri`; raises StxError (the
    remaining operations stay in the outbox) when the store still does not take them."""
    import mlflow
    from mlflow.exceptions import MlflowException

    box = Outbox.find(where)
    ops = box.load()
    total = len(ops)
    client = connect(uri)
    try:
        run = client.get_run(box.run_id)
    except MlflowException:
        raise StxError(f"{box.path}: run {box.run_id} is not in the tracking store {mask_secrets(uri)}; pass the "
                       f"store the run was started on with --tracking-uri") from None
    handle = TrackedRun(client, box.run_id, run.info.experiment_id, uri,
                        client.get_experiment(run.info.experiment_id).name)
    counts = {"metrics": 0, "artifact": 0, "register": 0}
    status = run.info.status
    try:
        while ops:
            op = ops[0]
            _apply(handle, op)
            if op["op"] == "metrics":
                counts["metrics"] += len(op["rows"])
            elif op["op"] in counts:
                counts[op["op"]] += 1
            if op["op"] == "terminate":
                status = op["status"]
            ops.pop(0)
            box.rewrite(ops)
    except StxError:
        raise
    except Exception as err:
        what = describe_error(err)
        hint = "the store is still unreachable" if is_unreachable(err) else "the store refused it"
        raise StxError(f"{box.path}: '{ops[0]['op']}' could not be sent, {hint} ({what}); {len(ops)} operations "
                       f"remain there: run stx sync again") from None
    finally:
        active = mlflow.active_run()
        if active is not None and active.info.run_id == handle.run_id:
            mlflow.end_run(status)
    if "stx.sync_pending" in run.data.tags:  # set when the store answered but refused a record
        client.delete_tag(box.run_id, "stx.sync_pending")
    archived = box.path.with_name(box.path.name + ".synced")
    box.path.replace(archived)
    return SyncResult(box.run_id, total, counts["metrics"], counts["artifact"], counts["register"] > 0, status,
                      archived)


def _apply(handle: TrackedRun, op: dict) -> None:
    from stx.tracking.pyfunc import log_and_register

    kind = op["op"]
    if kind == "metrics":
        handle.send_rows([(k, float(v), int(s), int(ts)) for k, v, s, ts in op["rows"]])
    elif kind == "artifact":
        path = Path(op["path"])
        if not path.exists():
            raise StxError(f"held artifact {path} is gone; it cannot be uploaded (restore it, or delete its line from "
                           f"the outbox to skip it)")
        handle.log_artifact(path, op.get("artifact_path"))
    elif kind == "tags":
        handle.set_tags(op["tags"])
    elif kind == "register":
        package = Path(op["package"])
        if not package.exists():
            raise StxError(f"held model package {package} is gone; it cannot be registered")
        log_and_register(handle, package, op["name"], op.get("tags"), op.get("description"))
    elif kind == "terminate":
        handle.client.set_terminated(handle.run_id, op["status"])
