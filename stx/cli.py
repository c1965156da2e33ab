"""The `stx` command line. Each command parses, loads config, and calls one function.

Heavy imports (torch, mlflow, anndata) happen inside the commands so `stx --help` is instant.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from stx import __version__
from stx.errors import StxError

log = logging.getLogger("stx")


class _Group(click.Group):
    """Turns user errors into one line on stderr and exit code 2, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except StxError as err:
            click.secho(f"error: {err}", fg="red", err=True)
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            click.secho("interrupted", fg="yellow", err=True)
            sys.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as err:
            if logging.getLogger("stx").level <= logging.DEBUG:
                raise
            first = str(err).splitlines()[0][:300] if str(err) else ""
            click.secho(f"error: internal error: {err.__class__.__name__}: {first} "
                        f"(run 'stx -v ...' for the traceback)", fg="red", err=True)
            sys.exit(1)


def _setup_logging(verbose: bool) -> None:
    from stx.api import setup_logging

    setup_logging(verbose)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="stx")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """Fine-tune Arc's State Transition model on a new perturbation and compare variants.

    \b
    stx run --variant velocity            fine-tune on the embedded demo, tracked in MLflow
    stx run --variant all --seeds 3       the five variants, then stx compare
    stx run --resume last                 continue a killed run
    stx compare                           variant-versus-baseline tables and figures
    stx sweep --variant lora --n-trials 20
    stx predict --model models:/stx-lora/1 --data IN.h5ad --out OUT.h5ad
    stx velocity --data IN.h5ad --basis X_state --out OUT.h5ad
    stx ui                                the MLflow UI on the store stx writes to
    stx data demo --out demo.h5ad         synthetic burn/sham wound-healing data
    stx data validate --config FILE.toml  check data against a config, show the split
    """
    _setup_logging(verbose)


def _config_options(func):  # noqa: ANN001 - decorator
    func = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                        help="Override a config key, e.g. --set model.lora.r=8 (repeatable).")(func)
    return click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
                        help="TOML config; default: the embedded demo config.")(func)


def _tracking_option(func):  # noqa: ANN001 - decorator
    return click.option("--tracking-uri", metavar="URI",
                        help="MLflow store; default MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db.")(func)


# ---------------------------------------------------------------- run


@cli.command()
@click.option("--variant", metavar="VARIANT",
              help="baseline, lora, lora-mhc, lora-velocity, lora-mhc-velocity (aliases: velocity, mhc, "
                   "mhc-velocity), or all. Required unless --resume.")
@_config_options
@click.option("--seed", type=click.IntRange(min=0), help="Seed (overrides trainer.seed).")
@_tracking_option
@click.option("--experiment", metavar="NAME", help="MLflow experiment (default: from the config).")
@click.option("--devices", type=click.IntRange(min=1), help="Processes/GPUs (overrides trainer.devices).")
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --variant all: runs per variant (seeds seed, seed+1, ...).")
@click.option("--resume", "resume", metavar="RUN_ID|last",
              help="Continue a killed run from its newest checkpoint, into the same MLflow run.")
