"""One MLflow run, opened and closed at the edge of the program.

`tracked_run()` creates the run with its name and tags, logs the params once, and always
ends it: FINISHED on success, FAILED (with the error logged) on an exception, KILLED on
Ctrl-C or SIGTERM. Training code never talks to MLflow; it fills a MetricBuffer whose sink
is `TrackedRun.log_rows` (batched `log_batch` calls).
"""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from stx.errors import StxError
from stx.tracking.store import default_artifact_root, mask_secrets

log = logging.getLogger(__name__)

MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_LENGTH = 6000


class RunPruned(Exception):
    """Raised inside a run that a sweep's pruner stopped: the run ends KILLED, tagged PRUNED."""


@dataclass
class TrackedRun:
    """Handle of an open run: ids, and batched logging."""

    client: object
    run_id: str
    experiment_id: str
    tracking_uri: str

    def log_rows(self, rows: list[tuple[str, float, int, int]]) -> None:
        """Metrics as (key, value, step, timestamp ms), sent in as few calls as allowed."""
        from mlflow.entities import Metric

        metrics = [Metric(k, v, ts, s) for k, v, s, ts in rows]
        for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + MAX_METRICS_PER_BATCH])

    def log_metrics(self, values: dict[str, float], step: int = 0) -> None:
        """A few metrics at one step, in one call."""
        import time

        now = int(time.time() * 1000)
        self.log_rows([(k, float(v), step, now) for k, v in values.items()])

    def log_params(self, params: dict[str, str]) -> None:
        """Params in batches of 100; values are masked and truncated to MLflow's limit."""
        from mlflow.entities import Param

        items = [Param(k, mask_secrets(str(v))[:MAX_PARAM_LENGTH]) for k, v in params.items()]
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[i:i + MAX_PARAMS_PER_BATCH])

    def set_tags(self, tags: dict[str, str]) -> None:
        """Tags in one call."""
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, mask_secrets(str(v))) for k, v in tags.items()])

    def log_artifact(self, path: Path, artifact_path: str | None = None, attempts: int = 4) -> None:
        """Upload one file or directory; retried with backoff, never silently dropped."""
        import time

        for attempt in range(1, attempts + 1):
            try:
                if path.is_dir():
                    self.client.log_artifacts(self.run_id, str(path), artifact_path)
                else:
                    self.client.log_artifact(self.run_id, str(path), artifact_path)
                return
            except Exception as err:
                if attempt == attempts:
                    raise StxError(f"could not upload {path.name} to {mask_secrets(self.artifact_uri())} after "
                                   f"{attempts} attempts ({err.__class__.__name__}: {mask_secrets(str(err))[:200]}); "
                                   f"the local copy is in {path.parent}") from None
                log.warning("upload of %s failed (%s); retrying", path.name, err.__class__.__name__)
                time.sleep(0.5 * 2 ** attempt)

    def artifact_uri(self) -> str:
        """Where this run's artifacts live."""
        return self.client.get_run(self.run_id).info.artifact_uri


def ensure_experiment(client: object, name: str, uri: str) -> str:
    """The id of experiment `name`, created on first use (race-safe)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_experiment_artifacts(uri, name))
    except MlflowException:
        found = client.get_experiment_by_name(name)  # another process created it meanwhile
        if found is None:
            raise
        return found.experiment_id


def _experiment_artifacts(uri: str, name: str) -> str | None:
    root = default_artifact_root(uri)
    return f"{root}/{name}" if root else None


def _probe(uri: str) -> None:
    """Fail in seconds when a store is down (MLflow itself retries for minutes)."""
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10)
        except urllib.error.HTTPError:
            pass  # it answers (auth or routing decide the rest)
        except OSError as err:
            raise ConnectionError(str(getattr(err, "reason", err))) from None
    elif "://" in uri and not uri.startswith(("sqlite:", "file:", "databricks")):
        import sqlalchemy

        engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": 10})
        try:
            with engine.connect():
                pass
        finally:
            engine.dispose()


def connect(uri: str) -> object:
    """An MlflowClient for `uri`, with a one-line error when the store cannot be reached."""
    import mlflow
    from mlflow import MlflowClient

    try:
        _probe(uri)
        # the fluent API (model logging) must agree with the client, and the registry lives in the
        # same store: never a registry URI left over from an earlier call in this process.
        # MLflow also exports the URI to MLFLOW_TRACKING_URI; undo that, or the next command in
        # this process would take it for the user's choice (precedence: flag > env > default).
        previous = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.search_experiments(max_results=1)
    except Exception as err:
        first = mask_secrets(str(err)).splitlines()[0][:160] if str(err) else ""
        raise StxError(f"tracking store {mask_secrets(uri)} is not reachable ({err.__class__.__name__}: {first}); "
                       f"check --tracking-uri / MLFLOW_TRACKING_URI") from None
    return client


@contextmanager
def tracked_run(uri: str, experiment: str, run_name: str, tags: dict[str, str],
                params: dict[str, str], parent_run_id: str | None = None,
                existing_run_id: str | None = None) -> Iterator[TrackedRun]:
    """Open a run (nested under `parent_run_id` if given; or reopen `existing_run_id` to
    resume it), yield its handle, and end it with the right status whatever happens."""
    import mlflow

    client = connect(uri)
    if existing_run_id:
        run = client.get_run(existing_run_id)
        client.update_run(existing_run_id, status="RUNNING")
        experiment_id = run.info.experiment_id
    else:
        experiment_id = ensure_experiment(client, experiment, uri)
        if parent_run_id:
            tags = {**tags, "mlflow.parentRunId": parent_run_id, "stx.parent": parent_run_id}
        run = client.create_run(experiment_id, run_name=run_name,
                                tags={k: mask_secrets(v) for k, v in tags.items()})
    handle = TrackedRun(client, run.info.run_id, experiment_id, uri)
    status = "FAILED"
    try:
        if params:
            handle.log_params(params)
        yield handle
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        _record_error(handle, "interrupted by the user (Ctrl-C or SIGTERM)")
        raise
    except RunPruned as err:
        status = "KILLED"
        handle.set_tags({"stx.trial_state": "PRUNED", "stx.pruned": str(err)})
        raise
    except BaseException as err:
        _record_error(handle, f"{err.__class__.__name__}: {err}", traceback.format_exc())
        raise
    finally:
        if mlflow.active_run() is not None and mlflow.active_run().info.run_id == handle.run_id:
            mlflow.end_run(status)
        client.set_terminated(handle.run_id, status)


def _record_error(handle: TrackedRun, message: str, trace: str | None = None) -> None:
    try:
        handle.set_tags({"stx.error": mask_secrets(message)[:5000]})
        if trace:
            handle.client.log_text(handle.run_id, mask_secrets(trace), "error/traceback.txt")
    except Exception:  # the store itself may be what failed; the status update still follows
        log.debug("could not record the error on run %s", handle.run_id, exc_info=True)
