"""The ``mddose`` command line: parses arguments and calls one typed function per command, nothing more.

Commands by stage (like nnU-Net's): data (``phantom``, ``prepare``), models (``train``, ``predict``),
judging (``evaluate``, ``bench``), clinical I/O (``import-dicom``, ``export-dicom``).
Errors in user input print one line (``error: <file>: <what is wrong>``) and exit with status 1.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import click
import typer

from mddose.errors import MddoseError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n")[0])
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that write JSON.")
app.add_typer(bench_app, name="bench")


@app.command()
def phantom(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write pt_N/ patient folders into.")],
    patients: Annotated[int, typer.Option("--patients", "-n", min=1, help="Number of patients.")] = 10,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same files.")] = 0,
    grid: Annotated[int, typer.Option(help="Grid size: 64 or 128 voxels per side.")] = 128,
) -> None:
    """Write synthetic head-and-neck phantoms (anatomy + physically modelled dose) in OpenKBP layout."""
    from mddose.data.phantom import write_phantoms

    if grid not in (64, 128):
        raise typer.BadParameter("grid must be 64 or 128", param_hint="--grid")
    paths = write_phantoms(out_dir, n_patients=patients, seed=seed, grid=grid)
    typer.echo(f"wrote {len(paths)} phantom patients to {out_dir}")


@app.command()
def prepare(
    data_dir: Annotated[Path, typer.Argument(help="Folder of OpenKBP patient folders (pt_N/).")],
    cache_dir: Annotated[Path, typer.Argument(help="Cache folder to create or complete.")],
) -> None:
    """Convert patients into the compact training cache plus an index of usable axial slices."""
    from mddose.data.cache import prepare_cache

    summary = prepare_cache(data_dir, cache_dir)
    typer.echo(
        f"cache {cache_dir}: {summary['n_patients']} patients ({summary['added']} added), "
        f"{summary['n_slices']} slices, {summary['size_mib']:.1f} MiB"
    )


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s")


def main() -> None:
    """Console entry point: one clear line and exit status 1 for bad input."""
    _configure_logging("--verbose" in sys.argv)
    try:
        rv = app(standalone_mode=False)
    except MddoseError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)
    except click.exceptions.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
