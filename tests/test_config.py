from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from stx.config import (
    Config,
    apply_override,
    default_config_text,
    flatten,
    load_config,
    to_toml,
    valid_keys,
)
from stx.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_embedded_default_loads_with_defaults():
    cfg = load_config()
    assert cfg.datasets == {"demo": "builtin:demo"}
    assert cfg.model.checkpoint == "stx-mini"
    assert cfg.model.lora.r == 16 and cfg.model.lora.alpha == 32
    assert cfg.model.mhc.sinkhorn_iters == 10
    assert cfg.model.velocity.lambda_ == 0.1
    assert cfg.source == "<embedded default>"
    assert cfg.experiment_name() == "stx-demo"


def test_experiments_demo_config_is_the_embedded_default():
    shipped = tomllib.loads(default_config_text())
    repo = tomllib.loads((REPO / "experiments/demo/config.toml").read_text())
    assert shipped == repo


@pytest.mark.parametrize("name", ["config.toml", "gene.toml"])
def test_burn_sham_configs_mirror_the_study(name):
    cfg = load_config(REPO / "experiments/burn_sham" / name)
    assert cfg.data.pert_col == "condition" and cfg.data.control_pert == "Sham"
    assert cfg.data.cell_type_key == "cell_types_simple_short" and cfg.data.batch_col == "mouse_id"
    assert (cfg.model.lora.r, cfg.model.lora.alpha, cfg.model.mhc.sinkhorn_iters) == (16, 32, 10)
    assert (cfg.model.velocity.lambda_, cfg.model.velocity.beta, cfg.model.velocity.warmup_steps) == (0.1, 1.0, 1000)
    assert (cfg.trainer.max_steps, cfg.trainer.lr, cfg.trainer.batch_size) == (10000, 5e-5, 8)
    assert cfg.data.embed_key == ("X_state_2000" if name == "config.toml" else "X")
    # data paths resolve relative to the config file
    assert Path(cfg.datasets["burn_sham"]).parent == REPO / "experiments/burn_sham/data"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[datasets]\na='x.h5ad'\n[model.lora]\nrank = 8", "unknown key 'model.lora.rank' (did you mean 'model.lora.r'?)"),
        ("[datasets]\na='x.h5ad'\n[trainer]\nlearning_rate = 1e-3", "unknown key 'trainer.learning_rate' (did you mean 'trainer.lr'?)"),
        ("[datasets]\na='x.h5ad'\n[trainr]\nlr = 1", "unknown key 'trainr' (did you mean 'trainer'?)"),
        ("[datasets]\na='x.h5ad'\n[trainer]\nlr = 'fast'", "trainer.lr: Input should be a valid number"),
        ("[datasets]\na='x.h5ad'\n[trainer]\nmax_steps = -5", "trainer.max_steps: Input should be greater than 0"),
        ("[datasets]\na='x.h5ad'\n[trainer]\nbatch_size = 0", "trainer.batch_size: Input should be greater than 0"),
        ("[datasets]\na='x.h5ad'\n[model.mhc]\nprojection = 'exact'", "model.mhc.projection: Input should be 'sinkhorn' or 'birkhoff'"),
        ("[datasets]\na='x.h5ad'\n[model.mhc]\nprojection = 'birkhoff'\nstreams = 6", "birkhoff' needs model.mhc.streams <= 4"),
        ("[datasets]\na='x.h5ad'\n[training]\nb = 'train'", "training.b names no data set in [datasets]"),
        ("[datasets]\na='x.h5ad'\n[training]\na = 'test'", "marks every data set 'test'"),
        ("[datasets]\na='x.h5ad'\n[training]\na = 'holdout'", "training.a: Input should be 'train' or 'test'"),
        ("[data]\nembed_key='X'", "missing required key 'datasets'"),
        ("[datasets\na='x'", "not valid TOML"),
    ],
)
def test_config_errors_are_one_clear_line(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_overrides_coerce_types_and_apply_before_validation():
    cfg = load_config(None, ["model.lora.r=8", "trainer.lr=1e-3", "data.embed_key=X_pca",
                             "model.mhc.dynamic=true", "model.velocity.lambda=0.5",
                             'model.lora.target_modules=["q_proj"]'])
    assert cfg.model.lora.r == 8 and isinstance(cfg.model.lora.r, int)
    assert cfg.trainer.lr == 1e-3
    assert cfg.data.embed_key == "X_pca"
    assert cfg.model.mhc.dynamic is True
    assert cfg.model.velocity.lambda_ == 0.5
    assert cfg.model.lora.target_modules == ("q_proj",)


@pytest.mark.parametrize(
    ("item", "message"),
    [("model.lora.r", "expected key=value"), ("+trainer.lr=1", "no '+' prefix needed"),
     ("model..r=3", "expected key=value"), ("model.lora.rank=3", "did you mean 'model.lora.r'")],
)
def test_bad_overrides(item, message):
    with pytest.raises(ConfigError, match=message.replace("+", r"\+")):
        load_config(None, [item])


def test_override_into_a_value_is_an_error():
    raw = {"trainer": {"lr": 1.0}}
    with pytest.raises(ConfigError, match="'lr' is a value"):
        apply_override(raw, "trainer.lr.x=1")


def test_paths_resolve_relative_to_the_config_file(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "c.toml"
    path.write_text("[datasets]\na = 'data/x.h5ad'\nb = '/abs/y.h5ad'\n[model]\ncheckpoint = 'ckpt/run'")
    cfg = load_config(path)
    assert cfg.datasets["a"] == str(tmp_path / "sub/data/x.h5ad")
    assert cfg.datasets["b"] == "/abs/y.h5ad"
    assert cfg.model.checkpoint == str(tmp_path / "sub/ckpt/run")
    assert cfg.experiment_name() == "sub"


def test_empty_string_switches_optional_columns_off():
    cfg = load_config(None, ['data.time_col=""', 'data.batch_col=""'])
    assert cfg.data.time_col is None and cfg.data.batch_col is None


def test_flatten_and_toml_round_trip():
    cfg = load_config(None, ["model.lora.r=4"])
    flat = flatten(cfg)
    assert flat["model.lora.r"] == "4"
    assert flat["model.velocity.lambda"] == "0.1"
    assert flat["model.lora.target_modules"] == "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    assert "data.time_col" in flat
    again = Config.model_validate(tomllib.loads(to_toml(cfg)))
    assert again == cfg


def test_valid_keys_lists_every_leaf():
    keys = valid_keys()
    for key in ("model.lora.r", "model.velocity.lambda", "trainer.cell_set_len", "data.split"):
        assert key in keys


def test_docs_list_every_key_with_its_default():
    from stx.config import keys_markdown

    text = (REPO / "docs/configuration.md").read_text()
    missing = [row for row in keys_markdown() if row not in text]
    assert missing == [], "regenerate the table in docs/configuration.md from stx.config.keys_markdown()"


def test_sweeps_optimise_the_energy_term_alone_by_default():
    """val/loss includes the velocity term (scaled by the lambda a sweep searches); the default
    objective must be comparable across lambdas and variants."""
    cfg = load_config(None)
    assert cfg.sweep.objective == "val/energy_loss" and cfg.sweep.resolved_direction() == "minimize"
