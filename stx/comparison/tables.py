"""Variant-versus-reference tables: every row (learned variants and the reference predictors
baseline, mean_shift, perturbed_mean, truth) with the same kind of interval, paired
differences with verdicts, the study's targets, and training dynamics."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from stx.comparison.query import RunRecord, finite
from stx.comparison.stats import NO_CLEAR, Estimate, bootstrap, score, verdict
from stx.evaluate.metrics import ALL_METRICS, METRICS, TARGETS, meets_target
from stx.variants import VARIANTS

REFERENCES = ("baseline", "mean_shift", "perturbed_mean", "truth")
MEAN_SHIFT = "mean_shift"
KEY = ["perturbation", "cell_type", "day"]
DYNAMICS = {
    "final_val_energy_loss": "val/energy_loss", "final_val_loss": "val/loss", "best_val_loss": "val/best_loss",
    "grad_norm_cv": "grad_norm/cv", "grad_norm_spikes": "grad_norm/spikes", "loss_spikes": "loss/spikes",
    "clipped_frac": "grad_norm/clipped_frac", "step_time_s": "step_time_s", "trainable_fraction": "trainable_fraction",
    "steps": "trainer.max_steps", "wall_time_s": "run/wall_time_s",
}


@dataclass(frozen=True)
class Row:
    """One row of the comparison: a variant's runs, or a reference predictor.

    `groups` holds per-group metrics with a `seed` column (one seed for a reference)."""

    name: str
    kind: str  # "variant" or "reference"
    groups: pd.DataFrame
    runs: tuple[RunRecord, ...] = field(default=())
    # (heldout, metric) -> matrix: every table and difference asks for the same few matrices
    _matrices: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def matrix(self, metric: str, heldout: bool = False) -> pd.DataFrame:
        """[seed, group] values of a metric over the usable groups (not small)."""
        frame = self.groups
        if metric not in frame:
            return pd.DataFrame()
        if (heldout, metric) not in self._matrices:
            self._pivot(heldout, metric)
        return self._matrices[(heldout, metric)]

    def _pivot(self, heldout: bool, metric: str) -> None:
        """One pivot for all the metrics (the same groups, seeds and means as one pivot each)."""
        frame = self.groups
        keep = ~frame["small"].astype(bool) if "small" in frame else pd.Series(True, index=frame.index)
        keep &= frame["heldout"].astype(bool) == heldout if "heldout" in frame else (not heldout)
        sub = frame[keep]
        metrics = [m for m in ALL_METRICS if m in frame] if metric in ALL_METRICS else [metric]
        if sub.empty:
            self._matrices.update({(heldout, m): pd.DataFrame() for m in metrics})
            return
        table = sub.pivot_table(index="seed", columns=KEY, values=metrics, aggfunc="mean", dropna=False)
        self._matrices.update({(heldout, m): table[m] for m in metrics})


def _order(name: str) -> tuple[int, str]:
    names = [*REFERENCES[:1], *(v for v in VARIANTS if v != "baseline"), *REFERENCES[1:]]
    return (names.index(name), name) if name in names else (len(names), name)


def _seed(record: RunRecord) -> int:
    return int(record.params.get("trainer.seed", 0) or 0)


def steps_of(record: RunRecord) -> object:
    """The steps a run trained for (its tag; runs made before stx recorded it: its param)."""
    return record.tags.get("stx.steps") or record.params.get("trainer.max_steps")


def config_of(record: RunRecord) -> str:
    """The run's configuration digest (runs made before stx recorded one: their steps and lr)
    and its data's: runs of one config on different data (--allow-mixed) are never one row."""
    config = record.tags.get("stx.config_digest") or \
        f"{record.params.get('trainer.max_steps', '?')} steps, lr {record.params.get('trainer.lr', '?')}"
    return f"{config}, data {record.data_sha256[:8]}" if record.data_sha256 else config


def row_keys(records: list[RunRecord]) -> dict[str, tuple[str, str]]:
    """run id -> (row name, config): a variant's runs of one configuration on one data set
    share a row (their seeds pooled); a variant with several gets one row per configuration and
    data set, named with its steps, config digest and (when they differ) data digest, never one
    pooled row."""
    configs: dict[str, set[str]] = {}
    datasets: dict[str, set[str]] = {}
    for record in records:
        configs.setdefault(record.variant, set()).add(config_of(record))
        datasets.setdefault(record.variant, set()).add(record.data_sha256)
    keys = {}
    for record in records:
        name = record.variant
        if len(configs[name]) > 1:
            steps = steps_of(record) or "?"
            digest = record.tags.get("stx.config_digest") or config_of(record)
            data = f", data {record.data_sha256[:6]}" if len(datasets[name]) > 1 else ""
            name = f"{name} [{steps} steps, {digest[:6]}{data}]"
        keys[record.run_id] = (name, config_of(record))
    return keys


