import pytest

from stx.config import SweepParam, load_config
from stx.errors import ConfigError
from stx.sweeps.space import as_overrides, search_space
from stx.variants import resolve_variant


def test_default_space_and_velocity_lambda():
    lora = search_space(resolve_variant("lora"), {}, {})
    assert set(lora) == {"model.lora.r", "trainer.lr"}
    assert lora["model.lora.r"].choices == (4, 8, 16, 32, 64)
    assert lora["trainer.lr"].low == 2e-4 and lora["trainer.lr"].high == 1e-2 and lora["trainer.lr"].log
    velocity = search_space(resolve_variant("velocity"), {}, {})
    assert velocity["model.velocity.lambda"].low == 1e-3 and velocity["model.velocity.lambda"].log


def test_config_params_extend_and_fixed_removes():
    space = search_space(resolve_variant("lora"), {"model.lora.alpha": SweepParam(type="float", low=8, high=64)},
                         {"trainer.lr": 1e-4})
    assert set(space) == {"model.lora.r", "model.lora.alpha"}


def test_overrides_are_toml_values():
    assert as_overrides({"model.lora.r": 8, "trainer.lr": 1e-4, "model.mhc.dynamic": True,
                         "model.mhc.projection": "birkhoff"}) == [
        "model.lora.r=8", "trainer.lr=0.0001", "model.mhc.dynamic=true", 'model.mhc.projection="birkhoff"']


@pytest.mark.parametrize(("toml", "message"), [
    ('[sweep.params."model.lora.rank"]\ntype = "int"\nlow = 1\nhigh = 4', "sweep key 'model.lora.rank' is not a config key"),
    ('[sweep.params."model.lora.r"]\ntype = "int"\nlow = 8\nhigh = 4', "needs low < high"),
    ('[sweep.params."model.lora.r"]\ntype = "categorical"', "needs choices"),
    ('[sweep.params."trainer.lr"]\ntype = "float"\nlow = 0\nhigh = 1\nlog = true', "needs low > 0"),
    ('[sweep]\nobjective = "accuracy"', "sweep.objective 'accuracy' is not a metric stx logs"),
])
def test_sweep_table_validation(tmp_path, toml, message):
    path = tmp_path / "c.toml"
    path.write_text('[datasets]\nd = "x.h5ad"\n' + toml)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_direction_follows_the_objective():
    assert load_config().sweep.resolved_direction() == "minimize"
    assert load_config(None, ['sweep.objective="eval/direction_cos"']).sweep.resolved_direction() == "maximize"
    assert load_config(None, ['sweep.objective="eval/energy_ratio"']).sweep.resolved_direction() == "minimize"