@click.option("--abandon", metavar="RUN_ID|last", help="End a run that cannot be resumed as KILLED.")
def run(variant: str | None, config_path: Path | None, overrides: tuple[str, ...], seed: int | None,
        tracking_uri: str | None, experiment: str | None, devices: int | None, seeds: int,
        resume: str | None, abandon: str | None) -> None:
    """Fine-tune (or, for baseline, only evaluate) one variant; everything goes to MLflow.

    `--variant all` trains the five variants one after another (`--seeds N` times each) and
    ends with `stx compare` over those runs.
    """
    import signal

    from stx import api
    from stx.variants import resolve_variant

    # SIGTERM (a scheduler's kill) ends the run KILLED, like Ctrl-C
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if abandon:
        run_id = api.abandon(abandon, tracking_uri=tracking_uri, experiment=experiment)
        click.echo(f"Run {run_id} is now KILLED (tag stx.error says it was abandoned); start it again with stx run.")
        return
    if resume:
        if variant or config_path or overrides or seed is not None:
            raise StxError("--resume continues a run with its own variant and config; pass no --variant, "
                           "--config, --set or --seed with it")
        click.echo(_run_paragraph(api.resume(resume, tracking_uri=tracking_uri, experiment=experiment,
                                             devices=devices)))
        return
    if not variant:
        raise StxError("--variant is required (or --resume RUN_ID to continue a run)")
    if variant != "all":
        resolve_variant(variant)  # an unknown name fails before any data is read
        summary = api.run(variant, config_path, overrides, seed=seed, tracking_uri=tracking_uri,
                          experiment=experiment, devices=devices)
        if summary is not None:
            click.echo(_run_paragraph(summary))
        return
    if seed is not None:
        overrides = (*overrides, f"trainer.seed={seed}")
    _, result = api.run_all(config_path, overrides, seeds=seeds, tracking_uri=tracking_uri, experiment=experiment,
                            devices=devices, on_run=lambda summary: click.echo(_run_paragraph(summary)))
    click.echo(_compare_paragraph(result, result.tracking_uri))


def _run_paragraph(s) -> str:  # noqa: ANN001
    from stx.evaluate.metrics import METRICS
    from stx.tracking.store import mask_secrets

    def fmt(key: str, source: dict) -> str:
        value = source.get(key)
        return "n/a" if value is None else f"{value:.3f}"

    shown = [m for m in (*METRICS, "cell_cos") if f"eval/{m}" in s.metrics]
    refs = [r for r in ("mean_shift", "truth") if f"ref/{r}/energy_ratio" in s.reference]
    metrics = ", ".join(f"{m} {fmt('eval/' + m, s.metrics)} ("
                        + ", ".join(f"{r} {fmt(f'ref/{r}/{m}', s.reference)}" for r in refs) + ")" for m in shown)
    model = f" Registered as {s.model_uri}." if s.model_uri else ""
    ui = "stx ui" if s.tracking_uri.startswith("sqlite") else f"the MLflow UI at {mask_secrets(s.tracking_uri)}"
    if s.held:
        folder = Path(s.held).parent
        return (f"\nRun {s.run_name} ({s.run_id}) finished locally in {s.wall_time_s:.0f} s, but the tracking store "
                f"{mask_secrets(s.tracking_uri)} did not take all of its records (metrics, artifacts, model, final "
                f"status): they are held in {s.held}. Held-out test metrics: {metrics}. Outputs: {folder}. "
                f"When the store is back, send them with:\n  stx sync {folder}")
    return (f"\nRun {s.run_name} ({s.run_id}) finished in {s.wall_time_s:.0f} s in experiment "
            f"'{s.experiment}' of {mask_secrets(s.tracking_uri)}. Held-out test metrics: {metrics}."
            f"{model} Artifacts (checkpoints, predictions, plots): {mask_secrets(s.artifact_uri)}. "
            f"Open {ui} to see curves, artifacts{' and the registered model' if s.model_uri else ''}.")


# ---------------------------------------------------------------- sweep


@cli.command()
@click.option("--variant", required=True, metavar="VARIANT", help="Variant whose hyperparameters are tuned.")
@click.option("--n-trials", type=click.IntRange(min=1), required=True, help="Trials in the study (all workers).")
@_config_options
@click.option("--storage", metavar="URL", help="Optuna storage (SQLAlchemy URL); default sqlite:///mlruns/optuna.db.")
@click.option("--study", metavar="NAME", help="Study name (share it across machines); default <variant>-<time>.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Worker processes here.")
@click.option("--timeout", type=click.FloatRange(min=1), help="Stop starting trials after this many seconds.")
@click.option("--sampler", type=click.Choice(["tpe", "random", "cmaes"]), default="tpe", show_default=True)
@click.option("--pruner", type=click.Choice(["median", "hyperband", "none"]), default="median", show_default=True)
@click.option("--new", is_flag=True, help="Refuse to join an existing study of that name (default: join it, so "
                                          "workers on several machines share one study).")
