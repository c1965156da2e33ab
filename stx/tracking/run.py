"""One MLflow run, opened and closed at the edge of the program.

`tracked_run()` creates the run with its name and tags, logs the params once, and always
ends it: FINISHED on success, FAILED (with the error logged) on an exception, KILLED on
Ctrl-C or SIGTERM. Training code never talks to MLflow; it fills a MetricBuffer whose sink
is `TrackedRun.send_rows` (batched `log_batch` calls).

Once a run has an outbox (its output folder exists), an unreachable store no longer fails
it: records go to the outbox in order, the final status last, for `stx sync`; the run
stays RUNNING in the store until then rather than claim FINISHED over missing records.
"""

from __future__ import annotations

import logging
import os
import re
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from stx.errors import StxError
from stx.tracking.outbox import Outbox
from stx.tracking.store import default_artifact_root, describe_error, is_unreachable, mask_secrets

log = logging.getLogger(__name__)

MAX_METRICS_PER_BATCH = 1000
EXPERIMENT_DESCRIPTION = ("stx runs: State Transition variants fine-tuned on one data set. Compare them on held-out "
                          "metrics at step 0 (eval/*, bars per run or grouped by the tag stx.variant), with the "
                          "references ref/*; `stx compare --experiment` writes the tables with intervals.")
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_LENGTH = 6000


class RunPruned(Exception):
    """Raised inside a run that a sweep's pruner stopped: the run ends KILLED, tagged PRUNED."""


@dataclass
class TrackedRun:
    """Handle of an open run: ids, batched logging, and the outbox that holds what the store
    could not take (once `outbox` is set, an unreachable store no longer fails the run)."""

    client: object
    run_id: str
    experiment_id: str
    tracking_uri: str
    experiment_name: str  # read while the store answers, so nothing after training needs it to
    outbox: Outbox | None = None
    offline: str | None = None  # why the store is treated as unreachable for the rest of the run

    def send_rows(self, rows: list[tuple[str, float, int, int]]) -> None:
        """Metrics as (key, value, step, timestamp ms), sent in as few calls as allowed; raises
        when the store does not take them (a MetricBuffer keeps and resends them)."""
        from mlflow.entities import Metric

        metrics = [Metric(k, v, ts, s) for k, v, s, ts in rows]
        for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + MAX_METRICS_PER_BATCH])

    def log_rows(self, rows: list[tuple[str, float, int, int]]) -> None:
        """Like `send_rows`, but held in the outbox when the store is unreachable."""
        if rows:
            self._deliver("metrics", lambda: self.send_rows(rows), rows=[list(r) for r in rows])

    def log_metrics(self, values: dict[str, float], step: int = 0) -> None:
        """A few metrics at one step, in one call."""
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

        tags = {k: mask_secrets(str(v)) for k, v in tags.items()}
        self._deliver("tags", lambda: self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()]),
                      tags=tags)

    def log_artifact(self, path: Path, artifact_path: str | None = None, attempts: int = 4) -> None:
        """Upload one file or directory; retried with backoff, never silently dropped: after the
        last attempt it is held in the outbox (with a warning) or, without one, an error."""
        path = path.resolve()
        if self.offline is None:
            error = self._upload_with_retries(path, artifact_path, attempts)
            if error is None:
                return
            if self.offline is None:  # the store answers but did not take the file
                if self.outbox is None:
                    raise StxError(f"could not upload {path.name} to the run's artifact store after {attempts} "
                                   f"attempts ({error}); the local copy is in {path.parent}")
                log.warning("could not upload %s after %d attempts (%s); it is held for 'stx sync'",
                            path, attempts, error)
        self.outbox.add("artifact", path=str(path), artifact_path=artifact_path)

    def log_images(self, paths: list[Path]) -> None:
        """Figures as MLflow images (key = file stem, step 0), so the UI's image comparison
        shows them side by side across runs. Best effort: the same files are artifacts too."""
        if self.offline is not None:
            return
        from PIL import Image

        for path in paths:
            try:
                with Image.open(path) as image:
                    self.client.log_image(self.run_id, image.convert("RGB"), key=path.stem, step=0)
            except Exception as err:
                log.debug("image %s not logged (%s)", path.name, describe_error(err))

    def register_model(self, package: Path, name: str, tags: dict[str, str] | None = None,
                       description: str | None = None) -> str | None:
        """Log the inference package as a pyfunc model and register it as `name` (version tags
        and description included); the version, or None when it is held for `stx sync`."""
        from stx.tracking.pyfunc import log_and_register

        result: list[str | None] = []
        self._deliver("register", lambda: result.append(log_and_register(self, package, name, tags, description)),
                      package=str(package.resolve()), name=name, tags=tags or {}, description=description)
        return result[0] if result else None

    def artifact_uri(self) -> str:
        """Where this run's artifacts live (its local output folder while the store is away)."""
        if self.offline is not None and self.outbox is not None:
            return self.outbox.path.parent.as_uri()
        return self.client.get_run(self.run_id).info.artifact_uri

    def go_offline(self, reason: str) -> None:
        """Treat the store as unreachable for the rest of the run: everything goes to the outbox."""
        if self.offline is None:
            self.offline = reason
            where = self.outbox.path if self.outbox is not None else "memory"
            log.warning("tracking store %s unreachable (%s): the run finishes locally and holds its records in %s",
                        mask_secrets(self.tracking_uri), reason, where)

    def hold(self, rows: list[tuple[str, float, int, int]]) -> None:
        """Metric rows the store never accepted, into the outbox."""
        if rows:
            self.outbox.add("metrics", rows=[list(r) for r in rows])

    @property
    def pending(self) -> int:
        """Operations waiting in the outbox."""
        return self.outbox.count() if self.outbox is not None else 0

    def _upload_with_retries(self, path: Path, artifact_path: str | None, attempts: int) -> str | None:
        """None once uploaded, else what went wrong (the run goes offline when the store is away)."""
        for attempt in range(1, attempts + 1):
            try:
                if path.is_dir():
                    self.client.log_artifacts(self.run_id, str(path), artifact_path)
                else:
                    self.client.log_artifact(self.run_id, str(path), artifact_path)
                return None
            except Exception as err:
                error = describe_error(err, 200)
                if is_unreachable(err) and self.outbox is not None:
                    self.go_offline(error)
                    return error
                if attempt == attempts:
                    return error
                log.warning("upload of %s failed (%s); retrying", path.name, err.__class__.__name__)
                time.sleep(0.5 * 2 ** attempt)
        return None

    def _deliver(self, op: str, call: Callable[[], object], **fields: object) -> None:
        if self.offline is None:
            try:
                call()
                return
            except Exception as err:
                if self.outbox is None or not is_unreachable(err):
                    raise
                self.go_offline(describe_error(err))
        self.outbox.add(op, **fields)


