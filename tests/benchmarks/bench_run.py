"""The two small commands users run first, timed as they run them: `stx run --variant baseline`
and README's `stx run --variant velocity`, each the real command in a fresh process on the
embedded demo.

    python tests/benchmarks/bench_run.py [--repeat 3] [--variants baseline,velocity]
                                         [--store DIR] [--baseline-src DIR]

The store (`--store`, default `$TMPDIR/stx-bench-run`) is a working folder with its own
`mlruns/` (the embedded default SQLite store) and data cache; a first, untimed run of each
variant creates the store, prepares the demo data and its velocity cache, so the timed runs
are what README promises: "once the data are prepared". Every timed run is checked: exit 0,
a finished run in the store with its held-out metrics, its plots and its registered model.

With `--baseline-src` (a folder holding another `stx` package, e.g. `git worktree add /tmp/old
HEAD~1`), the two codes alternate run by run (A B B A ...); otherwise the ratio is to the
figures recorded in the performance issue (BEFORE_S).

Prints one line per variant: median wall and CPU (user + sys of the child), the ratio to the
before figure and to the goal, and the conditions (threads, cores, device).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Wall seconds before the performance work, as the performance issue recorded them: a baseline
# run 22-88 s (the lower figure taken), README's velocity run 86 s on 2 cores.
BEFORE_S = {"baseline": 22.0, "velocity": 86.0}
GOAL_S = {"baseline": 15.0, "velocity": 30.0}
PLOTS = ("loss.png", "grad_norm.png", "cells_pca.png")


def _env(src: Path | None, cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    env.setdefault("OMP_NUM_THREADS", "2")
    env["STX_CACHE_DIR"] = str(cache)
    env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    if src is not None:
        env["PYTHONPATH"] = f"{src}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(src)
    return env


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _check(store: Path, variant: str, stdout: str) -> None:
    """The run finished, with held-out metrics, plots and a registered model."""
    from mlflow import MlflowClient

    found = re.search(r"^Run \S+ \(([0-9a-f]{32})\) finished", stdout, re.M)
    if found is None:
        raise SystemExit(f"{variant}: no finished run in the output:\n{stdout[-2000:]}")
    run_id = found.group(1)
    client = MlflowClient(f"sqlite:///{store / 'mlruns' / 'mlflow.db'}")
    run = client.get_run(run_id)
    missing = [k for k in ("eval/energy_ratio", "eval/pearson_delta", "ref/mean_shift/energy_ratio") if k not in run.data.metrics]
    plots = {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run_id, "plots")}
    missing += [p for p in PLOTS if p not in plots]
    if run.info.status != "FINISHED" or missing or "Registered as models:/" not in stdout:
        raise SystemExit(f"{variant} run {run_id}: status {run.info.status}, missing {missing}:\n{stdout[-2000:]}")


def run_once(store: Path, variant: str, src: Path | None) -> tuple[float, float]:
    """`python -m stx run --variant VARIANT` in a fresh process: wall and CPU seconds."""
    cpu, start = _children_cpu(), time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "stx", "run", "--variant", variant], cwd=store,
                          env=_env(src, store / "cache"), capture_output=True, text=True)
    wall, cpu = time.perf_counter() - start, _children_cpu() - cpu
    if proc.returncode != 0:
        raise SystemExit(f"stx run --variant {variant} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    _check(store, variant, proc.stdout)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description="stx run (baseline, README's velocity run) in a fresh process")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--variants", default="baseline,velocity")
    parser.add_argument("--store", type=Path, help="working folder, reused (default $TMPDIR/stx-bench-run)")
    parser.add_argument("--baseline-src", type=Path, help="a folder holding the stx package to compare against")
    args = parser.parse_args()
    store = (args.store or Path(tempfile.gettempdir()) / "stx-bench-run").resolve()
    store.mkdir(parents=True, exist_ok=True)
    if args.repeat < 1:
        raise SystemExit("--repeat: expected at least 1")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in GOAL_S]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; expected some of {sorted(GOAL_S)}")
    sides = [("after", None)] + ([("before", args.baseline_src.resolve())] if args.baseline_src else [])
    for variant in variants:  # untimed: creates the store, the data and velocity caches
        for _, src in sides:
            run_once(store, variant, src)
    results: dict[tuple[str, str], dict[str, list[float]]] = {}
    for k in range(args.repeat):
        for variant in variants:
            for side, src in sides if k % 2 == 0 else sides[::-1]:
                wall, cpu = run_once(store, variant, src)
                res = results.setdefault((variant, side), {})
                res.setdefault("wall", []).append(wall)
                res.setdefault("cpu", []).append(cpu)
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    conditions = (f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '2')}, {os.cpu_count()} cores, {device}, "
                  f"median of {args.repeat}, warm store and data cache")
    for variant in variants:
        a = {k: statistics.median(v) for k, v in results[(variant, "after")].items()}
        if (variant, "before") in results:
            before = statistics.median(results[(variant, "before")]["wall"])
            vs = f"before {before:.1f} s measured here: x{a['wall'] / before:.2f}"
        else:
            before = BEFORE_S[variant]
            vs = f"issue's figure {before:.0f} s: x{a['wall'] / before:.2f}"
        print(f"stx run --variant {variant}: {a['wall']:.1f} s wall / {a['cpu']:.1f} s CPU ({vs}; goal "
              f"{GOAL_S[variant]:.0f} s: x{a['wall'] / GOAL_S[variant]:.2f}; runs {min(results[(variant, 'after')]['wall']):.1f}-"
              f"{max(results[(variant, 'after')]['wall']):.1f} s) [{conditions}]")


if __name__ == "__main__":
    main()