@click.option("--resume", is_flag=True, hidden=True, help="Join an existing study (the default; kept for scripts).")
@_tracking_option
@click.option("--experiment", metavar="NAME", help="MLflow experiment (default: from the config).")
def sweep(variant: str, n_trials: int, config_path: Path | None, overrides: tuple[str, ...], storage: str | None,
          study: str | None, workers: int, timeout: float | None, sampler: str, pruner: str, new: bool,
          resume: bool, tracking_uri: str | None, experiment: str | None) -> None:
    """Tune LoRA rank, learning rate (and velocity lambda) with Optuna; trials are nested MLflow runs."""
    from stx import api
    from stx.tracking.store import mask_secrets, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    summary = api.sweep(variant, n_trials, config_path, overrides, storage=storage, study=study, workers=workers,
                        timeout=timeout, sampler=sampler, pruner=pruner, tracking_uri=uri, experiment=experiment,
                        new=new)
    best = (f"best {summary.best_value:.4f} with {summary.best_params} (run {summary.best_run_id})"
            if summary.best_value is not None else "no trial completed")
    click.echo(f"Study '{summary.study}' in {summary.storage}: {summary.n_trials} trials in {summary.seconds:.0f} s; "
               f"{best}. {('Champion: ' + summary.champion + '.') if summary.champion else ''} Parent MLflow run "
               f"{summary.parent_run_id} in {mask_secrets(uri)} holds the plots and trials.csv; open stx ui, or "
               f"stx compare to use the champion.")


# ---------------------------------------------------------------- compare


@cli.command("compare")
@click.option("--experiment", metavar="NAME", help="Only runs of this MLflow experiment.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for tables and figures (default results/<experiment>-<runs>).")
@click.option("--runs", type=click.Choice(["registry", "all"]), default="registry", show_default=True,
              help="registry: the champion (else newest) version of each stx-* model; all: every finished run.")
@click.option("--allow-mixed", is_flag=True, help="Compare runs trained on different data sets.")
@click.option("--trials", is_flag=True, help="With --runs all: include sweep trials (each configuration its own row).")
@click.option("--projection", type=click.Choice(["auto", "umap", "pca"]), default="auto", show_default=True,
              help="2-D map of the cell figures (auto: PCA for embeddings of <= 100 dims, else UMAP).")
@_tracking_option
def compare_command(experiment: str | None, out: Path | None, runs: str, allow_mixed: bool, trials: bool,
                    projection: str, tracking_uri: str | None) -> None:
    """Variant-versus-reference tables and figures from the MLflow registry (or all runs)."""
    from stx import api

    result = api.compare(experiment, runs, out, tracking_uri=tracking_uri, allow_mixed=allow_mixed,
                         projection=projection, trials=trials)
    click.echo(_compare_paragraph(result, result.tracking_uri))


def _compare_paragraph(result, uri: str) -> str:  # noqa: ANN001
    from stx.tracking.store import mask_secrets

    lines = "\n".join(f"  {line}" for line in result.summary) or "  no learned variant"
    return (f"Compared {result.n_runs} runs in {result.seconds:.1f} s (95% bootstrap intervals over test groups and "
            f"seeds; a verdict only where the interval excludes 0):\n{lines}\nTables and figures in "
            f"{result.out_dir}/ (comparison.md first)"
            + (f"; also logged as run {result.run_id} in {mask_secrets(uri)}." if result.run_id else "."))


# ---------------------------------------------------------------- predict


@cli.command()
@click.option("--model", "model_uri", required=True, metavar="URI",
              help="models:/stx-lora/1, runs:/RUN_ID/model, a run id, or a local model folder.")
@click.option("--data", "data_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Input .h5ad with control cells.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Output .h5ad.")
@click.option("--condition", metavar="NAME", help="Predict only this condition (default: every non-control one).")
@click.option("--time", metavar="LABEL", help="Predict at this time point (default: each cell's own; for a model "
                                              "trained with data.control_time, every later time point).")
