"""Read the configured `.h5ad` files into one validated `CellTable`.

Only what training needs is read (obs and one obsm matrix), straight from the HDF5 file,
so a 30,000-gene `X` is never loaded when the embedding lives in `obsm`. Every problem is
reported as a `DataError` naming the file, the key or column, and what was expected.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

if TYPE_CHECKING:
    import h5py

from stx.config import BUILTIN_PREFIX, Config, DataConfig
from stx.errors import DataError

log = logging.getLogger(__name__)

MAX_ABS = 1e6  # an embedding coordinate beyond this is a unit or key mistake, not biology
NO_BATCH = "all"
NO_TIME = "all"
NO_CELL_TYPE = "all"


@dataclass(frozen=True)
class DataSpec:
    """What sizes the model and names its outputs: dimensions and vocabularies."""

    embed_key: str
    embed_dim: int
    perts: tuple[str, ...]
    control_index: int
    cell_types: tuple[str, ...]
    batches: tuple[str, ...]
    days: tuple[str, ...]
    has_time: bool
    datasets: tuple[str, ...]
    covariates: tuple[tuple[str, tuple[str, ...]], ...] = ()  # extra obs columns: (name, vocabulary)
    has_cell_type: bool = True

    @property
    def control(self) -> str:
        """Label of the control condition."""
        return self.perts[self.control_index]

    def group_label(self, cell_type: str, day: str) -> str:
        """How a group is named to a user: "Fib, day 14", "Fib", "day 14" or "all cells"."""
        parts = ([cell_type] if self.has_cell_type else []) + ([f"day {day}"] if self.has_time else [])
        return ", ".join(parts) or "all cells"


@dataclass(frozen=True, eq=False)
class CellTable:
    """All cells of all data sets as flat arrays; categorical columns are integer codes.

    `emb` is [N, D] float32; `pert`, `cell_type`, `batch`, `day`, `dataset` are [N] int64
    codes into the vocabularies of `spec`; `obs_names` are the cells' ids.
    """

    emb: np.ndarray
    pert: np.ndarray
    cell_type: np.ndarray
    batch: np.ndarray
    day: np.ndarray
    dataset: np.ndarray
    obs_names: np.ndarray
    spec: DataSpec
    files: tuple[Path, ...]
    skipped_groups: tuple[tuple[str, str, str], ...] = field(default=())
    velocity: np.ndarray | None = None  # [N, D] RNA velocity in the embedding (velocity variants)
    velocity_weight: np.ndarray | None = None  # [N] velocity confidence (1 where none was given)
    velocity_calibrated: bool = True  # False for transition-matrix projections (direction only)
    covariates: np.ndarray | None = None  # [N, K] codes of the extra covariates (spec.covariates)
    control_day: int | None = None  # data.control_time: the day whose controls serve every day of a cell type
    truth_response: np.ndarray | None = None  # [N, D] each cell's true Burn-minus-Sham response (synthetic data)

    @property
    def n_cells(self) -> int:
        """Number of cells over all data sets."""
        return int(self.emb.shape[0])

    @property
    def group(self) -> np.ndarray:
        """[N] group code = cell type x day (cell type alone without a time column)."""
        return self.cell_type * len(self.spec.days) + self.day

    def control_group(self, group: np.ndarray | int) -> np.ndarray | int:
        """The group whose control cells serve `group`: itself, or with data.control_time the
        same cell type at the reference time point."""
        if self.control_day is None:
            return group
        n_days = len(self.spec.days)
        return (group // n_days) * n_days + self.control_day

    def group_name(self, group: int) -> tuple[str, str]:
        """(cell type, day) of a group code."""
        n_days = len(self.spec.days)
        return self.spec.cell_types[group // n_days], self.spec.days[group % n_days]


# ---------------------------------------------------------------- reading one file


def resolve_dataset_path(path: str) -> Path:
    """A configured data set path; `builtin:demo` resolves to the cached demo file."""
    if path.startswith(BUILTIN_PREFIX):
        from stx.data.builtin import builtin_dataset

        return builtin_dataset(path.removeprefix(BUILTIN_PREFIX))
    return Path(path)


def open_h5ad(path: Path) -> h5py.File:
    """Open an `.h5ad` for reading, or raise a DataError saying what is wrong with it."""
    import h5py

    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected an .h5ad file")
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise DataError(f"{path}: not a readable .h5ad (HDF5) file ({err.__class__.__name__}: "
                        f"{str(err).split(';')[0][:120]})") from None
    if "obs" not in handle:
        handle.close()
        raise DataError(f"{path}: HDF5 file has no 'obs' group; is it an AnnData .h5ad?")
    return handle


def read_obs(handle: h5py.File, path: Path) -> pd.DataFrame:
    """The obs table of an open `.h5ad`."""
    from anndata.io import read_elem

    try:
        return read_elem(handle["obs"])
    except Exception as err:  # a damaged file can fail anywhere inside anndata
        raise DataError(f"{path}: cannot read obs ({err.__class__.__name__}: {err})") from None


def read_var_names(handle: h5py.File, path: Path) -> list[str]:
    """The var names (index of var) of an open `.h5ad`."""
    from anndata.io import read_elem

    try:
        return [str(v) for v in read_elem(handle["var"]).index]
    except Exception as err:  # a damaged file can fail anywhere inside anndata
        raise DataError(f"{path}: cannot read var ({err.__class__.__name__}: {err})") from None


def read_matrix(handle: h5py.File, path: Path, key: str) -> np.ndarray:
    """`X` or `obsm[key]` of an open `.h5ad` as dense float32 [N, D]."""
    from anndata.io import read_elem

    if key == "X":
        if "X" not in handle:
            raise DataError(f"{path}: has no X matrix (data.embed_key = 'X')")
        node = handle["X"]
    else:
        keys = sorted(handle["obsm"].keys()) if "obsm" in handle else []
        if key not in keys:
            hint = f"; available: {', '.join(keys)}" if keys else "; the file has no obsm entries"
            raise DataError(f"{path}: obsm['{key}'] not found (data.embed_key){hint}")
        node = handle["obsm"][key]
    try:
        value = read_elem(node)
    except Exception as err:
        raise DataError(f"{path}: cannot read {_where(key)} ({err.__class__.__name__}: {err})") from None
    if isinstance(value, pd.DataFrame):
        value = value.to_numpy()
    if sp.issparse(value):
        value = value.toarray()
    value = np.asarray(value)
    if np.iscomplexobj(value):
        raise DataError(f"{path}: {_where(key)} is complex ({value.dtype}); an embedding must be real-valued "
                        f"(dropping the imaginary part would silently change it)")
    if value.ndim != 2 or not np.issubdtype(value.dtype, np.number):
        raise DataError(f"{path}: {_where(key)} must be a numeric [cells, dims] matrix, got "
                        f"{value.dtype} with shape {value.shape}")
    return value.astype(np.float32, copy=False)


def _where(key: str) -> str:
    return "X" if key == "X" else f"obsm['{key}']"


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (the `stx.data_sha256` tag). A run needs it for its tags, its
    datasets and its model package: it is read once per process, again only if the file changed."""
    stat = Path(path).stat()
    return _sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int, chunk: int = 1 << 20) -> str:  # size, mtime: the cache key
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- the whole table