def ensure_experiment(client: object, name: str, uri: str) -> str:
    """The id of experiment `name`, created on first use (race-safe)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        return found.experiment_id
    try:
        from stx.tracking.views import view_tags

        return client.create_experiment(name, artifact_location=_experiment_artifacts(uri, name),
                                        tags={"mlflow.note.content": EXPERIMENT_DESCRIPTION, **view_tags()})
    except MlflowException:
        found = client.get_experiment_by_name(name)  # another process created it meanwhile
        if found is None:
            raise
        return found.experiment_id


def _experiment_artifacts(uri: str, name: str) -> str | None:
    root = default_artifact_root(uri)
    # the name becomes one folder below the root: never "..", never a path of its own
    folder = re.sub(r"[^A-Za-z0-9_-]", "_", name) or "_"
    return f"{root}/{folder}" if root else None


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


def first_use_lock(uri: str) -> AbstractContextManager:
    """An inter-process lock on an embedded sqlite store while MLflow creates its tables.

    MLflow creates and migrates the schema on first use without a lock: several `stx run`
    processes starting at once on a fresh `mlruns/` would all run the migrations and fail
    ("table runs already exists"). Servers and PostgreSQL stores need no lock here.
    """
    if not uri.startswith("sqlite:///"):
        return nullcontext()
    from filelock import FileLock

    db = Path(uri.removeprefix("sqlite:///").split("?")[0])
    db.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(db) + ".lock", timeout=300)


def connect(uri: str) -> object:
    """An MlflowClient for `uri`, with a one-line error when the store cannot be reached."""
    import mlflow
    from mlflow import MlflowClient

    if uri.startswith(("http://", "https://")):
        for key, value in HTTP_RETRY_DEFAULTS.items():
            os.environ.setdefault(key, value)
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
        with first_use_lock(uri):  # the first client creates and migrates the tables
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            client.search_experiments(max_results=1)
    except Exception as err:
        raise StxError(f"tracking store {mask_secrets(uri)} is not reachable ({describe_error(err)}); "
                       f"check --tracking-uri / MLFLOW_TRACKING_URI") from None
    return client


# MLflow retries a failed HTTP call 7 times over ~4 minutes. stx holds and resends what a
# server does not take (MetricBuffer, the outbox, retried uploads), so a short MLflow retry
# lets it notice an outage in seconds; an explicit MLFLOW_HTTP_REQUEST_* setting wins.
HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


@contextmanager
def tracked_run(uri: str, experiment: str, run_name: str, tags: dict[str, str],
                params: dict[str, str], parent_run_id: str | None = None,
                existing_run_id: str | None = None, system_metrics: bool = False) -> Iterator[TrackedRun]:
    """Open a run (nested under `parent_run_id` if given; or reopen `existing_run_id` to
    resume it), yield its handle, and end it with the right status whatever happens.

    `system_metrics` starts MLflow's own system-metrics monitor for the run (a background
    thread sampling CPU, memory and GPU every 10 s: never on the training step's path)."""

    client = connect(uri)
    if existing_run_id:
        run = client.get_run(existing_run_id)
        client.update_run(existing_run_id, status="RUNNING")
        experiment_id = run.info.experiment_id
        experiment = experiment or client.get_experiment(experiment_id).name
    else:
        experiment_id = ensure_experiment(client, experiment, uri)
        if parent_run_id:
            tags = {**tags, "mlflow.parentRunId": parent_run_id, "stx.parent": parent_run_id}
        run = client.create_run(experiment_id, run_name=run_name,
                                tags={k: mask_secrets(v) for k, v in tags.items()})
    handle = TrackedRun(client, run.info.run_id, experiment_id, uri, experiment)
    monitor = _system_metrics(handle.run_id) if system_metrics else None
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
        if monitor is not None:
            _stop_quietly(monitor)
        _terminate(handle, status)


