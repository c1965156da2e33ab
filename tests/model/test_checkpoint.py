from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from stx.data.load import DataSpec
from stx.errors import StxError
from stx.model.adapt import adapt_to_data
from stx.model.checkpoint import checkpoint_dir, load_pretrained, write_run_dir
from tests.model.test_st import batch, tiny


def test_run_dir_round_trip_reproduces_outputs(tmp_path):
    model = tiny()
    write_run_dir(model, tmp_path / "run", control_pert="ctrl", embed_key="X_state")
    for name in ("config.yaml", "var_dims.pkl", "pert_onehot_map.pt", "checkpoints/final.ckpt"):
        assert (tmp_path / "run" / name).is_file()
    loaded = load_pretrained(str(tmp_path / "run"))
    assert loaded.spec == model.spec and loaded.control_pert == "ctrl"
    torch.testing.assert_close(loaded.model.eval()(batch()), model(batch()), atol=1e-6, rtol=0)


def test_arc_state_style_checkpoint_gets_its_relu_and_a_warning(tmp_path, caplog):
    model = tiny()
    run = write_run_dir(model, tmp_path / "run", control_pert="ctrl", embed_key="X_state")
    ckpt = torch.load(run / "checkpoints/final.ckpt", weights_only=False)
    del ckpt["hyper_parameters"]["stx_output_relu"]  # as arc-state writes it
    torch.save(ckpt, run / "checkpoints/final.ckpt")
    with caplog.at_level(logging.WARNING, logger="stx"):
        loaded = load_pretrained(str(run))
    assert loaded.spec.output_relu
    assert "clips predictions with a ReLU" in caplog.text
    assert (loaded.model.eval()(batch()) >= 0).all()


def test_shipped_stx_mini_loads():
    loaded = load_pretrained("stx-mini")
    assert checkpoint_dir("stx-mini").is_dir()
    assert loaded.spec.input_dim == 64 and loaded.control_pert == "DMSO_TF"
    assert not loaded.spec.output_relu
    assert len(loaded.spec.pert_names) == 13


@pytest.mark.parametrize(("remove", "message"), [
    ("checkpoints/final.ckpt", "no checkpoints/final.ckpt or checkpoints/last.ckpt"),
    ("pert_onehot_map.pt", "pert_onehot_map.pt missing"),
])
def test_incomplete_run_dirs(tmp_path, remove, message):
    run = write_run_dir(tiny(), tmp_path / "run", control_pert="ctrl", embed_key="X_state")
    (run / remove).unlink()
    with pytest.raises(StxError, match=message):
        load_pretrained(str(run))


def test_missing_dir(tmp_path):
    with pytest.raises(StxError, match="checkpoint directory not found"):
        load_pretrained(str(tmp_path / "nope"))


def test_weight_shape_mismatch(tmp_path):
    run = write_run_dir(tiny(), tmp_path / "run", control_pert="ctrl", embed_key="X_state")
    ckpt = torch.load(run / "checkpoints/final.ckpt", weights_only=False)
    ckpt["state_dict"]["project_out.0.weight"] = torch.zeros(3, 3)
    torch.save(ckpt, run / "checkpoints/final.ckpt")
    with pytest.raises(StxError, match="project_out.0.weight has shape"):
        load_pretrained(str(run))


def _data_spec(dim=12, perts=("Sham", "Burn", "a")):
    return DataSpec(embed_key="X_state", embed_dim=dim, perts=perts, control_index=0, cell_types=("t",),
                    batches=("m1",), days=("all",), has_time=False, datasets=("d",))


def test_adapt_keeps_weights_and_maps_the_control(tmp_path):
    pretrained = load_pretrained(str(write_run_dir(tiny(), tmp_path / "run", control_pert="ctrl",
                                                   embed_key="X_state")))
    adapted = adapt_to_data(pretrained, _data_spec())
    assert adapted.spec.pert_names == ("Sham", "Burn", "a")
    old = pretrained.model.pert_encoder[0].weight
    new = adapted.pert_encoder[0].weight
    torch.testing.assert_close(new[:, 0], old[:, 0])  # Sham <- the checkpoint's control
    torch.testing.assert_close(new[:, 2], old[:, 1])  # 'a' matched by name
    torch.testing.assert_close(new[:, 1], old[:, 1:].mean(1))  # Burn: the mean perturbation
    torch.testing.assert_close(adapted.project_out[0].weight, pretrained.model.project_out[0].weight)
    # the control set is predicted exactly as the pretrained model predicts its control
    x = batch()
    from stx.data import keys
    x[keys.PERT_INDEX] = torch.tensor([0, 0])
    torch.testing.assert_close(adapted.eval()(x), pretrained.model.eval()(x))


