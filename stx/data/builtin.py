"""Data sets that ship with stx: generated on first use into a cache, then reused.

`builtin:demo` is the burn world of the synthetic wound-healing set;
`builtin:demo?world=velocity-aligned&cells=3000&seed=1` picks another world, size or seed.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import anndata as ad

from stx.errors import DataError

log = logging.getLogger(__name__)

DEMO_VERSION = 4  # bump when the generator's output changes, so stale caches are not reused
DEMO_CELLS = 8000
BUILTINS = ("demo",)


@dataclass(frozen=True)
class DemoRequest:
    """Which demo data set a `builtin:demo?...` address names."""

    world: str = "burn"
    cells: int = DEMO_CELLS
    seed: int = 0

    @property
    def filename(self) -> str:
        """Cache file name (versioned, so a new generator never reuses an old file)."""
        return f"demo-v{DEMO_VERSION}-{self.world}-{self.cells}-seed{self.seed}.h5ad"


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
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the user's umask decides, as for any file
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    # read, not set-and-restore: os.umask(0) would briefly change it for every thread
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_demo(out: Path, n_cells: int = DEMO_CELLS, seed: int = 0, world: str = "burn") -> Path:
    """Generate the synthetic wound-healing set of `world` and write it to `out` atomically."""
    from stx.data.demo import make_wound_healing

    write_h5ad_atomic(make_wound_healing(n_cells=n_cells, seed=seed, world=world), out)
    return out


def parse_builtin(name: str) -> tuple[str, DemoRequest]:
    """`demo?world=NAME&cells=N&seed=S` -> ("demo", request); a one-line error for anything else."""
    from urllib.parse import parse_qsl

    from stx.data.demo import WORLDS

    base, _, query = name.partition("?")
    if base not in BUILTINS:
        raise DataError(f"builtin:{name}: no such built-in data set; available: "
                        f"{', '.join('builtin:' + b for b in BUILTINS)}")
    fields: dict[str, object] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if key == "world":
            if value not in WORLDS:
                raise DataError(f"builtin:{name}: unknown world '{value}'; worlds: {', '.join(WORLDS)}")
            fields[key] = value
        elif key in ("cells", "seed"):
            if not value.isdigit() or (key == "cells" and int(value) < 100):
                raise DataError(f"builtin:{name}: {key} must be a whole number" + (" >= 100" if key == "cells"
                                                                                     else ""))
            fields[key] = int(value)
        else:
            raise DataError(f"builtin:{name}: unknown option '{key}'; options: world, cells, seed")
    return base, DemoRequest(**fields)


def builtin_dataset(name: str) -> Path:
    """Path of a shipped data set (`builtin:<name>` in a config), generating it if needed."""
    _, request = parse_builtin(name)
    path = cache_dir() / request.filename
    if not path.exists():
        log.info("generating the demo data set (world %s, %d cells) into %s", request.world, request.cells, path)
        write_demo(path, request.cells, request.seed, request.world)
    return path
