"""Held-out evaluation at the study's size: 57,298 cells x 2,000 dims, per (cell type, day).

    python tests/benchmarks/bench_eval.py [--cells 57298] [--dims 2000]

Prints the wall time of `stx.evaluate.report.evaluate` (goal < 60 s on 2 cores) and the
largest energy-distance error that subsampling (above ENERGY_MAX_CELLS cells per set)
introduces on the largest group, against the exact blockwise value.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from stx.data.load import CellTable, DataSpec
from stx.data.split import Split
from stx.evaluate.metrics import ENERGY_MAX_CELLS, energy_distance
from stx.evaluate.predict import Predictions
from stx.evaluate.report import evaluate, summarize


def main() -> None:
    parser = argparse.ArgumentParser(description="evaluation benchmark")
    parser.add_argument("--cells", type=int, default=57298)
    parser.add_argument("--dims", type=int, default=2000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n, d = args.cells, args.dims
    cell_type = rng.choice(6, n, p=[0.4, 0.2, 0.15, 0.1, 0.1, 0.05])
    day = rng.integers(0, 3, n)
    pert = rng.integers(0, 2, n)
    shift = rng.normal(size=(6, 3, d)).astype(np.float32) * 0.3
    emb = rng.normal(size=(n, d)).astype(np.float32) + pert[:, None] * shift[cell_type, day]
    spec = DataSpec("X_state_2000", d, ("Sham", "Burn"), 0, tuple(f"ct{i}" for i in range(6)), ("m",),
                    ("10", "14", "19"), True, ("d",))
    table = CellTable(emb, pert, cell_type, np.zeros(n, np.int64), day, np.zeros(n, np.int64),
                      np.array([f"c{i}" for i in range(n)], dtype=object), spec, ())
    codes = np.where(rng.random(n) < 0.5, 2, 0).astype(np.int8)  # half the cells held out
    split = Split(codes, "cell", "benchmark")
    ctrl = np.flatnonzero((codes == 2) & (pert == 0))
    preds = Predictions(ctrl, np.ones(len(ctrl), np.int64), emb[ctrl] + shift[cell_type[ctrl], day[ctrl]])
    start = time.perf_counter()
    frame = evaluate(table, split, preds)
    seconds = time.perf_counter() - start
    summary = summarize(frame)
    print(f"evaluate: {n} cells x {d} dims, {len(frame)} groups, {len(ctrl)} predictions: {seconds:.1f} s "
          f"(goal < 60 s); energy_ratio {summary['eval/energy_ratio']:.3f}, pearson_delta "
          f"{summary['eval/pearson_delta']:.3f}")
    big = (codes == 2) & (cell_type == 0)  # all days pooled: a set larger than the subsampling cap
    a, b = emb[big & (pert == 0)], emb[big & (pert == 1)]
    start = time.perf_counter()
    exact = energy_distance(a, b, max_cells=10**9)
    exact_s = time.perf_counter() - start
    approx = energy_distance(a, b)
    print(f"a pooled set of {len(a)} vs {len(b)} cells: subsampled to {ENERGY_MAX_CELLS} per set, energy distance "
          f"{approx:.4f} vs exact {exact:.4f} (relative error {abs(approx - exact) / exact:.2%}; exact took "
          f"{exact_s:.1f} s)")


if __name__ == "__main__":
    main()
