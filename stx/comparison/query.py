"""Read the runs to compare from MLflow: the registry (champion or newest version of each
`stx-<variant>` model) or every finished run of an experiment. Params come back as
strings and are cast here, in one place."""

from __future__ import annotations

import math
from dataclasses import dataclass

from stx.errors import StxError

PAGE = 1000
FLOAT_PARAMS = ("trainer.lr", "trainer.grad_clip", "model.velocity.lambda", "model.velocity.mu")
INT_PARAMS = ("model.lora.r", "trainer.max_steps", "trainer.seed", "n_trainable_params", "n_total_params")


@dataclass(frozen=True)
class RunRecord:
    """One run as the comparison needs it."""

    run_id: str
    variant: str
    experiment_id: str
    data_sha256: str
    metrics: dict[str, float]
    params: dict[str, object]
    tags: dict[str, str]
    artifact_uri: str
    model_version: str | None = None
    start_time: int = 0


def cast_params(params: dict[str, str]) -> dict[str, object]:
    """MLflow params are strings: numbers back to numbers, everything else kept."""
    out: dict[str, object] = dict(params)
    for key in FLOAT_PARAMS:
        if key in out:
            out[key] = float(out[key])
    for key in INT_PARAMS:
        if key in out:
            out[key] = int(float(out[key]))
    return out


def _record(run, version: str | None = None) -> RunRecord:  # noqa: ANN001 - mlflow Run
    tags = run.data.tags
    return RunRecord(
        run_id=run.info.run_id, variant=tags.get("stx.variant", "?"), experiment_id=run.info.experiment_id,
        data_sha256=tags.get("stx.data_sha256", ""), metrics=dict(run.data.metrics),
        params=cast_params(run.data.params), tags=dict(tags), artifact_uri=run.info.artifact_uri,
        model_version=version, start_time=int(run.info.start_time or 0),
    )


def registry_runs(client, experiment_ids: list[str] | None = None) -> list[RunRecord]:  # noqa: ANN001
    """For each `stx-*` model, the version `stx.tracking.registry.pick_version` picks: within an
    experiment (`experiment_ids`), only versions registered by that experiment's runs."""
    from stx.tracking.registry import pick_version

    records = []
    token = None
    scopes = experiment_ids or [None]
    while True:
        page = client.search_registered_models("name LIKE 'stx-%'", max_results=100, page_token=token)
        for model in page:
            if model.name == "stx-compare":
                continue
            for experiment_id in scopes:
                version = pick_version(client, model, experiment_id) or _untagged(client, model, experiment_id)
                if version is None:
                    continue
                run = client.get_run(version.run_id)
                if experiment_id is not None and run.info.experiment_id != experiment_id:
                    continue
                records.append(_record(run, version.version))
        token = page.token
        if not token:
            break
    return records


def _untagged(client, model, experiment_id: str | None):  # noqa: ANN001
    """Versions registered before stx tagged them: the newest whose run is in the experiment."""
    if experiment_id is None:
        return None
    versions = sorted(client.search_model_versions(f"name = '{model.name}'", max_results=1000),
                      key=lambda v: -int(v.version))
    for version in versions:
        if "stx.experiment_id" in (version.tags or {}):
            continue
        if client.get_run(version.run_id).info.experiment_id == experiment_id:
            return version
    return None


def experiment_runs(client, experiment_ids: list[str], trials: bool = False) -> list[RunRecord]:  # noqa: ANN001
    """Every FINISHED stx run of the experiments (paged search, one query per 1000 runs);
    sweep trials (tag `stx.parent`) only with `trials`."""
    records = []
    token = None
    while True:
        page = client.search_runs(experiment_ids, "attributes.status = 'FINISHED' and tags.`stx.variant` != ''",
                                  max_results=PAGE, page_token=token, order_by=["attributes.start_time DESC"])
        records += [_record(run) for run in page if trials or "stx.parent" not in run.data.tags]
        token = page.token
        if not token:
            break
    return records


def check_same_data(records: list[RunRecord], allow_mixed: bool) -> None:
    """Refuse to compare runs on different data unless told to."""
    digests = {r.data_sha256 for r in records}
    if len(digests) > 1 and not allow_mixed:
        by = {d[:12]: sorted({r.variant for r in records if r.data_sha256 == d}) for d in digests}
        shown = "; ".join(f"{d}: {', '.join(v)}" for d, v in by.items())
        raise StxError(f"the runs were trained on different data sets ({shown}); compare one data set at a time "
                       f"(--experiment) or pass --allow-mixed")


def finite(value: object) -> bool:
    """A metric value that can be shown."""
    return isinstance(value, int | float) and math.isfinite(value)
