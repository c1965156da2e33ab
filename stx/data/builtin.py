"""Data sets that ship with stx: generated on first use into a cache, then reused."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import anndata as ad

from stx.errors import DataError

log = logging.getLogger(__name__)

DEMO_VERSION = 3  # bump when the generator's output changes, so stale caches are not reused
DEMO_CELLS = 6000
BUILTINS = ("demo",)


def cache_dir() -> Path:
    """`$STX_CACHE_DIR`, else `$XDG_CACHE_HOME/stx`, else `~/.cache/stx`."""
    if env := os.environ.get("STX_CACHE_DIR"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "stx"


def write_h5ad_atomic(adata: ad.AnnData, out: Path) -> None:
    """Write an AnnData so that readers never see a half-written file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        adata.write_h5ad(tmp)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_demo(out: Path, n_cells: int = DEMO_CELLS, seed: int = 0) -> Path:
    """Generate the synthetic wound-healing set and write it to `out` atomically."""
    from stx.data.demo import make_wound_healing

    write_h5ad_atomic(make_wound_healing(n_cells=n_cells, seed=seed), out)
    return out


def builtin_dataset(name: str) -> Path:
    """Path of a shipped data set (`builtin:<name>` in a config), generating it if needed."""
    if name not in BUILTINS:
        raise DataError(f"builtin:{name}: no such built-in data set; available: "
                        f"{', '.join('builtin:' + b for b in BUILTINS)}")
    path = cache_dir() / f"demo-v{DEMO_VERSION}-{DEMO_CELLS}-seed0.h5ad"
    if not path.exists():
        log.info("generating the demo data set (%d cells) into %s", DEMO_CELLS, path)
        write_demo(path)
    return path
