from __future__ import annotations

import logging
import shutil

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
