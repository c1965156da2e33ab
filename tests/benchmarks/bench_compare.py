"""`stx compare` over a store of 500 runs, timed as users run it: the real command, in a
fresh process.

    python tests/benchmarks/bench_compare.py [--runs 500] [--store DIR] [--repeat 3]
                                             [--baseline-src DIR]

The store is built once and reused (`--store`, default `$TMPDIR/stx-bench-compare-<N>`):
five real short runs made with `stx run` (lora, lora-mhc, lora-velocity, lora-mhc-velocity,
baseline; a different seed each; about 8 minutes on 2 cores), then copies of them made with
the MLflow client up to N runs: the same tags and params (trainer.seed 100, 101, ... shared
across variants), every metric history, and their artifacts (config/resolved.toml,
data/split.csv, eval/metrics_by_group.csv with its metric columns jittered, predictions,
plots; not the checkpoints, which compare never reads).
Every run is registered as a version of its `stx-<variant>` model, so the default registry
mode has a realistic registry (about N/5 versions per model) to choose from.

Timed, `--repeat` times each (alternating with the code under `--baseline-src`, a folder
that holds another `stx` package, e.g. `git worktree add /tmp/old HEAD~1`, where given):

  - `python -m stx compare --runs all` in a fresh process: wall and CPU (user + sys of the
    child), every figure checked, no "not drawn" warning allowed;
  - the compare work itself in a fresh process whose imports are done first (the modules
    the command loads, recorded from a first run): wall and CPU, and that import time;
  - `python -m stx compare` (registry mode) in a fresh process.

Prints one line: medians, ratio to the before figure (measured here with `--baseline-src`,
else BEFORE_S below, measured on the pre-change code) and to the 1 s goal, runs, figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

# `python -m stx compare --runs all` on the 500-run store in a fresh process before the change
# (one download_artifacts per run, a pivot per metric and row, BLAS threads): median of 3
# alternating with the new code, 2 busy cores, OMP_NUM_THREADS=2 (45.1 s CPU)
BEFORE_S = 49.8
GOAL_S = 1.0
REAL = (("lora", 1), ("lora-mhc", 2), ("lora-velocity", 3), ("lora-mhc-velocity", 4), ("baseline", 5))
RUN_ARGS = ("--set", "trainer.max_steps=10", "--set", "trainer.val_every_n_steps=5", "--set",
            "tracking.projection=pca", "--set", "tracking.register_model=false")
FIGURES = ("loss_curves.png", "grad_norm_curves.png", "metric_bars.png", "energy_ratio_heatmap.png", "cells_pca.png",
           "trajectories.png")
COPIED = ("config", "data", "eval", "predictions", "plots")  # the artifact folders copied (not checkpoints)
REGISTRY_TAGS = ("stx.variant", "stx.data_sha256", "stx.steps", "stx.config_digest")


def _env(src: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    env.setdefault("OMP_NUM_THREADS", "2")
    env.setdefault("STX_CACHE_DIR", str(Path(tempfile.gettempdir()) / "stx-bench-cache"))
    env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    if src is not None:
        env["PYTHONPATH"] = f"{src}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(src)
    return env


def _uri(store: Path) -> str:
    return f"sqlite:///{store / 'mlruns' / 'mlflow.db'}"


def _finished(client) -> list:
    ids = [e.experiment_id for e in client.search_experiments()]
    out, token = [], None
    while True:
        page = client.search_runs(ids, "attributes.status = 'FINISHED' and tags.`stx.variant` != ''",
                                  max_results=1000, page_token=token)
        out += list(page)
        token = page.token
        if not token:
            return out


def _local(artifact_uri: str) -> Path:
    from urllib.parse import unquote, urlparse

    return Path(unquote(urlparse(artifact_uri).path))


def jitter(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """The metric columns times 1 +- 5% (another seed's values), the rest as they are."""
    from stx.evaluate.metrics import ALL_METRICS

    metrics = [m for m in ALL_METRICS if m in frame]
    return frame.assign(**{m: frame[m] * rng.normal(1, 0.05, len(frame)) for m in metrics})


def build(store: Path, n: int) -> None:
    """Real runs with `stx run` where missing, then copies up to `n` runs, then the registry."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    store.mkdir(parents=True, exist_ok=True)
    uri = _uri(store)
    have = {r.data.tags["stx.variant"] for r in _finished(MlflowClient(uri)) if "stx.bench.copy_of" not in r.data.tags} \
        if (store / "mlruns" / "mlflow.db").exists() else set()
    for variant, seed in REAL:
        if variant in have:
            continue
        print(f"real run: stx run --variant {variant} --seed {seed}", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "stx", "run", "--variant", variant, "--seed", str(seed), *RUN_ARGS],
                       cwd=store, env=_env(), check=True, stdout=subprocess.DEVNULL)
    client = MlflowClient(uri)
    runs = _finished(client)
    templates = sorted((r for r in runs if "stx.bench.copy_of" not in r.data.tags),
                       key=lambda r: [v for v, _ in REAL].index(r.data.tags["stx.variant"]))
    histories = {t.info.run_id: [m for k in t.data.metrics for m in client.get_metric_history(t.info.run_id, k)]
                 for t in templates}
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(len(runs), n):
            template = templates[i % len(templates)]
            tid = template.info.run_id
            # the copies of each variant share seeds 100, 101, ... (as `stx run --variant all --seeds N`)
            params = {**template.data.params, "trainer.seed": str(100 + i // len(templates))}
            tags = {k: v for k, v in template.data.tags.items() if k != "mlflow.runName"}
            tags["stx.bench.copy_of"] = tid
            run = client.create_run(template.info.experiment_id, start_time=template.info.start_time - 1000 * (i + 1),
                                    tags=tags, run_name=f"{template.data.tags['stx.variant']}-copy-{i}")
            rid = run.info.run_id
            metrics = [Metric(m.key, m.value, m.timestamp, m.step) for m in histories[tid]]
            items = [Param(k, v) for k, v in params.items()]
            for j in range(0, max(len(metrics), len(items)), 100):
                client.log_batch(rid, metrics=metrics[j:j + 100], params=items[j:j + 100])
            src = _local(template.info.artifact_uri)
            for folder in COPIED:
                if folder == "eval":
                    (Path(tmp) / "eval").mkdir(exist_ok=True)
                    jitter(pd.read_csv(src / "eval" / "metrics_by_group.csv"), rng).to_csv(
                        Path(tmp) / "eval" / "metrics_by_group.csv", index=False)
                    client.log_artifacts(rid, str(Path(tmp) / "eval"), "eval")
                elif (src / folder).is_dir():
                    client.log_artifacts(rid, str(src / folder), folder)
            client.set_terminated(rid, "FINISHED", end_time=template.info.end_time - 1000 * (i + 1))
            if (i + 1) % 50 == 0:
                print(f"copies: {i + 1}/{n} ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    _register(client, store)


def _register(client, store: Path) -> None:
    """Every run as a version of `stx-<variant>`, tagged as `stx run` tags it (once)."""
    marker = store / "registered.json"
    if marker.exists():
        return
    runs = sorted(_finished(client), key=lambda r: r.info.start_time)
    names = {r.data.tags["stx.variant"] for r in runs}
    for name in names:
        client.create_registered_model(f"stx-{name}")
    for run in runs:
        tags = {k: run.data.tags[k] for k in REGISTRY_TAGS if k in run.data.tags}
        exp = client.get_experiment(run.info.experiment_id)
        tags.update({"stx.experiment": exp.name, "stx.experiment_id": exp.experiment_id, "stx.run_id": run.info.run_id})
        client.create_model_version(f"stx-{run.data.tags['stx.variant']}", f"{run.info.artifact_uri}/model",
                                    run.info.run_id, tags=tags)
    marker.write_text(json.dumps({"versions": len(runs)}))


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def command(store: Path, mode: str, out: Path, src: Path | None) -> tuple[float, float, int, str]:
    """`python -m stx compare` in a fresh process: wall, CPU, figures produced, stdout."""
    shutil.rmtree(out, ignore_errors=True)
    args = [sys.executable, "-m", "stx", "compare", "--out", str(out), "--tracking-uri", _uri(store)]
    args += ["--runs", "all"] if mode == "all" else []
    cpu, start = _children_cpu(), time.perf_counter()
    proc = subprocess.run(args, cwd=store, env=_env(src), capture_output=True, text=True)
    wall, cpu = time.perf_counter() - start, _children_cpu() - cpu
    if proc.returncode != 0:
        raise SystemExit(f"stx compare failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}")
    missing = [f for f in FIGURES if not (out / f).is_file()]
    if missing or "not drawn" in proc.stderr:
        raise SystemExit(f"figures missing ({', '.join(missing)}) or skipped:\n{proc.stderr[-3000:]}")
    return wall, cpu, sum(1 for _ in out.glob("*.png")), proc.stdout


# run in a fresh process: import what the command imports (recorded by the first call), then
# time the compare itself
WORK = r"""
import json, sys, time
modules, out = json.loads(sys.argv[1]), sys.argv[2]
t0, c0 = time.perf_counter(), time.process_time()
if modules != "record":
    import importlib
    for name in json.load(open(modules)):
        try:
            importlib.import_module(name)
        except Exception:
            pass
t1, c1 = time.perf_counter(), time.process_time()
from stx.cli import cli
try:
    cli.main(sys.argv[3:], standalone_mode=False)
finally:
    t2, c2 = time.perf_counter(), time.process_time()
    if modules == "record":
        json.dump([m for m in sys.modules if m != "__main__" and not m.endswith(".__main__")], open(out, "w"))
    else:
        json.dump({"import_s": t1 - t0, "import_cpu": c1 - c0, "work_s": t2 - t1, "work_cpu": c2 - c1}, open(out, "w"))
"""


def work(store: Path, out: Path, modules: Path, src: Path | None) -> dict[str, float]:
    """The compare in a fresh process after its imports: wall and CPU of each part."""
    shutil.rmtree(out, ignore_errors=True)
    args = ["compare", "--runs", "all", "--out", str(out), "--tracking-uri", _uri(store)]
    if not modules.exists():
        subprocess.run([sys.executable, "-c", WORK, json.dumps("record"), str(modules), *args], cwd=store,
                       env=_env(src), check=True, capture_output=True)
        shutil.rmtree(out, ignore_errors=True)
    result = out.parent / f"{out.name}.json"
    subprocess.run([sys.executable, "-c", WORK, json.dumps(str(modules)), str(result), *args], cwd=store,
                   env=_env(src), check=True, capture_output=True)
    return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description="stx compare over a store of many runs, fresh process")
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--store", type=Path, help="built once and reused (default $TMPDIR/stx-bench-compare-N)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline-src", type=Path, help="a folder holding the stx package to compare against")
    args = parser.parse_args()
    store = (args.store or Path(tempfile.gettempdir()) / f"stx-bench-compare-{args.runs}").resolve()
    build(store, args.runs)
    results: dict[str, dict[str, list]] = {}
    sides = [("after", None)] + ([("before", args.baseline_src.resolve())] if args.baseline_src else [])
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.repeat):
            for side, src in sides if k % 2 == 0 else sides[::-1]:
                res = results.setdefault(side, {})
                wall, cpu, figures, stdout = command(store, "all", Path(tmp) / f"{side}-all", src)
                n = int(stdout.split("Compared ")[1].split(" runs")[0])
                for key, value in (("wall", wall), ("cpu", cpu), ("figures", figures), ("n", n)):
                    res.setdefault(key, []).append(value)
                for key, value in work(store, Path(tmp) / f"{side}-work", Path(tmp) / f"{side}-modules.json",
                                       src).items():
                    res.setdefault(key, []).append(value)
                wall, cpu, _, stdout = command(store, "registry", Path(tmp) / f"{side}-reg", src)
                res.setdefault("reg_wall", []).append(wall)
                res.setdefault("reg_cpu", []).append(cpu)
                res.setdefault("reg_n", []).append(int(stdout.split("Compared ")[1].split(" runs")[0]))
    med = {side: {k: statistics.median(v) for k, v in res.items()} for side, res in results.items()}
    a = med["after"]
    before = med["before"]["wall"] if "before" in med else BEFORE_S
    vs = f"before {before:.2f} s: x{a['wall'] / before:.2f}" if before else "before: not measured"
    extra = (f"; before: {med['before']['wall']:.2f} s wall / {med['before']['cpu']:.2f} s CPU, work "
             f"{med['before']['work_s']:.2f} s, registry {med['before']['reg_wall']:.2f} s") if "before" in med else ""
    print(f"stx compare --runs all, {a['n']:.0f} runs, fresh process (median of {args.repeat}): {a['wall']:.2f} s wall "
          f"/ {a['cpu']:.2f} s CPU ({vs}; goal {GOAL_S:g} s: x{a['wall'] / GOAL_S:.2f}); compare work after imports "
          f"{a['work_s']:.2f} s wall / {a['work_cpu']:.2f} s CPU (goal: x{a['work_s'] / GOAL_S:.2f}), its imports "
          f"{a['import_s']:.2f} s; {a['figures']:.0f}/{len(FIGURES)} figures; registry mode ({a['reg_n']:.0f} runs) "
          f"{a['reg_wall']:.2f} s wall / {a['reg_cpu']:.2f} s CPU{extra}")


if __name__ == "__main__":
    main()
