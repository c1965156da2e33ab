"""No code from data: checkpoints, their side files and model packages load without
running anything they carry. Each payload here would create a marker file when unpickled."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from stx.cli import cli
from stx.errors import StxError
from stx.model.checkpoint import checkpoint_dir, load_pretrained, read_plain_pickle


class Payload:
    """Unpickling this touches a file: harmless, and proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "payload-ran"


def test_a_checkpoint_with_a_payload_is_refused_naming_the_type(tmp_path, marker):
    run = tmp_path / "ckpt"
    shutil.copytree(checkpoint_dir("stx-mini"), run)
    ckpt = torch.load(run / "checkpoints/final.ckpt", weights_only=True)
    ckpt["hyper_parameters"]["callback"] = Payload(marker)
    torch.save(ckpt, run / "checkpoints/final.ckpt")
    with pytest.raises(StxError, match=r"final.ckpt: refused to load: it holds .*pathlib.*Path"):
        load_pretrained(str(run))
    assert not marker.exists()


def test_side_files_with_payloads_are_refused(tmp_path, marker):
    pkl = tmp_path / "var_dims.pkl"
    pkl.write_bytes(pickle.dumps({"input_dim": 64, "hook": Payload(marker)}))
    with pytest.raises(StxError, match="var_dims.pkl: refused to load"):
        read_plain_pickle(pkl)
    assert not marker.exists()
    good = tmp_path / "good.pkl"
    good.write_bytes(pickle.dumps({"input_dim": 10, "gene_names": None, "dims": [1, 2]}))
    assert read_plain_pickle(good) == {"input_dim": 10, "gene_names": None, "dims": [1, 2]}
    run = tmp_path / "run"
    shutil.copytree(checkpoint_dir("stx-mini"), run)
    torch.save({"DMSO_TF": Payload(marker)}, run / "pert_onehot_map.pt")
    with pytest.raises(StxError, match="pert_onehot_map.pt: refused to load"):
        load_pretrained(str(run))
    assert not marker.exists()


def test_truncated_empty_and_random_checkpoints_get_one_line(tmp_path):
    for name, content in (("empty", b""), ("random", bytes(range(256)) * 10), ("cut", None)):
        run = tmp_path / name
        shutil.copytree(checkpoint_dir("stx-mini"), run)
        path = run / "checkpoints/final.ckpt"
        path.write_bytes(content if content is not None else path.read_bytes()[:4000])
        with pytest.raises(StxError, match=r"final.ckpt: not a readable checkpoint"):
            load_pretrained(str(run))


def test_predict_with_a_tampered_model_folder_runs_no_code(tmp_path, marker, demo_path):
    from stx.model.package import save_package
    from stx.model.st import ModelSpec, StateTransition

    spec = ModelSpec(input_dim=64, output_dim=64, hidden_dim=16, pert_names=("Sham", "Burn"), dropout=0.0,
                     backbone={"intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                               "num_key_value_heads": 2, "head_dim": 8, "vocab_size": 8})
    folder = save_package(StateTransition(spec), {"embed_key": "X_state", "pert_col": "condition",
                                                  "control_pert": "Sham", "cell_set_len": 8}, tmp_path / "model")
    torch.save({"weight": Payload(marker)}, folder / "weights.pt")
    (folder / "python_model.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\n")
    result = CliRunner().invoke(cli, ["predict", "--model", str(folder), "--data", str(demo_path),
                                      "--out", str(tmp_path / "p.h5ad")])
    assert result.exit_code == 2 and "weights.pt: refused to load" in result.output, result.output
    assert not marker.exists()