SYSTEM_METRICS_INTERVAL_S = 10.0  # MLflow's system/* metrics: one sample (CPU, memory, GPU) per interval


def _system_metrics(run_id: str) -> object | None:
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S, samples_before_logging=1)
        monitor.start()
        return monitor
    except Exception:  # a missing optional dependency must not stop a run
        log.debug("system metrics unavailable", exc_info=True)
        return None


def _stop_quietly(monitor: object) -> None:
    try:
        monitor.finish()
    except Exception:
        log.debug("could not stop the system-metrics monitor", exc_info=True)


def _terminate(handle: TrackedRun, status: str) -> None:
    """Set the final status, or hold it when anything else is still held: a run whose records
    are incomplete in the store must not say FINISHED there; `stx sync` sets it last."""
    import mlflow

    active = mlflow.active_run()
    if active is not None and active.info.run_id == handle.run_id:
        # the fluent run is popped before MLflow contacts the store, so this cannot leave it behind
        try:
            mlflow.end_run("RUNNING" if handle.pending or handle.offline else status)
        except Exception:
            log.debug("could not end the fluent run %s", handle.run_id, exc_info=True)
    if not handle.pending and handle.offline is None:
        try:
            handle.client.set_terminated(handle.run_id, status)
            return
        except Exception as err:
            if handle.outbox is None or not is_unreachable(err):
                raise
            handle.go_offline(describe_error(err))
    handle.outbox.add("terminate", status=status)
    if handle.offline is None:  # the store answers, but some records could not be written
        handle.set_tags({"stx.sync_pending": str(handle.outbox.path)})


def _record_error(handle: TrackedRun, message: str, trace: str | None = None) -> None:
    try:
        handle.set_tags({"stx.error": mask_secrets(message)[:5000]})
        if trace:
            handle.client.log_text(handle.run_id, mask_secrets(trace), "error/traceback.txt")
    except Exception:  # the store itself may be what failed; the status update still follows
        log.debug("could not record the error on run %s", handle.run_id, exc_info=True)
