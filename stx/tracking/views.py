"""The MLflow UI opened on what stx is for: runs grouped by variant, held-out metrics as bars.

MLflow's experiment page loads a saved view from an experiment tag
`mlflow.sharedViewState.<key>` when its URL carries `viewStateShareKey=<key>` (the page's own
"Share" button writes the same tag). stx writes one view, `stx-variants`: runs grouped by the
`stx.variant` tag, charts drawn from the groups' averages. Every experiment stx creates gets
it, `stx ui` adds it to older ones, and `ui_url` points at it in chart mode.
"""

from __future__ import annotations

import json
from typing import Any

from stx.errors import StxError

VIEW_KEY = "stx-variants"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"


def variant_view() -> str:
    """The saved view (the JSON MLflow's page reads): grouped by stx.variant, averaged."""
    return json.dumps({
        "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": "stx.variant"}]},
        "useGroupedValuesInCharts": True,
        "groupsExpanded": {},
    })


def view_tags() -> dict[str, str]:
    """Experiment tags that save the view (given to `create_experiment`)."""
    return {VIEW_TAG: variant_view()}


def share_variant_view(client: Any, experiment_id: str) -> None:
    """Save the view on an existing experiment, unless it has it already."""
    experiment = client.get_experiment(experiment_id)
    if experiment.tags.get(VIEW_TAG) != variant_view():
        client.set_experiment_tag(experiment_id, VIEW_TAG, variant_view())


def ui_url(host: str, port: int, uri: str, experiment: str | None) -> str:
    """The UI's address on an experiment's chart view grouped by variant (MLflow 3 opens on its
    GenAI view without `workflowType=machine_learning`); the experiment list where the store
    has no such experiment yet."""
    where, query = "#/", ""
    try:
        from mlflow import MlflowClient

        client = MlflowClient(uri)
        found = client.get_experiment_by_name(experiment or "stx-demo")
        if found is not None:
            share_variant_view(client, found.experiment_id)
            where = f"#/experiments/{found.experiment_id}/runs"
            query = f"viewStateShareKey={VIEW_KEY}&compareRunsMode=CHART&"
        elif experiment:
            raise StxError(f"experiment '{experiment}' not found in this store")
    except StxError:
        raise
    except Exception:  # the store may not exist yet: open the experiment list
        pass
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{shown}:{port}/{where}?{query}workflowType=machine_learning"
