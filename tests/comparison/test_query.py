"""Reading the compared runs' artifacts: in place from a local store, batched parsing that
reads each run's table exactly as `pd.read_csv` of its own file would."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stx.comparison.query import RunRecord
from stx.comparison.report import _download, group_tables, read_group_tables
from stx.errors import StxError


def _record(run_id: str, uri: str, sha: str = "a") -> RunRecord:
    return RunRecord(run_id, "lora", "1", sha, {}, {"trainer.seed": 0}, {}, uri)


def _table(rng: np.random.Generator, n: int = 4, **extra) -> pd.DataFrame:
    frame = pd.DataFrame({"perturbation": "Burn", "cell_type": [f"c{i}" for i in range(n)], "day": 10,
                          "small": False, "energy_ratio": rng.random(n), "predictor": "model"})
    return frame.assign(**extra)


def test_tables_are_read_as_each_file_alone(tmp_path):
    rng = np.random.default_rng(0)
    frames = {
        "a": _table(rng), "b": _table(rng, 6),
        "c": _table(rng, temporal_coherence=np.nan),  # a column all empty in this run: float, as alone
        "c2": _table(rng, energy_ratio=np.nan),  # the same columns as a and b, all empty
        "d": _table(rng, day="D14"),  # another data set: time points as text
        "e": _table(rng, predictor="a, quoted"),  # quoted cells: parsed on its own
        "f": _table(rng, 0),  # no rows
        "g": _table(rng, 3).drop(columns="small"),  # other columns
    }
    paths, data = {}, {}
    for run_id, frame in frames.items():
        paths[run_id] = tmp_path / f"{run_id}.csv"
        frame.to_csv(paths[run_id], index=False)
        data[run_id] = "other" if run_id == "d" else "a"
    (tmp_path / "h.csv").write_text("perturbation,cell_type,day\n\nBurn,x,1\n\n")  # blank lines
    paths["h"], data["h"] = tmp_path / "h.csv", "a"
    (tmp_path / "i.csv").write_text("\ufeffperturbation,cell_type,day\nBurn,x,1\n", encoding="utf-8")  # a BOM
    paths["i"], data["i"] = tmp_path / "i.csv", "a"
    got = read_group_tables(paths, data)
    assert list(got) == list(paths)
    for run_id, path in paths.items():
        pd.testing.assert_frame_equal(got[run_id], pd.read_csv(path), check_exact=True)


def test_local_artifacts_are_read_in_place_and_missing_ones_named(tmp_path):
    root = tmp_path / "artifacts"
    (root / "eval").mkdir(parents=True)
    _table(np.random.default_rng(1)).to_csv(root / "eval" / "metrics_by_group.csv", index=False)
    run = _record("r1", root.as_uri())
    assert _download(run, "eval/metrics_by_group.csv", tmp_path / "dl") == root / "eval" / "metrics_by_group.csv"
    assert not (tmp_path / "dl").exists()  # nothing copied
    assert _download(_record("r2", str(root)), "eval/metrics_by_group.csv", tmp_path) == \
        root / "eval" / "metrics_by_group.csv"  # a plain path as artifact location
    with pytest.raises(StxError, match=r"run r1 \(lora\) has no artifact config/resolved.toml"):
        _download(run, "config/resolved.toml", tmp_path)
    tables = group_tables([run], tmp_path)
    pd.testing.assert_frame_equal(tables["r1"], pd.read_csv(root / "eval" / "metrics_by_group.csv"))
    with pytest.raises(StxError, match=r"run r3 \(lora\) has no artifact eval/metrics_by_group.csv"):
        group_tables([run, _record("r3", (tmp_path / "none").as_uri())], tmp_path)


def test_remote_artifacts_are_downloaded_from_the_run_location(tmp_path, monkeypatch):
    import mlflow

    asked = []

    def fake(artifact_uri, dst_path):
        asked.append(artifact_uri)
        if "missing" in artifact_uri:
            raise OSError("404")
        out = tmp_path / "got" / artifact_uri.rsplit("/", 1)[-1]
        out.parent.mkdir(exist_ok=True)
        _table(np.random.default_rng(2)).to_csv(out, index=False)
        return str(out)

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", fake)
    runs = [_record(f"r{i}", f"s3://bucket/1/r{i}/artifacts/") for i in range(3)]
    tables = group_tables(runs, tmp_path)
    assert sorted(asked) == [f"s3://bucket/1/r{i}/artifacts/eval/metrics_by_group.csv" for i in range(3)]
    assert list(tables) == ["r0", "r1", "r2"] and all(len(t) == 4 for t in tables.values())
    with pytest.raises(StxError, match="has no artifact eval/metrics_by_group.csv"):
        group_tables([_record("x", "s3://bucket/missing")], tmp_path)


def test_compare_chooses_the_projection_as_the_evaluation_and_without_torch():
    import subprocess
    import sys

    from stx.evaluate.plots import projection_for

    assert [projection_for("auto", d) for d in (2, 100, 101, 2048)] == ["pca", "pca", "umap", "umap"]
    assert projection_for("umap", 2) == "umap" and projection_for("pca", 2048) == "pca"
    code = "import sys, stx.comparison.report; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "False"