@_tracking_option
def predict(model_uri: str, data_path: Path, out: Path, condition: str | None, time: str | None,
            tracking_uri: str | None) -> None:
    """Predict perturbed cells from the control cells of an .h5ad."""
    from stx import api

    s = api.predict(model_uri, data_path, out, condition, time, tracking_uri=tracking_uri)
    where = "X" if s.embed_key == "X" else f"obsm['{s.embed_key}']"
    trained = f", trained in run {s.run_id}" if s.run_id else ""
    click.echo(f"Wrote {s.path}: {s.n_cells} predicted cells from the control cells of {data_path} "
               f"(model {model_uri}, variant {s.variant}{trained}), in the input's order; embeddings in "
               f"{where}, source cell in obs['source_cell'].")


# ---------------------------------------------------------------- velocity


@cli.command()
@click.option("--data", "data_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Input .h5ad with layers['spliced'] and layers['unspliced'].")
@click.option("--basis", required=True, metavar="OBSM_KEY", help="Embedding to express velocity in (e.g. X_state).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Output .h5ad.")
@click.option("--projection", type=click.Choice(["auto", "transition", "linear"]), default="auto", show_default=True,
              help="transition: scVelo's transition-matrix projection (any embedding, direction only); linear: "
                   "exact push-forward through varm loadings (auto: linear when --loadings exists).")
@click.option("--loadings", metavar="VARM_KEY", help="varm key of the embedding's gene loadings (linear projection).")
@click.option("--no-log1p", is_flag=True, help="The embedding is linear in normalised counts, not in log1p of them.")
@click.option("--n-neighbors", type=click.IntRange(min=2), default=30, show_default=True, help="kNN size for moments.")
@click.option("--no-cache", is_flag=True, help="Recompute even if this input was prepared before.")
def velocity(data_path: Path, basis: str, out: Path, projection: str, loadings: str | None, no_log1p: bool,
             n_neighbors: int, no_cache: bool) -> None:
    """Compute RNA velocity with scVelo and express it in an embedding (obsm['velocity_<basis>'])."""
    from stx.data.velocity import prepare_velocity

    if out.suffix != ".h5ad":
        raise StxError(f"{out}: the output file must end in .h5ad")
    report = prepare_velocity(data_path, basis, out, projection=projection, loadings_key=loadings,
                              log1p=not no_log1p, n_neighbors=n_neighbors, use_cache=not no_cache)
    magnitude = ("its magnitude is calibrated (linear push-forward)" if report.projection == "linear"
                 else "only its direction is meaningful (transition-matrix projection of unit displacements)")
    click.echo(f"Wrote {out} in {report.seconds:.1f} s{' (from cache)' if report.cached else ''}: "
               f"obsm['{report.key}'] ({report.projection} projection; {magnitude}) and obs['velocity_confidence'] "
               f"(mean {report.mean_confidence:.2f}). scVelo {report.scvelo} in {report.mode} mode (its stochastic "
               f"mode fails on NumPy >= 2.4). Train with: stx run --variant velocity --set "
               f"model.velocity.velocity_key={report.key}")


# ---------------------------------------------------------------- sync


@cli.command()
@click.argument("where", type=click.Path(exists=True, path_type=Path))
@_tracking_option
def sync(where: Path, tracking_uri: str | None) -> None:
    """Send what a run held back while the tracking store was unreachable.

    WHERE is the run's output folder (stx_outputs/RUN_ID) or its outbox.jsonl. Metrics,
    artifacts, the model registration and the final status are sent in their original
    order; each is dropped from the outbox as it lands, so an interrupted sync resumes.
    """
    from stx.tracking.store import resolve_tracking_uri
    from stx.tracking.sync import sync_outbox

    uri = resolve_tracking_uri(tracking_uri)
    done = sync_outbox(where, uri)
    click.echo(f"Sent {done.sent} held operations ({done.metric_values} metric values, {done.artifacts} artifacts"
               f"{', the model registration' if done.registered else ''}) to run {done.run_id}; its status is now "
               f"{done.status}. The outbox is kept as {done.archived.name}.")