def test_embedding_width_mismatch_names_both_numbers(tmp_path):
    pretrained = load_pretrained(str(write_run_dir(tiny(), tmp_path / "run", control_pert="ctrl",
                                                   embed_key="X_state")))
    with pytest.raises(StxError, match=r"obsm\['X_state'\] has 2000 dims but the checkpoint .* expects 12"):
        adapt_to_data(pretrained, _data_spec(dim=2000))


def test_copy_of_stx_mini_is_loadable_from_a_path(tmp_path):
    shutil.copytree(checkpoint_dir("stx-mini"), tmp_path / "mini")
    assert load_pretrained(str(tmp_path / "mini")).spec.hidden_dim == 128


@pytest.mark.parametrize("time_axis", [False, True], ids=["time-category", "time-axis"])
def test_covariate_inputs_start_as_the_pretrained_function_and_learn(tmp_path, time_axis):
    from stx.config import LoraConfig
    from stx.data import keys
    from stx.model.lora import apply_lora, freeze_for_finetuning

    pretrained = load_pretrained("stx-mini")
    covariates = (("day", ("10", "14", "19")), ("sex", ("F", "M")))
    adapted = adapt_to_data(pretrained, _data_spec(dim=64, perts=("DMSO_TF", "Burn")), covariates=covariates,
                            cell_skip=True, time_axis=time_axis)
    assert adapted.spec.time_axis == time_axis
    x = {keys.CTRL_EMB: torch.randn(2, 8, 64, generator=torch.Generator().manual_seed(0)),
         keys.PERT_INDEX: torch.tensor([0, 1]), keys.BATCH_INDEX: torch.zeros(2, 8, dtype=torch.long),
         keys.COVARIATES: torch.tensor([[[2, 1]] * 8, [[0, 0]] * 8])}
    plain = adapt_to_data(pretrained, _data_spec(dim=64, perts=("DMSO_TF", "Burn")))
    before = plain.eval()(x)
    torch.testing.assert_close(adapted.eval()(x), before, atol=1e-6, rtol=0)
    apply_lora(adapted, LoraConfig(r=4, dropout=0.0))
    freeze_for_finetuning(adapted)
    assert all(p.requires_grad for p in adapted.covariate_encoders.parameters())
    assert adapted.skip_gate.requires_grad and float(adapted.skip_gate.detach().abs().max()) == 0.0
    adapted(x).pow(2).mean().backward()
    time = adapted.covariate_encoders[0]
    learned = time.direction if time_axis else time.weight
    assert learned.grad.abs().max() > 0  # zero at start, yet it learns
    assert adapted.covariate_encoders[1].weight.grad.abs().max() > 0
    # the time point now changes the prediction
    with torch.no_grad():
        learned.normal_()
    y = adapted.eval()(x)
    x2 = {**x, keys.COVARIATES: x[keys.COVARIATES].clone()}
    x2[keys.COVARIATES][..., 0] = 1
    assert (adapted(x2) - y).abs().max() > 1e-3


def test_an_open_cell_skip_predicts_a_change_to_each_cell():
    from stx.model.st import SKIP_SCALE

    model = adapt_to_data(load_pretrained(str(write_run_dir(tiny(), Path(tempfile.mkdtemp()) / "run",
                                                             control_pert="ctrl", embed_key="X_state"))),
                          _data_spec(), cell_skip=True).eval()
    x = batch()
    with torch.no_grad():
        model.skip_gate.fill_(1.0 / SKIP_SCALE)
        basal = model.basal_encoder(x["ctrl_cell_emb"])
        hidden = model(x) - x["ctrl_cell_emb"] + model.project_out(basal)
    # with the gate open: the input cell plus the head's decoding of the backbone's update
    reference = model.project_out(model.transformer_backbone(basal + model.pert_encoder(
        torch.nn.functional.one_hot(x["pert_index"][:, None].expand(2, 6), 3).float())) + basal)
    torch.testing.assert_close(hidden, reference, atol=1e-5, rtol=1e-5)