def build_rows(records: list[RunRecord], by_run: dict[str, pd.DataFrame]) -> list[Row]:
    """Rows from runs and their `metrics_by_group.csv`: one per variant and configuration (its
    seeds pooled), one per reference predictor (taken from the runs, which share the test
    design)."""
    rows: list[Row] = []
    keys = row_keys(records)
    by_name: dict[str, list[RunRecord]] = {}
    for record in records:
        by_name.setdefault(keys[record.run_id][0], []).append(record)
    for name, runs in by_name.items():
        groups = _own_groups([(by_run[r.run_id], _seed(r)) for r in runs if by_run.get(r.run_id) is not None])
        if groups is not None:
            rows.append(Row(name, "variant", groups, tuple(runs)))
    present = {row.name for row in rows}
    for name in REFERENCES:
        if name in present:  # a baseline run is the baseline reference itself
            continue
        for record in records:
            frame = by_run.get(record.run_id)
            if frame is not None and "predictor" in frame and (frame["predictor"] == name).any():
                rows.append(Row(name, "reference", frame[frame["predictor"] == name].assign(seed=0), (record,)))
                break
    return sorted(rows, key=lambda r: (*_order(r.name.split(" [")[0]), r.name))


def _own_groups(frames: list[tuple[pd.DataFrame, int]]) -> pd.DataFrame | None:
    """The model's per-group rows of each run with its seed, in one frame (None without runs)."""
    if not frames:
        return None
    first = frames[0][0]
    if all(f.columns.equals(first.columns) and f.dtypes.equals(first.dtypes) for f, _ in frames):
        # one concat, one filter: the same frame as filtering each run's table (as below)
        both = pd.concat([f for f, _ in frames], ignore_index=True).assign(
            seed=np.repeat(np.array([s for _, s in frames], dtype=np.int64), [len(f) for f, _ in frames]))
        return both[both["predictor"] == "model"].reset_index(drop=True) if "predictor" in both else both
    own = [(f[f["predictor"] == "model"] if "predictor" in f else f).assign(seed=s) for f, s in frames]
    return pd.concat(own, ignore_index=True)


def estimate(row: Row, metric: str, heldout: bool = False) -> Estimate:
    """The row's mean and interval for one metric."""
    matrix = row.matrix(metric, heldout)
    return bootstrap(matrix.to_numpy()) if not matrix.empty else bootstrap(np.zeros((0, 0)))


def paired_difference(a: Row, b: Row, metric: str, heldout: bool = False) -> Estimate:
    """score(a) - score(b) on shared groups, paired by seed where both rows have the seeds."""
    ma, mb = a.matrix(metric, heldout), b.matrix(metric, heldout)
    if ma.empty or mb.empty:
        return bootstrap(np.zeros((0, 0)))
    groups = ma.columns.intersection(mb.columns)
    sa, sb = score(metric, ma[groups].to_numpy()), score(metric, mb[groups].to_numpy())
    seeds = ma.index.intersection(mb.index)
    if len(mb) == 1:  # a reference (or a single run): the same for every seed of a
        diff = sa - sb
    elif len(seeds):
        diff = score(metric, ma.loc[seeds, groups].to_numpy()) - score(metric, mb.loc[seeds, groups].to_numpy())
    else:  # no common seeds: compare the seed-averaged group values
        diff = np.nanmean(sa, 0, keepdims=True) - np.nanmean(sb, 0, keepdims=True)
    return bootstrap(diff)


