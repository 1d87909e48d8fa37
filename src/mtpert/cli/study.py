"""``mtpert study``: a benchmark directory's run store as one committed table, and back."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from mtpert.cli.options import console, user_errors

app = typer.Typer(help="Pack a benchmark's run files into one table (runs.parquet), or unpack them.", no_args_is_help=True)

Paths = Annotated[
    list[Path],
    typer.Argument(help="Benchmark directories, or folders holding them (searched below).", exists=True, file_okay=False),
]


@app.command("pack")
def pack(paths: Paths) -> None:
    """Write DIR/runs.parquet from DIR/runs/ for every benchmark directory DIR at or under PATHS."""
    from mtpert.benchmark.studies import pack_runs

    with user_errors():
        for root in _stores(paths, packed=False):
            target = pack_runs(root)
            count = sum(1 for _ in (root / "runs").glob("*.parquet"))
            console.print(f"packed {count} runs into [bold]{escape(str(target))}[/]", highlight=False)


@app.command("unpack")
def unpack(paths: Paths) -> None:
    """Recreate DIR/runs/ from DIR/runs.parquet for every packed directory DIR at or under PATHS,
    so that `mtpert benchmark --out DIR` resumes it and `mtpert report DIR` rebuilds its report."""
    from mtpert.benchmark.studies import unpack_runs

    with user_errors():
        for root in _stores(paths, packed=True):
            written = unpack_runs(root)
            console.print(f"unpacked {len(written)} runs into [bold]{escape(str(root / 'runs'))}[/]", highlight=False)


def _stores(paths: list[Path], packed: bool) -> list[Path]:
    """Every benchmark directory at or under ``paths``; none is an error naming where to look."""
    from mtpert.benchmark.studies import run_stores
    from mtpert.errors import ConfigError

    stores = sorted({root for path in paths for root in run_stores(path, packed=packed)})
    if not stores:
        what = "runs.parquet" if packed else "runs/ folder"
        raise ConfigError(f"No {what} at or under {', '.join(map(str, paths))}; name a benchmark directory (the --out of `mtpert benchmark`).")
    return stores