def test_the_gate_opens_where_asked_and_a_fine_tuned_gate_is_kept(tmp_path):
    from stx.model.st import SKIP_SCALE

    source = load_pretrained(str(write_run_dir(tiny(), tmp_path / "run", control_pert="ctrl", embed_key="X_state")))
    opened = adapt_to_data(source, _data_spec(), cell_skip=True, cell_skip_init=1.0)
    assert float(opened.skip_gate.detach().min()) * SKIP_SCALE == pytest.approx(1.0)
    with torch.no_grad():
        opened.skip_gate.fill_(0.3 / SKIP_SCALE)
    again = adapt_to_data(load_pretrained(str(write_run_dir(opened, tmp_path / "tuned", control_pert="ctrl",
                                                            embed_key="X_state"))), _data_spec(), cell_skip_init=1.0)
    assert float(again.skip_gate.detach().max()) * SKIP_SCALE == pytest.approx(0.3)  # its own gate, not the init


@pytest.mark.parametrize(("change", "message"), [
    ("name", "config.yaml names model 'pseudobulk', not State Transition"),
    ("mask_attn", r"masked attention \(mask_attn=true\) are not supported"),
    ("causal", "trained with causal attention"),
])
def test_other_arc_state_models_and_options_are_refused(tmp_path, change, message):
    import yaml

    run = tmp_path / "run"
    shutil.copytree(checkpoint_dir("stx-mini"), run)
    if change == "name":
        config = yaml.safe_load((run / "config.yaml").read_text())
        config["model"]["name"] = "pseudobulk"
        (run / "config.yaml").write_text(yaml.safe_dump(config))
    else:
        ckpt = torch.load(run / "checkpoints/final.ckpt", weights_only=True)
        if change == "mask_attn":
            ckpt["hyper_parameters"]["mask_attn"] = True
        else:
            ckpt["hyper_parameters"]["transformer_backbone_kwargs"]["bidirectional_attention"] = False
        torch.save(ckpt, run / "checkpoints/final.ckpt")
    with pytest.raises(StxError, match=message):
        load_pretrained(str(run))


def test_time_axis_places_the_time_points_on_one_learned_direction():
    from stx.model.st import TimeAxis, time_positions

    torch.testing.assert_close(time_positions(("10", "14", "19")),
                               (torch.tensor([10.0, 14, 19]) - 43 / 3) / torch.tensor([10.0, 14, 19]).std())
    torch.testing.assert_close(time_positions(("early", "late")), torch.tensor([-1.0, 1.0]) / 2**0.5)
    axis = TimeAxis(("10", "14", "19"), 8)
    codes = torch.tensor([[0, 2], [1, 1]])
    assert axis(codes).shape == (2, 2, 8) and float(axis(codes).detach().abs().max()) == 0.0  # zero at start
    with torch.no_grad():
        axis.direction.normal_()
    out = axis(codes).reshape(-1, 8)
    # every time point's embedding is a multiple of one direction: rank 1
    assert torch.linalg.matrix_rank(out) == 1
    torch.testing.assert_close(out[0] / axis.position[0], axis.direction)


def test_a_saved_model_keeps_its_time_encoding(tmp_path):
    from stx.model.st import ModelSpec

    pretrained = load_pretrained("stx-mini")
    adapted = adapt_to_data(pretrained, _data_spec(dim=64, perts=("DMSO_TF", "Burn")),
                            covariates=(("day", ("10", "14", "19")),), time_axis=True)
    raw = adapted.spec.to_dict()
    assert ModelSpec.from_dict(raw).time_axis is True
    # a model saved before the axis existed has no such key: its time is a category, as trained
    del raw["time_axis"]
    assert ModelSpec.from_dict(raw).time_axis is False