def comparison_table(rows: list[Row], heldout: bool = False) -> pd.DataFrame:
    """One line per row: each metric's mean and 95% interval, runs and groups, targets met,
    training dynamics (means over runs)."""
    out = []
    for row in rows:
        line: dict[str, object] = {"row": row.name, "kind": row.kind, "n_runs": len(row.runs) if row.kind ==
                                   "variant" else 0}
        n_groups = 0
        for metric in ALL_METRICS:
            est = estimate(row, metric, heldout)
            line[metric], line[f"{metric}_low"], line[f"{metric}_high"] = est.mean, est.low, est.high
            line[f"{metric}_seed_sd"] = seed_spread(row, metric, heldout)
            n_groups = max(n_groups, est.n_groups)
        line["n_seeds"] = len(row.matrix("energy_ratio", heldout)) if row.kind == "variant" else 0
        line["n_groups"] = n_groups
        versions = [f"models:/stx-{r.variant}/{r.model_version}" for r in row.runs if r.model_version]
        line["source"] = ", ".join(versions) if versions else ("runs" if row.kind == "variant" else "each run")
        line["targets_met"] = ", ".join(m for m in TARGETS if finite(line[m]) and meets_target(m, float(line[m]))) \
            or "none"
        for name, key in DYNAMICS.items():
            # an untrained run (baseline) has a trainer.max_steps param but took no step
            values = [r.metrics.get(key, r.params.get(key, math.nan)) if key != "trainer.max_steps" or
                      "train/wall_time_s" in r.metrics else 0 for r in row.runs] if row.kind == "variant" else []
            values = [float(v) for v in values if finite(_num(v))]
            line[name] = float(np.mean(values)) if values else math.nan
        out.append(line)
    table = pd.DataFrame(out)
    empty = [k for k in DYNAMICS if k in table and table[k].isna().all()]  # e.g. only untrained rows
    return table.drop(columns=empty)


def seed_spread(row: Row, metric: str, heldout: bool = False) -> float:
    """Standard deviation across seeds of each seed's mean over groups (NaN below 2 seeds):
    how much a result moves with training randomness alone."""
    m = row.matrix(metric, heldout)
    if row.kind != "variant" or len(m) < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a seed without any finite group
        per_seed = np.nanmean(m.to_numpy(dtype=float), 1)
    per_seed = per_seed[np.isfinite(per_seed)]
    return float(np.std(per_seed, ddof=1)) if len(per_seed) >= 2 else math.nan


