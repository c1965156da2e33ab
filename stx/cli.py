"""The `stx` command line. Each command parses, loads config, and calls one function.

Heavy imports (torch, mlflow, anndata) happen inside the commands so `stx --help` is instant.
"""

from __future__ import annotations

import logging
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


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    handler = RichHandler(show_path=False, show_time=False, markup=False, rich_tracebacks=False)
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(message)s", force=True)
    logging.getLogger("stx").setLevel(logging.DEBUG if verbose else logging.INFO)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="stx")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """Fine-tune Arc's State Transition model on a new perturbation and compare variants.

    \b
    stx data demo --out demo.h5ad         synthetic burn/sham wound-healing data
    stx data validate --config FILE.toml  check data against a config, show the split
    """
    _setup_logging(verbose)


def _config_options(func):  # noqa: ANN001 - decorator
    func = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                        help="Override a config key, e.g. --set model.lora.r=8 (repeatable).")(func)
    return click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
                        help="TOML config; default: the embedded demo config.")(func)


# ---------------------------------------------------------------- data


@cli.group(cls=_Group)
def data() -> None:
    """Generate the demo data set, or validate data against a config."""


@data.command("demo")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the .h5ad.")
@click.option("--cells", type=click.IntRange(min=100), default=6000, show_default=True,
              help="Number of cells (60000 for benchmarks).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of cells, mice and noise (the gene programs are fixed).")
def data_demo(out: Path, cells: int, seed: int) -> None:
    """Write the synthetic burn/sham wound-healing data set (with its ground truth)."""
    import time

    from stx.data.builtin import write_demo

    if out.suffix != ".h5ad":
        raise StxError(f"{out}: the output file must end in .h5ad")
    start = time.perf_counter()
    write_demo(out, n_cells=cells, seed=seed)
    click.echo(
        f"Wrote {out} ({cells} cells, seed {seed}) in {time.perf_counter() - start:.1f} s: "
        f"conditions Sham/Burn in obs['condition'], cell types in obs['cell_types_simple_short'], "
        f"mice in obs['mouse_id'], days in obs['day'], embedding in obsm['X_state'], "
        f"spliced/unspliced layers for scVelo, ground truth in uns['truth'] and "
        f"obsm['truth_velocity']. Check it with: stx data validate --set datasets.demo={out}"
    )


@data.command("validate")
@_config_options
def data_validate(config_path: Path | None, overrides: tuple[str, ...]) -> None:
    """Load the config's data sets, check them, and summarise cells and the split."""
    from rich.console import Console
    from rich.table import Table

    from stx.config import load_config
    from stx.data.load import load_cells
    from stx.data.split import make_split
    from stx.data.summary import counts_table, headline

    cfg = load_config(config_path, overrides)
    table = load_cells(cfg)
    split = make_split(table, cfg)
    console = Console()
    for line in headline(table, split):
        console.print(line, highlight=False)
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
