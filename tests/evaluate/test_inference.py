"""Predicted-embedding files: their vars name the embedding's dimensions, and a model's run is
read from its MLmodel without running anything."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

from stx.evaluate.inference import _mlmodel_run_id, embedding_anndata


def test_an_obsm_embedding_gets_one_named_var_per_dimension(tmp_path):
    obs = pd.DataFrame(index=["a", "b"])
    emb = np.arange(6, dtype=np.float32).reshape(2, 3)
    embedding_anndata(emb, obs, "X_state").write_h5ad(tmp_path / "p.h5ad")
    back = ad.read_h5ad(tmp_path / "p.h5ad")
    assert back.X is None and back.n_vars == 3 and list(back.var_names) == ["X_state_0", "X_state_1", "X_state_2"]
    np.testing.assert_array_equal(back.obsm["X_state"], emb)


def test_an_x_embedding_keeps_the_inputs_var_names():
    emb = np.ones((2, 2), np.float32)
    out = embedding_anndata(emb, pd.DataFrame(index=["a", "b"]), "X", ["PC_a", "PC_b"])
    assert list(out.var_names) == ["PC_a", "PC_b"] and out.X.shape == (2, 2)


def test_the_run_id_comes_from_mlmodel_read_as_plain_yaml(tmp_path):
    (tmp_path / "MLmodel").write_text("run_id: 0123abcd\nflavors: {}\n")
    assert _mlmodel_run_id(tmp_path / "MLmodel") == "0123abcd"
    (tmp_path / "MLmodel").write_text("run_id: !!python/object/apply:os.system ['false']\n")
    assert _mlmodel_run_id(tmp_path / "MLmodel") is None  # never constructs objects
    assert _mlmodel_run_id(tmp_path / "absent") is None
    (tmp_path / "MLmodel").write_text("- not\n- a mapping\n")
    assert _mlmodel_run_id(tmp_path / "MLmodel") is None