# ---------------------------------------------------------------- ui


@cli.command()
@_tracking_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True, help="Port.")
@click.option("--experiment", metavar="NAME", help="Experiment to open (default: the embedded default's, stx-demo).")
@click.option("--workers", type=click.IntRange(min=1), help="Server processes (default: half the cores, at most 4).")
def ui(tracking_uri: str | None, host: str, port: int, experiment: str | None, workers: int | None) -> None:
    """Start the MLflow UI on the same store `stx run` writes to, opened on the training view."""
    from stx.tracking.store import mask_secrets, resolve_tracking_uri
    from stx.tracking.views import ui_url

    uri = resolve_tracking_uri(tracking_uri)
    if not uri.startswith(("sqlite:", "postgresql", "mysql", "file:", "/")):
        raise StxError(f"{mask_secrets(uri)} is a tracking server already; open it in a browser")
    url = ui_url(host, port, uri, experiment)
    # MLflow's default of 4 workers takes minutes to answer on a busy 2-core machine
    workers = workers or max(1, min(4, (os.cpu_count() or 2) // 2))
    click.echo(f"MLflow UI for {mask_secrets(uri)} ({workers} worker{'s' if workers > 1 else ''}): open {url} "
               f"(the training view: held-out metrics as bars per run, grouped by stx.variant). Ctrl-C to stop.")
    sys.stdout.flush()
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port),
           "--workers", str(workers)]
    # become the server, so Ctrl-C and SIGTERM reach it directly
    os.execv(sys.executable, cmd)


# ---------------------------------------------------------------- data


@cli.group(cls=_Group)
def data() -> None:
    """Generate the demo data set, or validate data against a config."""


@data.command("demo")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Where to write the .h5ad.")
@click.option("--cells", type=click.IntRange(min=100), default=8000, show_default=True,
              help="Number of cells (60000 for benchmarks).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of cells, mice and noise (the gene programs are fixed).")
@click.option("--world", default="burn", show_default=True, metavar="NAME",
              help="burn (the study's design), velocity-aligned, velocity-misleading or time-switch (see --describe).")
@click.option("--describe", is_flag=True,
              help="Measure and print each world's properties (with --world: that world only; runs scVelo).")
def data_demo(out: Path | None, cells: int, seed: int, world: str, describe: bool) -> None:
    """Write the synthetic burn/sham wound-healing data set of a world (with its ground truth)."""
    import time

    from stx.data.builtin import write_demo
    from stx.data.demo import WORLDS

    if world not in WORLDS:
        raise StxError(f"--world {world}: unknown world; worlds: {', '.join(WORLDS)}")
    if describe:
        chosen = click.get_current_context().get_parameter_source("world") != click.core.ParameterSource.DEFAULT
        worlds = [world] if chosen or out is not None else list(WORLDS)
        _describe_worlds(worlds, cells, seed)
        if out is None:
            return
    if out is None:
        raise StxError("--out FILE.h5ad is required (or --describe)")
    if out.suffix != ".h5ad":
        raise StxError(f"{out}: the output file must end in .h5ad")
    start = time.perf_counter()
    write_demo(out, n_cells=cells, seed=seed, world=world)
    click.echo(
        f"Wrote {out} (world {world}, {cells} cells, seed {seed}) in {time.perf_counter() - start:.1f} s: "
        f"conditions Sham/Burn in obs['condition'], cell types in obs['cell_types_simple_short'], "
        f"mice in obs['mouse_id'], days in obs['day'], embedding in obsm['X_state'], "
        f"spliced/unspliced layers for scVelo, ground truth in uns['truth'] (group means), "
        f"obsm['truth_response'] (each cell's counterfactual Burn-minus-Sham response) and "
        f"obsm['truth_velocity']. Check it with: stx data validate --set datasets.demo={out}"
    )


