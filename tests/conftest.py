"""Shared fixtures: small synthetic data sets and configs, generated once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from stx.data.builtin import write_demo


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # built-in data sets are generated into a per-session cache, never into ~/.cache
    monkeypatch.setenv("STX_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "stx-cache"))


@pytest.fixture(scope="session")
def demo_path(tmp_path_factory) -> Path:
    """A small demo data set (1,500 cells) on disk."""
    return write_demo(tmp_path_factory.mktemp("data") / "demo.h5ad", n_cells=1500, seed=1)


@pytest.fixture(scope="session")
def demo_adata(demo_path):
    import anndata as ad

    return ad.read_h5ad(demo_path)


DEMO_CONFIG = """
[datasets]
demo = "{path}"

[data]
embed_key = "X_state"
time_col = "day"
min_group_cells = 3
{extra}
"""


@pytest.fixture
def write_config(tmp_path):
    """Write a config for a data file; returns its path. `extra` is appended TOML."""

    def write(data_path: Path, extra: str = "", name: str = "config.toml") -> Path:
        path = tmp_path / name
        path.write_text(DEMO_CONFIG.format(path=data_path, extra=extra))
        return path

    return write
