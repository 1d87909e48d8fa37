"""``mtpert data``: inspect a dataset before modeling it, or simulate one with a known answer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from mtpert.cli.options import (
    CellTypeKey,
    ConditionKey,
    Control,
    DoseKey,
    MinCells,
    console,
    make_spec,
    user_errors,
)

app = typer.Typer(help="Inspect datasets (local files or registered public ones), or simulate one.", no_args_is_help=True)


def _numbers(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise typer.BadParameter(f"give comma-separated numbers, e.g. 0.1,0.5,2.5; got '{text}'.") from None


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
    from mtpert.data.pp import DOUBLE_LOG_ADVICE, detect_kind
    from mtpert.data.registry import load_dataset
    from mtpert.data.split import eligible_groups

    spec = make_spec(cell_type_key, condition_key, control, dose_key, data=data)
    with user_errors():
        adata = load_dataset(data)
        spec.validate(adata)
        counts = spec.counts_table(adata)
        groups = eligible_groups(adata, spec, min_cells=min_cells)
    kind = detect_kind(adata)
    holds = {
        "counts": "raw counts",
        "log": "log-normalized",
        "double_log": "values logged twice (mtpert refuses them)",
        "unknown": "neither counts nor log1p data",
    }
    console.print(f"[bold]{escape(data)}[/]: {adata.n_obs:,} cells x {adata.n_vars:,} genes; X holds {holds[kind]}")
    if kind == "double_log":
        console.print(f"[yellow]warning:[/] {escape(DOUBLE_LOG_ADVICE)}", highlight=False)
    console.print(escape(f"conditions: {', '.join(spec.conditions(adata))} (control: '{spec.control}')"))

    title = escape(f"cells per {spec.cell_type_key} and {spec.condition_key}")
    table = Table(title=title, title_justify="left")
    table.add_column(escape(spec.cell_type_key))
    for column in counts.columns:
        table.add_column(escape(str(column)), justify="right")
    table.add_column(f"hold out? (>= {min_cells} per side)")
    for group, row in counts.iterrows():
        status = groups.loc[group]
        verdict = "[green]yes[/]" if status["eligible"] else f"[yellow]no[/]: {escape(status['reason'])}"
        table.add_row(escape(str(group)), *(str(v) for v in row), verdict)
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


@app.command("download")
def download(
    name: Annotated[str, typer.Argument(help="A registered dataset (see `mtpert data list`).")],
    cache_dir: Annotated[
        Path | None, typer.Option(help="Folder to keep downloads in.", file_okay=False, show_default="$MTPERT_CACHE_DIR, else the user cache")
    ] = None,
) -> None:
    """Download a registered dataset once, check it against its recorded checksum, and say where it is.

    Commands given the dataset's name then read it from there without downloading again.
    """
    from mtpert.data.registry import DATASETS, download_dataset

    with user_errors():
        file = download_dataset(name, cache_dir=cache_dir)
    checked = "matches its recorded checksum" if DATASETS[name].known_hash else "has no published checksum to check"
    console.print(f"[bold]{escape(str(file))}[/] ({file.stat().st_size / 1e6:.1f} MB) {checked}.")


@app.command("simulate")
def simulate(
    out: Annotated[Path, typer.Option(help="The .h5ad file to write.", dir_okay=False)],
    doses: Annotated[str, typer.Option(help="Comma-separated positive doses of every perturbation.")] = "1.0",
    perturbations: Annotated[str, typer.Option(help="Comma-separated perturbation names.")] = "stimulated",
    cell_types: Annotated[int, typer.Option(min=1, help="Cell types (per species).")] = 4,
    genes: Annotated[int, typer.Option(min=1, help="Genes.")] = 500,
    cells: Annotated[int, typer.Option(min=1, help="Cells per cell type x condition x dose group.")] = 100,
    species: Annotated[int, typer.Option(min=1, help="Species; above 1 adds obs['species'] (hold it out with --group-key species).")] = 1,
    effect_size: Annotated[float, typer.Option(help="Natural-log fold change of a responsive gene at full response.")] = 1.0,
    seed: Annotated[int, typer.Option(help="The same arguments and seed give the same data.")] = 0,
) -> None:
    """Simulated raw counts with the true response stored in uns['simulation'] (mtpert.data.simulate).

    obs holds cell_type, condition ('control' or a perturbation), dose (0 for control cells) and,
    with --species above 1, species. Benchmark it with --dose-key dose to score every dose.
    """
    from mtpert.data import simulate as draw

    with user_errors():
        adata = draw(
            n_cell_types=cell_types, n_genes=genes, n_cells=cells, perturbations=[p.strip() for p in perturbations.split(",") if p.strip()],
            doses=_numbers(doses), n_species=species, effect_size=effect_size, seed=seed,
        )  # fmt: skip
        out.parent.mkdir(parents=True, exist_ok=True)
        adata.write_h5ad(out, compression="gzip")
    keys = ", ".join(f"{k}='{v}'" for k, v in adata.uns["simulation"]["spec"].items())
    console.print(f"wrote [bold]{escape(str(out))}[/]: {adata.n_obs:,} cells x {adata.n_vars:,} genes (raw counts); obs keys: {keys}"
                  + (", species_key='species'" if species > 1 else ""))  # fmt: skip
    console.print(f"e.g. mtpert benchmark --data {escape(str(out))} --dose-key dose --models control,mean_shift,mtae,scvidr_multi --out DIR")
