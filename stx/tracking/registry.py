"""The model registry, scoped to the data: which version of a shared `stx-<variant>` model
belongs to which experiment.

Registered model names are global in MLflow, experiments are not: with one name per
variant, `models:/stx-lora/latest` would point at whichever data set ran last. stx keeps
the names (so the registry stays browsable by variant) and tags every version with the
experiment, the data digest, the number of steps and a config digest; `stx compare
--experiment E` only ever takes versions tagged with E, and a sweep marks its best version
with the alias `champion-<experiment id>` (as well as the global `champion`). `stx run`
prints the exact `models:/NAME/VERSION` of the model it registered.
"""

from __future__ import annotations

import re

CHAMPION = "champion"


def champion_alias(experiment_id: str) -> str:
    """The per-experiment champion alias (aliases allow letters, digits, `_` and `-`)."""
    return f"{CHAMPION}-{re.sub(r'[^A-Za-z0-9_-]', '_', str(experiment_id))}"


def describe_version(client: object, name: str, version: str, tags: dict[str, str],
                     description: str | None) -> None:
    """Tag a new version and describe it (and the model, the first time)."""
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))
    if description:
        client.update_model_version(name, version, description=description)
        model = client.get_registered_model(name)
        if not model.description:
            variant = name.removeprefix("stx-")
            client.update_registered_model(name, description=f"stx {variant}: State Transition fine-tuned with the "
                                                             f"{variant} recipe. Each version is tagged with its "
                                                             f"experiment (stx.experiment) and data (stx.data_sha256).")


def versions_of_experiment(client: object, name: str, experiment_id: str) -> list:
    """The versions of model `name` registered by runs of one experiment."""
    return list(client.search_model_versions(f"name = '{name}' and tags.`stx.experiment_id` = '{experiment_id}'",
                                             max_results=1000))


def pick_version(client: object, model: object, experiment_id: str | None) -> object | None:
    """The per-experiment champion, else the newest version of that experiment; without an
    experiment, the global champion, else the newest version."""
    aliases = getattr(model, "aliases", {}) or {}
    if experiment_id is None:
        if CHAMPION in aliases:
            return client.get_model_version(model.name, aliases[CHAMPION])
        versions = client.search_model_versions(f"name = '{model.name}'", max_results=1000)
        return max(versions, key=lambda v: int(v.version), default=None)
    alias = champion_alias(experiment_id)
    if alias in aliases:
        return client.get_model_version(model.name, aliases[alias])
    return max(versions_of_experiment(client, model.name, experiment_id), key=lambda v: int(v.version), default=None)
