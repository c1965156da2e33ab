"""Compare's output folder and its warnings about unlike registered champions."""

from __future__ import annotations

import logging

from stx.comparison.query import RunRecord
from stx.comparison.report import OUTPUTS, _warn_unlike, default_out, publish


def _record(run: str, variant: str, steps: str, lr: str = "0.003", data: str = "d" * 64, r: str | None = "16"):
    params = {"trainer.lr": lr, **({"model.lora.r": r} if r else {})}
    return RunRecord(run, variant, "1", data, {}, params, {"stx.steps": steps, "stx.config_digest": run * 12}, "")


def test_a_champion_trained_differently_is_named(caplog):
    records = [_record("a", "lora", "600"), _record("b", "lora-velocity", "20", lr="0.01", r="8"),
               _record("c", "baseline", "0", r=None)]
    with caplog.at_level(logging.WARNING, logger="stx.comparison.report"):
        _warn_unlike(records, "registry")
    text = caplog.text
    assert "trained differently" in text
    assert "steps (lora 600, lora-velocity 20)" in text and "trainer.lr (lora 0.003, lora-velocity 0.01)" in text
    assert "model.lora.r (lora 16, lora-velocity 8)" in text
    assert "baseline" not in text and "data" not in text  # the baseline trains nothing; same data


def test_champions_trained_alike_are_not_warned_about(caplog):
    with caplog.at_level(logging.WARNING, logger="stx.comparison.report"):
        _warn_unlike([_record("a", "lora", "600"), _record("b", "lora-mhc", "600")], "registry")
    assert caplog.text == ""


def test_each_kind_of_compare_has_its_own_folder():
    folders = {default_out("burn", "registry"), default_out("burn", "all"), default_out("burn", "all", trials=True)}
    assert len(folders) == 3


def test_a_new_compare_replaces_the_old_ones_files_and_nothing_else(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "cells_umap.png").write_text("old figure")  # drawn by an earlier umap compare
    (out / "comparison.md").write_text("old")
    (out / "notes.txt").write_text("the user's own file")
    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "comparison.md").write_text("new")
    (stage / "cells_pca.png").write_text("new figure")
    publish(stage, out)
    assert sorted(p.name for p in out.iterdir()) == ["cells_pca.png", "comparison.md", "notes.txt"]
    assert (out / "comparison.md").read_text() == "new" and "cells_umap.png" in OUTPUTS
