"""stx reproduces arc-state's own outputs on run directories arc-state wrote.

The fixture was made by tests/fixtures/make_arc_state_fixture.py with arc-state 0.11.1
(see its docstring to regenerate it).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from stx.data import keys
from stx.model.checkpoint import load_pretrained

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "arc_state_tiny"


def _inputs(run: Path, set_len: int = 8):
    io = torch.load(run / "io.pt", weights_only=True)
    batch = io["batch"]
    d = batch["ctrl_cell_emb"].shape[-1]
    x = {
        keys.CTRL_EMB: batch["ctrl_cell_emb"].reshape(-1, set_len, d),
        keys.PERT_INDEX: io["pert_index"],
        keys.BATCH_INDEX: batch["batch"].argmax(-1).reshape(-1, set_len),
    }
    return x, io["output"]


@pytest.mark.parametrize("kind", ["plain", "batch"])
def test_outputs_match_arc_state(kind):
    run = FIXTURE / kind
    loaded = load_pretrained(str(run))
    assert loaded.spec.output_relu  # arc-state clips embedding outputs; reproduced, with a warning
    assert loaded.spec.batch_encoder == (kind == "batch")
    assert loaded.spec.pert_names[0] == "non-targeting" and loaded.control_pert == "non-targeting"
    x, expected = _inputs(run)
    with torch.no_grad():
        got = loaded.model.eval()(x).reshape(expected.shape)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_checkpoint_without_hyper_parameters_uses_config_yaml(tmp_path):
    run = tmp_path / "plain"
    shutil.copytree(FIXTURE / "plain", run)
    ckpt = torch.load(run / "checkpoints/final.ckpt", weights_only=False)
    ckpt.pop("hyper_parameters")
    torch.save(ckpt, run / "checkpoints/final.ckpt")
    x, expected = _inputs(run)
    with torch.no_grad():
        got = load_pretrained(str(run)).model.eval()(x).reshape(expected.shape)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
