"""``mtpert data``: inspect a dataset before modeling it."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from mtpert.cli.options import CellTypeKey, ConditionKey, Control, DoseKey, MinCells, console, make_spec, user_errors

app = typer.Typer(help="Inspect datasets: local files or registered public ones.", no_args_is_help=True)


@app.command("info")
def info(
    data: Annotated[str, typer.Argument(help="An .h5ad file, or the name of a registered dataset.")],
    cell_type_key: CellTypeKey = None,
    condition_key: ConditionKey = None,
    control: Control = None,
    dose_key: DoseKey = None,
    min_cells: MinCells = 20,
) -> None:
    """Cell type x condition counts, what X holds, and which groups are too small to hold out."""
    from mtpert.data.pp import detect_kind
    from mtpert.data.registry import load_dataset
    from mtpert.data.split import eligible_groups

    spec = make_spec(cell_type_key, condition_key, control, dose_key, data=data)
    with user_errors():
        adata = load_dataset(data)
        spec.validate(adata)
        counts = spec.counts_table(adata)
        groups = eligible_groups(adata, spec, min_cells=min_cells)
    kind = {"counts": "raw counts", "log": "log-normalized", "unknown": "neither counts nor log1p data"}
    console.print(f"[bold]{data}[/]: {adata.n_obs:,} cells x {adata.n_vars:,} genes; X holds {kind[detect_kind(adata)]}")
    console.print(f"conditions: {', '.join(spec.conditions(adata))} (control: '{spec.control}')")

    table = Table(title=f"cells per {spec.cell_type_key} and {spec.condition_key}", title_justify="left")
    table.add_column(spec.cell_type_key)
    for column in counts.columns:
        table.add_column(str(column), justify="right")
    table.add_column(f"hold out? (>= {min_cells} per side)")
    for group, row in counts.iterrows():
        status = groups.loc[group]
        verdict = "[green]yes[/]" if status["eligible"] else f"[yellow]no[/]: {status['reason']}"
        table.add_row(str(group), *(str(v) for v in row), verdict)
    console.print(table)
    n_ok = int(groups["eligible"].sum())
    console.print(f"{n_ok} of {len(groups)} groups can be held out and scored.")


@app.command("list")
def list_registered() -> None:
    """Public datasets mtpert can download (checksummed and cached)."""
    from mtpert.data.registry import list_datasets

    table = Table("name", "cells", "MB", "checksum", "description")
    for name, row in list_datasets().iterrows():
        cells = "?" if row["n_cells"] != row["n_cells"] else f"{int(row['n_cells']):,}"  # NaN: unknown
        size = "?" if row["size_mb"] != row["size_mb"] else f"{row['size_mb']:g}"
        table.add_row(str(name), cells, size, str(row["checksum"]), str(row["description"]))
    console.print(table)