def _num(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def differences(rows: list[Row], versus: tuple[str, ...] = ("mean_shift", "baseline"),
                paired_with: str = "lora", heldout: bool = False) -> pd.DataFrame:
    """Each learned variant against each reference in `versus`, and each lora-* variant
    against `paired_with` (paired by seed and group): Δ score (positive = better), interval,
    verdict."""
    by_name = {row.name: row for row in rows}
    learned = [r for r in rows if r.kind == "variant" and r.name != "baseline"]
    pairs = [(v, by_name[o]) for v in learned for o in versus if o in by_name and o != v.name]
    if paired_with in by_name:
        pairs += [(v, by_name[paired_with]) for v in learned if v.name.startswith("lora-")]
    out = []
    for a, b in pairs:
        for metric in ALL_METRICS:
            diff = paired_difference(a, b, metric, heldout)
            if diff.finite:
                out.append({"row": a.name, "versus": b.name, "metric": metric, "delta": diff.mean, "low": diff.low,
                            "high": diff.high, "seeds": diff.n_seeds, "verdict": verdict(diff)})
    return pd.DataFrame(out, columns=["row", "versus", "metric", "delta", "low", "high", "seeds", "verdict"])


def _fmt(value: object, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float | int) and finite(float(value)) else "n/a"


def _cell(line: pd.Series, metric: str) -> str:
    if metric not in line or not finite(line[metric]):
        return "n/a"
    low, high = line.get(f"{metric}_low"), line.get(f"{metric}_high")
    return _fmt(line[metric]) + (f" [{_fmt(low)}, {_fmt(high)}]" if finite(low) and finite(high) else "")


def metric_columns(table: pd.DataFrame) -> list[str]:
    """The metrics that have at least one value, headline first."""
    return [m for m in ALL_METRICS if m in table and table[m].apply(finite).any()]


def to_markdown(table: pd.DataFrame, diffs: pd.DataFrame, heldout: pd.DataFrame | None = None,
                heldout_diffs: pd.DataFrame | None = None) -> str:
    """The tables a reader needs: metrics with intervals, verdicts against the references and
    against lora, held-out groups, training dynamics."""
    metrics = metric_columns(table)
    lines = ["## Held-out metrics (mean [95% interval])", "",
             "energy_ratio is the headline (0 = perfect, 1 = no better than the unchanged controls); "
             "cell_* metrics compare each predicted cell with its own counterfactual (synthetic data only).", "",
             "| row | runs | groups | " + " | ".join(metrics) + " | targets met | from |",
             "|---|---|---|" + "---|" * (len(metrics) + 2)]
    for _, line in table.iterrows():
        runs = f"{line['n_runs']}" if line["kind"] == "variant" else "reference"
        lines.append(f"| {line['row']} | {runs} | {line['n_groups']} | "
                     + " | ".join(_cell(line, m) for m in metrics) + f" | {line['targets_met']} | "
                     f"{line.get('source', '')} |")
    seeded = (table["kind"] == "variant") & (table.get("n_seeds", 0) >= 2)
    if seeded.any():
        lines += ["", "## Spread across seeds (mean ± sd of each seed's mean over groups)", "",
                  "Training randomness alone; the references do not train, so they have none.", "",
                  "| row | seeds | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
        for _, line in table[seeded | (table["kind"] == "reference")].iterrows():
            cells = [f"{_fmt(line[m])} ± {_fmt(line[f'{m}_seed_sd'])}" if finite(line.get(f"{m}_seed_sd", math.nan))
                     else _fmt(line[m]) for m in metrics]
            seeds = line["n_seeds"] if line["kind"] == "variant" else "reference"
            lines.append(f"| {line['row']} | {seeds} | " + " | ".join(cells) + " |")
    lines += _diff_section(diffs, "Versus the references and lora")
    if heldout is not None and not heldout.empty and metric_columns(heldout):
        hm = metric_columns(heldout)
        lines += ["", "## Held-out groups (data.heldout_groups: never trained on)", "",
                  "| row | groups | " + " | ".join(hm) + " |", "|---|---|" + "---|" * len(hm)]
        for _, line in heldout.iterrows():
            lines.append(f"| {line['row']} | {line['n_groups']} | " + " | ".join(_cell(line, m) for m in hm) + " |")
        if heldout_diffs is not None:
            lines += _diff_section(heldout_diffs, "Held-out groups: versus the references and lora")
    dyn = [k for k in DYNAMICS if k in table]
    variants = table[table["kind"] == "variant"]
    if dyn and not variants.empty:
        lines += ["", "## Training dynamics (mean over runs)", "", "| row | " + " | ".join(dyn) + " |",
                  "|---|" + "---|" * len(dyn)]
        for _, line in variants.iterrows():
            lines.append(f"| {line['row']} | " + " | ".join(_fmt(line[k], 4) for k in dyn) + " |")
    return "\n".join(lines) + "\n"


def _diff_section(diffs: pd.DataFrame, title: str) -> list[str]:
    if diffs.empty:
        return []
    lines = ["", f"## {title}", "",
             "Δ = how much better the row is (positive = better: energy_ratio and |magnitude_ratio - 1| are "
             "negated), paired by group and seed, with its 95% interval; a verdict only where the interval "
             f"excludes 0, else \"{NO_CLEAR}\". (1 seed): the interval covers the sampling of test groups but not "
             "training randomness; run more seeds (stx run --variant all --seeds 3) before trusting a small "
             "difference.", "",
             "| row | versus | " + " | ".join(m for m in ALL_METRICS if m in set(diffs["metric"])) + " |"]
    metrics = [m for m in ALL_METRICS if m in set(diffs["metric"])]
    lines.append("|---|---|" + "---|" * len(metrics))
    for (row, versus), sub in diffs.groupby(["row", "versus"], sort=False):
        cells = []
        for metric in metrics:
            hit = sub[sub["metric"] == metric]
            if hit.empty:
                cells.append("n/a")
                continue
            d = hit.iloc[0]
            one = " (1 seed)" if d["seeds"] < 2 else ""
            cells.append(f"{d['delta']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] {d['verdict']}{one}")
        lines.append(f"| {row} | {versus} | " + " | ".join(cells) + " |")
    return lines


def summary_lines(table: pd.DataFrame, diffs: pd.DataFrame) -> list[str]:
    """Console lines: each learned variant's headline and its verdicts, never a win the
    intervals do not support."""
    lines = []
    for _, line in table[(table["kind"] == "variant") & (table["row"] != "baseline")].iterrows():
        head = f"{line['row']}: energy_ratio {_cell(line, 'energy_ratio')}"
        verdicts = []
        for versus, sub in diffs[diffs["row"] == line["row"]].groupby("versus", sort=False):
            sub = sub[sub["metric"].isin(METRICS)]
            won = [m for m, v in zip(sub["metric"], sub["verdict"], strict=True) if v == "better"]
            lost = [m for m, v in zip(sub["metric"], sub["verdict"], strict=True) if v == "worse"]
            even = [m for m, v in zip(sub["metric"], sub["verdict"], strict=True) if v == NO_CLEAR]
            parts = [f"better on {', '.join(won)}" if won else "", f"worse on {', '.join(lost)}" if lost else "",
                     f"{NO_CLEAR} on {', '.join(even)}" if even else ""]
            one = " (1 seed)" if len(sub) and sub["seeds"].min() < 2 else ""
            verdicts.append(f"vs {versus}{one}: " + "; ".join(p for p in parts if p))
        lines.append(head + (" | " + " | ".join(verdicts) if verdicts else ""))
    return lines