def _describe_worlds(worlds: list[str], cells: int, seed: int) -> None:
    import anndata as ad
    from rich.console import Console
    from rich.table import Table

    from stx.data.builtin import builtin_dataset
    from stx.data.demo import WORLDS
    from stx.data.demo_report import describe_world
    from stx.data.velocity import prepare_velocity

    grid = Table(box=None)
    grid.add_column("world", no_wrap=True)  # the name is what a user types: never cut it
    for header in ("cells", "along", "cos true v", "cos scVelo v", "within", "noise", "|resp|"):
        grid.add_column(header, justify="right")
    for name in worlds:
        path = builtin_dataset(f"demo?world={name}&cells={cells}&seed={seed}")
        report = prepare_velocity(path, "X_state", None, projection="linear", loadings_key="state_loadings")
        p = describe_world(ad.read_h5ad(path), ad.read_h5ad(report.out).obsm[report.key])
        grid.add_row(name, str(p.n_cells), f"{p.along_share:.2f}", f"{p.cos_true_velocity:+.2f}",
                     f"{p.cos_scvelo_velocity:+.2f}", f"{p.within_share:.2f}", f"{p.noise_ratio:.2f}",
                     f"{p.response_norm:.2f}")
    console = Console()
    console.print(grid)
    for name in worlds:
        console.print(f"{name}: {WORLDS[name].summary}", highlight=False)
    console.print("along: share of the Burn response's energy along each Sham cell's true velocity; "
                  "cos: mean per-cell cosine of the response with the true / scVelo-estimated velocity; "
                  "within: share of the response that differs from cell to cell within a (cell type, "
                  "day) group; noise: that per-cell spread over cell noise (counting noise and mouse "
                  "effects); |resp|: the response's mean norm in the embedding. Use a world in a config as "
                  "builtin:demo?world=NAME.", highlight=False)


@data.command("validate")
@_config_options
def data_validate(config_path: Path | None, overrides: tuple[str, ...]) -> None:
    """Load the config's data sets, check them, and summarise cells and the split."""
    from rich.console import Console
    from rich.table import Table

    from stx.config import load_config
    from stx.data.summary import batch_confounding, counts_table, headline
    from stx.preflight import preflight

    cfg = load_config(config_path, overrides)
    checked = preflight(cfg)
    table, split, plan, design = checked.table, checked.split, checked.plan, checked.design
    console = Console()
    for line in headline(table, split):
        console.print(line, highlight=False)
    if plan.names:
        console.print(f"model inputs besides the control cells: {', '.join(plan.names)}", highlight=False)
    for task in design.tasks:
        size = min(len(task.fed), len(task.reference), len(task.real))
        if size < cfg.data.min_group_cells:
            label = table.spec.group_label(*table.group_name(task.group))
            console.print(f"small test group ({label}): {len(task.fed)} + {len(task.reference)} control cells "
                          f"(fed / reference halves), {len(task.real)} {table.spec.perts[task.pert]} cells: below "
                          f"data.min_group_cells = {cfg.data.min_group_cells}, left out of the headline means",
                          style="yellow", highlight=False)
    if warning := batch_confounding(table, cfg.data.batch_col):
        console.print(f"note: {warning}", style="yellow", highlight=False)
    ckpt = checked.checkpoint
    console.print(f"checkpoint {cfg.model.checkpoint}: {ckpt['input_dim']} dims in and out, sets of "
                  f"{ckpt['cell_set_len']} cells, {len(ckpt['perts'])} perturbations", highlight=False)
    counts = counts_table(table, split)
    grid = Table(*[*counts.index.names, *[f"{s} {c}" for s, c in counts.columns]], box=None)
    for index, row in counts.iterrows():
        index = index if isinstance(index, tuple) else (index,)
        grid.add_row(*map(str, index), *map(str, row.tolist()))
    console.print(grid)
    console.print(f"OK: {cfg.source} is valid.", style="green", highlight=False)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="stx")


if __name__ == "__main__":
    main()