def _column(obs: pd.DataFrame, name: str, key: str, path: Path) -> pd.Series:
    if name not in obs.columns:
        import difflib

        close = difflib.get_close_matches(name, [str(c) for c in obs.columns], n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else f"; columns: {', '.join(map(str, obs.columns))}"
        raise DataError(f"{path}: obs column '{name}' not found ({key}){hint}")
    column = obs[name]
    missing = int(column.isna().sum())
    if missing:
        raise DataError(f"{path}: obs column '{name}' ({key}) has {missing} missing values")
    return column


def _labels(column: pd.Series) -> np.ndarray:
    # numeric days (10, 14.0) and strings ("10") must agree across files: 14.0 -> "14"
    values = column.to_numpy()
    if np.issubdtype(np.asarray(values).dtype, np.floating) and np.all(np.mod(values, 1) == 0):
        values = values.astype(np.int64)
    return np.asarray([str(v) for v in values], dtype=object)


def _sorted_days(days: set[str]) -> tuple[str, ...]:
    try:
        return tuple(sorted(days, key=float))
    except ValueError:
        return tuple(sorted(days))


def load_cells(cfg: Config, velocity: bool = False) -> CellTable:
    """Read and validate every data set of the config into one CellTable.

    With `velocity`, also read `obsm[model.velocity.velocity_key]` (preparing it with scVelo
    first, cached, where the file has spliced/unspliced layers but no velocity yet).
    """
    dcfg = cfg.data
    parts: list[dict[str, np.ndarray]] = []
    files: list[Path] = []
    for raw_path in cfg.datasets.values():
        path = resolve_dataset_path(raw_path)
        files.append(path)
        parts.append(_read_dataset(path, dcfg))
        if velocity:
            parts[-1].update(_read_velocity(path, cfg, parts[-1]["emb"].shape[1]))
    dims = {p["emb"].shape[1] for p in parts}
    if len(dims) > 1:
        shapes = ", ".join(f"{f.name}: {p['emb'].shape[1]}" for f, p in zip(files, parts, strict=True))
        raise DataError(f"data sets disagree on the width of {_where(dcfg.embed_key)} ({shapes})")

    def vocab(key: str) -> list[str]:
        return sorted(set().union(*(set(p[key]) for p in parts)))

    for key, config_key in (("pert", "data.pert_col"), ("cell_type", "data.cell_type_key"),
                            ("batch", "data.batch_col"), ("day", "data.time_col")):
        _refuse_near_duplicates(vocab(key), config_key, files[0])
    perts = vocab("pert")
    if dcfg.control_pert not in perts:
        shown = ", ".join(perts[:10])
        raise DataError(f"{files[0]}: control label '{dcfg.control_pert}' (data.control_pert) not "
                        f"found in obs['{dcfg.pert_col}']; labels: {shown}")
    if len(perts) < 2:
        raise DataError(f"{files[0]}: obs['{dcfg.pert_col}'] has only '{perts[0]}'; need the control "
                        f"and at least one perturbation")
    # control first, then the perturbations in sorted order
    perts = [dcfg.control_pert, *(p for p in perts if p != dcfg.control_pert)]
    cell_types = vocab("cell_type")
    batches = vocab("batch")
    days = list(_sorted_days(set(vocab("day"))))
    covariates = tuple((name, tuple(vocab(f"cov:{name}"))) for name in dcfg.covariates)

    def codes(key: str, names: list[str]) -> np.ndarray:
        index = {n: i for i, n in enumerate(names)}
        return np.concatenate([np.fromiter((index[v] for v in p[key]), np.int64, len(p[key])) for p in parts])

    spec = DataSpec(
        embed_key=dcfg.embed_key,
        embed_dim=dims.pop(),
        perts=tuple(perts),
        control_index=0,
        cell_types=tuple(cell_types),
        batches=tuple(batches),
        days=tuple(days),
        has_time=dcfg.time_col is not None,
        datasets=tuple(cfg.datasets),
        covariates=covariates,
        has_cell_type=dcfg.cell_type_key is not None,
    )
    obs_names = np.concatenate([p["obs_names"] for p in parts])
    if len(set(obs_names)) != len(obs_names):
        # different files may reuse ids such as "AAACCTG-1": prefix with the data set name
        obs_names = np.concatenate([
            np.asarray([f"{name}:{o}" for o in p["obs_names"]], dtype=object)
            for name, p in zip(cfg.datasets, parts, strict=True)
        ])
    table = CellTable(
        emb=np.ascontiguousarray(np.concatenate([p["emb"] for p in parts])),
        pert=codes("pert", perts),
        cell_type=codes("cell_type", cell_types),
        batch=codes("batch", batches),
        day=codes("day", days),
        dataset=np.repeat(np.arange(len(parts)), [len(p["emb"]) for p in parts]),
        obs_names=obs_names,
        spec=spec,
        files=tuple(files),
        velocity=np.concatenate([p["velocity"] for p in parts]) if velocity else None,
        velocity_weight=np.concatenate([p["velocity_weight"] for p in parts]) if velocity else None,
        velocity_calibrated=all(bool(p.get("calibrated", True)) for p in parts),
        covariates=np.stack([codes(f"cov:{name}", list(vocab_)) for name, vocab_ in covariates], 1)
        if covariates else np.zeros((sum(len(p["emb"]) for p in parts), 0), np.int64),
        truth_response=np.concatenate([p["truth_response"] for p in parts])
        if all("truth_response" in p for p in parts) else None,
    )
    if velocity:
        _check_velocity(table, cfg)
    if dcfg.control_time is not None:
        if not spec.has_time:
            raise DataError("data.control_time needs data.time_col (the column that holds the time points)")
        if dcfg.control_time not in spec.days:
            raise DataError(f"data.control_time = \"{dcfg.control_time}\" is not a time point of "
                            f"obs['{dcfg.time_col}']; time points: {', '.join(spec.days)}")
        table = CellTable(**{**table.__dict__, "control_day": spec.days.index(dcfg.control_time)})
    return _skip_incomplete_groups(table, dcfg.control_time)


def _refuse_near_duplicates(labels: list[str], key: str, path: Path) -> None:
    """Labels that differ only by case or surrounding spaces ("Sham" and "Sham ") are one
    condition typed twice: treated as two, they would add false groups to every metric."""
    seen: dict[str, str] = {}
    for label in labels:
        norm = label.strip().casefold()
        if norm in seen:
            raise DataError(f"{path}: labels {seen[norm]!r} and {label!r} ({key}) differ only by case or spaces; "
                            f"make them one label in the data (or map them before loading)")
        seen[norm] = label


def _read_dataset(path: Path, dcfg: DataConfig) -> dict[str, np.ndarray]:
    with open_h5ad(path) as handle:
        obs = read_obs(handle, path)
        emb = read_matrix(handle, path, dcfg.embed_key)
    if emb.shape[0] != len(obs):
        raise DataError(f"{path}: {_where(dcfg.embed_key)} has {emb.shape[0]} rows but obs has {len(obs)}")
    if len(obs) == 0:
        raise DataError(f"{path}: has no cells")
    bad = ~np.isfinite(emb).all(1)
    if bad.any():
        raise DataError(f"{path}: {_where(dcfg.embed_key)} has NaN or inf values in {int(bad.sum())} "
                        f"cells (first: {obs.index[np.argmax(bad)]})")
    huge = np.abs(emb).max(1) > MAX_ABS
    if huge.any():
        raise DataError(f"{path}: {_where(dcfg.embed_key)} has values beyond +-{MAX_ABS:g} in {int(huge.sum())} "
                        f"cells (largest {float(np.abs(emb).max()):.3g}, first: {obs.index[np.argmax(huge)]}); "
                        f"training on them overflows: check data.embed_key, or rescale the embedding")
    if len(emb) > 1 and float(emb.std(0).max()) == 0.0:
        raise DataError(f"{path}: {_where(dcfg.embed_key)} is the same for every cell (constant): there is "
                        f"nothing to learn from; check data.embed_key")
    n = len(obs)
    return {
        "emb": emb,
        "pert": _labels(_column(obs, dcfg.pert_col, "data.pert_col", path)),
        "cell_type": _labels(_column(obs, dcfg.cell_type_key, "data.cell_type_key", path))
        if dcfg.cell_type_key else np.full(n, NO_CELL_TYPE, dtype=object),
        "batch": _labels(_column(obs, dcfg.batch_col, "data.batch_col", path))
        if dcfg.batch_col else np.full(n, NO_BATCH, dtype=object),
        "day": _labels(_column(obs, dcfg.time_col, "data.time_col", path))
        if dcfg.time_col else np.full(n, NO_TIME, dtype=object),
        "obs_names": np.asarray(obs.index.astype(str), dtype=object),
        **{f"cov:{name}": _labels(_column(obs, name, "data.covariates", path)) for name in dcfg.covariates},
        **_read_truth(path, dcfg.embed_key, emb.shape[1]),
    }


def _read_truth(path: Path, embed_key: str, dim: int) -> dict[str, np.ndarray]:
    """The per-cell true response of a synthetic data set, when it is in this embedding."""
    from anndata.io import read_elem

    with open_h5ad(path) as handle:
        if "uns" not in handle or "truth" not in handle["uns"]:
            return {}
        truth = handle["uns"]["truth"]
        if "embed_key" not in truth or "response_key" not in truth:
            return {}
        key, response = str(read_elem(truth["embed_key"])), str(read_elem(truth["response_key"]))
        if key != embed_key or "obsm" not in handle or response not in handle["obsm"]:
            return {}
        values = np.asarray(read_elem(handle["obsm"][response]), np.float32)
    return {"truth_response": values} if values.shape[1] == dim else {}


def _skip_incomplete_groups(table: CellTable, control_time: str | None = None) -> CellTable:
    """Warn about (and record) groups with no control or no perturbed cells (with
    data.control_time, a group's controls are those of its cell type at that time)."""
    spec = table.spec
    group = table.group
    ctrl = table.pert == spec.control_index
    with_controls = set(np.unique(group[ctrl]).tolist())
    skipped: list[tuple[str, str, str]] = []
    usable = 0
    for g in np.unique(group):
        in_group = group == g
        has_perturbed = bool((in_group & ~ctrl).any())
        cell_type, day = table.group_name(int(g))
        if int(table.control_group(int(g))) not in with_controls:
            skipped.append((cell_type, day, f"no {spec.control} cells"))
        elif not has_perturbed:
            if table.control_day is None or table.control_day != g % len(spec.days):
                skipped.append((cell_type, day, "no perturbed cells"))
        else:
            usable += 1
    for cell_type, day, why in skipped:
        log.warning("skipping group (%s): %s", spec.group_label(cell_type, day), why)
    hint = ""
    control_days = sorted({spec.days[d] for d in np.unique(table.day[ctrl])})
    if spec.has_time and control_time is None and len(spec.days) > 1 and len(control_days) == 1:
        hint = (f"; the controls are all at time {control_days[0]}: a time course with controls at baseline "
                f"only needs data.control_time = \"{control_days[0]}\"")
        if skipped and usable:
            log.warning("groups without controls were skipped%s", hint)
    if usable == 0:
        raise DataError(f"{table.files[0]}: no (cell type, day) group has both {spec.control} and "
                        f"perturbed cells{hint}")
    return CellTable(**{**table.__dict__, "skipped_groups": tuple(skipped)})


def _read_velocity(path: Path, cfg: Config, dim: int) -> dict[str, np.ndarray]:
    """Velocity, confidence and calibration of one file, preparing it with scVelo if needed."""
    from anndata.io import read_elem

    vcfg = cfg.model.velocity
    key = vcfg.velocity_key
    with open_h5ad(path) as handle:
        has_key = "obsm" in handle and key in handle["obsm"]
        has_layers = "layers" in handle and {"spliced", "unspliced"} <= set(handle["layers"].keys())
    if not has_key:
        if not has_layers:
            raise DataError(f"{path}: no velocity for the velocity variants: no obsm['{key}'] "
                            f"(model.velocity.velocity_key) and no layers['spliced']/['unspliced'] to compute it from. "
                            f"What works: spliced/unspliced counts from velocyto, STARsolo (--soloFeatures Velocyto) "
                            f"or alevin-fry (USA mode) in layers, then 'stx velocity'; or a velocity you computed in "
                            f"this embedding, as an obsm key named by model.velocity.velocity_key")
        from stx.data.velocity import prepare_velocity, velocity_key_for

        if key != velocity_key_for(cfg.data.embed_key):
            raise DataError(f"{path}: no obsm['{key}'] (model.velocity.velocity_key); stx would prepare "
                            f"obsm['{velocity_key_for(cfg.data.embed_key)}'] from the spliced/unspliced layers: "
                            f"set model.velocity.velocity_key to that")
        log.info("%s: preparing RNA velocity with scVelo (first use; cached)", path.name)
        report = prepare_velocity(path, cfg.data.embed_key, None, projection=vcfg.projection,
                                  loadings_key=vcfg.loadings_key)
        log.info("velocity: %s projection, mean confidence %.2f, %.1f s%s", report.projection,
                 report.mean_confidence, report.seconds, " (cached)" if report.cached else "")
        path = Path(report.out)  # read straight from the cache
    with open_h5ad(path) as handle:
        velocity = read_matrix(handle, path, key)
        obs = read_obs(handle, path)
        info = read_elem(handle["uns"]["stx_velocity"]) if "uns" in handle and "stx_velocity" in handle["uns"] \
            else {}
    if velocity.shape[1] != dim:
        raise DataError(f"{path}: obsm['{key}'] has {velocity.shape[1]} dims but the embedding "
                        f"obsm['{cfg.data.embed_key}'] has {dim}; velocity must be in the embedding's coordinates")
    weight = obs["velocity_confidence"].to_numpy(np.float32) if "velocity_confidence" in obs \
        else np.ones(len(obs), np.float32)
    return {"velocity": velocity, "velocity_weight": weight,
            "calibrated": bool(info.get("magnitude_calibrated", True))}


def _check_velocity(table: CellTable, cfg: Config) -> None:
    v, w = table.velocity, table.velocity_weight
    key = cfg.model.velocity.velocity_key
    usable = np.isfinite(v).all(1) & (np.abs(v).sum(1) > 0)
    if not usable.any():
        raise DataError(f"{table.files[0]}: obsm['{key}'] is all zero or NaN; recompute it with 'stx velocity'")
    confident = usable & (w >= cfg.model.velocity.min_confidence)
    share = confident.mean()
    if share < 0.1:
        log.warning("only %d of %d cells (%.1f%%) have velocity confidence >= %.2f "
                    "(model.velocity.min_confidence): the velocity term will see few cells",
                    int(confident.sum()), table.n_cells, 100 * share, cfg.model.velocity.min_confidence)
