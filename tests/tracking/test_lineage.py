"""What a run records of its configuration: only the sections its variant uses, and a config
digest that pools seeds but separates anything that changes what the run learns."""

from __future__ import annotations

from stx.config import load_config
from stx.experiment import config_digest
from stx.tracking.lineage import active_params
from stx.variants import resolve_variant


def test_a_baseline_logs_no_lora_mhc_or_velocity_params():
    params = active_params(load_config(None), resolve_variant("baseline"))
    assert not [k for k in params if k.startswith(("model.lora.", "model.mhc.", "model.velocity.", "sweep."))]
    assert "trainer.lr" in params and "data.embed_key" in params
    velocity = active_params(load_config(None), resolve_variant("velocity"))
    assert "model.velocity.lambda" in velocity and "model.lora.r" in velocity and "model.mhc.streams" not in velocity


def test_the_config_digest_follows_only_what_the_variant_uses():
    lora, baseline = resolve_variant("lora"), resolve_variant("baseline")
    base = load_config(None)
    rank8 = load_config(None, ["model.lora.r=8"])
    assert config_digest(base, lora) != config_digest(rank8, lora)
    assert config_digest(base, baseline) == config_digest(rank8, baseline)  # a baseline has no adapters
    reseeded = load_config(None, ["trainer.seed=7", "tracking.experiment=elsewhere"])
    assert config_digest(base, lora) == config_digest(reseeded, lora)  # seeds pool, where it logs is no setting
    assert config_digest(base, lora) != config_digest(load_config(None, ["trainer.lr=1e-3"]), lora)


def test_experiments_carry_the_view_grouped_by_variant(tmp_path):
    """The saved view `stx ui` opens (MLflow reads it from the experiment tag its URL names)."""
    import json

    from stx.tracking.run import connect, ensure_experiment
    from stx.tracking.views import VIEW_KEY, VIEW_TAG, share_variant_view, ui_url

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = connect(uri)
    created = client.get_experiment(ensure_experiment(client, "new", uri))
    view = json.loads(created.tags[VIEW_TAG])
    assert view["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "stx.variant"}]
    older = client.create_experiment("older")  # made before stx saved views
    share_variant_view(client, older)
    assert client.get_experiment(older).tags[VIEW_TAG] == created.tags[VIEW_TAG]
    url = ui_url("0.0.0.0", 5000, uri, "new")
    assert url.startswith(f"http://127.0.0.1:5000/#/experiments/{created.experiment_id}/runs?")
    assert f"viewStateShareKey={VIEW_KEY}" in url and "compareRunsMode=CHART" in url
