"""``mtpert data``: inspect a dataset before modeling it, or simulate one with a known answer."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from mtpert.cli.options import (
    CellTypeKey,
    ConditionKey,
    Control,
    DoseKey,
    GuideKey,
    MinCells,
    Separator,
    console,
    make_spec,
    read_data,
    seed_option,
    user_errors,
)

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData

    from mtpert.data.spec import DatasetSpec

app = typer.Typer(help="Inspect datasets (local files or registered public ones), or simulate one.", no_args_is_help=True)

BatchKey = Annotated[
    str | None, typer.Option(help="obs column of the replicate or batch: shows in how many each perturbation has --min-cells cells.")
]


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
    separator: Separator = None,
    guide_key: GuideKey = None,
    batch_key: BatchKey = None,
    min_cells: MinCells = 20,
) -> None:
    """Cells per group and condition, what X holds, and which groups are too small to hold out.

    With more conditions than groups (a screen), the table has one row per condition instead,
    and says which are combinations (--separator), which of those can be predicted from their
    parts, how many guides each has (--guide-key) and in how many replicates (--batch-key).
    """
    from dataclasses import replace

    from mtpert.data.pp import DOUBLE_LOG_ADVICE, count_scale_problem, detect_kind
    from mtpert.data.split import eligible_groups

    keys = (cell_type_key, condition_key, control, dose_key)
    spec = make_spec(*keys, separator=separator, guide_key=guide_key, data=data)
    spec = spec if batch_key is None else replace(spec, batch_key=batch_key)
    with user_errors():
        adata = read_data(data, spec)
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
    elif kind == "counts" and (problem := count_scale_problem(adata)) is not None:
        console.print(f"[yellow]warning:[/] {escape(problem)}", highlight=False)
    if len(counts.columns) - 1 > len(counts.index):
        _print_screen(adata, spec, counts, groups, min_cells)
    else:
        _print_groups(spec, counts, groups, min_cells)
    n_ok = int(groups["eligible"].sum())
    console.print(f"{n_ok} of {len(groups)} groups can be held out and scored.")


def _print_groups(spec: DatasetSpec, counts: pd.DataFrame, groups: pd.DataFrame, min_cells: int) -> None:
    """Few conditions: one row per group, one column per condition, and each group's verdict."""
    console.print(escape(f"conditions: {', '.join(map(str, counts.columns[1:]))} (control: '{spec.control}')"))
    combinations = [c for c in counts.columns[1:] if len(spec.parts(c)) > 1]
    if combinations:
        console.print(escape(_parts_line(spec, combinations)), highlight=False)
    table = Table(title=escape(f"cells per {spec.cell_type_key} and {spec.condition_key}"), title_justify="left")
    table.add_column(escape(spec.cell_type_key))
    for column in counts.columns:
        table.add_column(escape(str(column)), justify="right")
    table.add_column(f"hold out? (>= {min_cells} per side)")
    for group, row in counts.iterrows():
        status = groups.loc[group]
        verdict = "[green]yes[/]" if status["eligible"] else f"[yellow]no[/]: {escape(status['reason'])}"
        table.add_row(escape(str(group)), *(str(v) for v in row), verdict)
    console.print(table)


def _print_screen(adata: AnnData, spec: DatasetSpec, counts: pd.DataFrame, groups: pd.DataFrame, min_cells: int) -> None:
    """Many conditions (a screen): what they are, then one row per condition and one column per
    group, with each group's verdict in the last row."""
    summary = screen_summary(adata, spec, min_cells=min_cells)
    n_batches = adata.obs[spec.batch_key].nunique() if spec.batch_key is not None else 0
    for line in _screen_lines(adata, spec, summary, min_cells):
        console.print(escape(line), highlight=False)
    table = Table(title=escape(f"cells per {spec.condition_key} and {spec.cell_type_key}"), title_justify="left")
    table.add_column(escape(spec.condition_key))
    has_kind = "kind" in summary.columns
    if has_kind:
        table.add_column("kind")
    for column in (*counts.index, *summary.columns.drop("kind", errors="ignore")):
        table.add_column(escape(str(column)), justify="right")
    for condition, row in summary.iterrows():
        cells = [escape(row["kind"])] if has_kind else []
        cells += [str(n) if n >= min_cells else f"[yellow]{n}[/]" for n in counts[condition]]
        if "guides" in summary.columns:
            cells.append(str(row["guides"]))
        if "replicates" in summary.columns:
            cells.append(f"{row['replicates']}/{n_batches}")
        table.add_row(escape(str(condition)), *cells)
    verdicts = ["[green]yes[/]" if groups.loc[g, "eligible"] else "[yellow]no[/]" for g in counts.index]
    table.add_section()
    table.add_row("hold out?", *([""] if has_kind else []), *verdicts)
    console.print(table)
    for group, status in groups[~groups["eligible"]].iterrows():
        console.print(f"{escape(str(group))}: not held out, {escape(status['reason'])}", highlight=False)
    n_small = int((counts.drop(columns=spec.control) < min_cells).to_numpy().sum())
    if n_small:
        console.print(f"{n_small} condition x {escape(spec.cell_type_key)} counts are below {min_cells} (in yellow): "
                      "those targets are not scored.", highlight=False)


def screen_summary(adata: AnnData, spec: DatasetSpec, *, min_cells: int = 20) -> pd.DataFrame:
    """One row per condition, the control first and the rest sorted, with columns where the spec
    allows: ``kind`` (with combinations, see ``spec.combination_separator``: 'single', 'single (in
    2 combos)', 'pair (1/2 parts alone)'), ``guides`` (with a ``spec.guide_key``: how many distinct
    guides) and ``replicates`` (with a ``spec.batch_key``: in how many batches it has ``min_cells``
    cells)."""
    import pandas as pd

    obs = adata.obs
    labels = obs[spec.condition_key].astype(str)
    conditions = spec.conditions(adata)
    rows = pd.DataFrame(index=pd.Index([spec.control, *conditions], name=spec.condition_key))
    combinations = [c for c in conditions if len(spec.parts(c)) > 1]
    if combinations:
        rows["kind"] = [_kind(spec, c, conditions, combinations) for c in rows.index]
    if spec.guide_key is not None:
        rows["guides"] = obs[spec.guide_key].astype(str).groupby(labels).nunique().reindex(rows.index)
    if spec.batch_key is not None:
        per_batch = pd.crosstab(labels, obs[spec.batch_key].astype(str)).reindex(rows.index)
        rows["replicates"] = (per_batch >= min_cells).sum(axis=1)
    return rows


def _kind(spec: DatasetSpec, condition: str, conditions: list[str], combinations: list[str]) -> str:
    """'control', 'single', 'single (in 2 combos)', or 'pair (1/2 parts alone)'."""
    if condition == spec.control:
        return "control"
    parts = spec.parts(condition)
    if len(parts) == 1:
        n_combos = sum(condition in spec.parts(c) for c in combinations)
        return f"single (in {_count(n_combos, 'combo')})" if n_combos else "single"
    name = "pair" if len(parts) == 2 else f"{len(parts)}-way"
    return f"{name} ({sum(p in conditions for p in parts)}/{len(parts)} parts alone)"


def _screen_lines(adata: AnnData, spec: DatasetSpec, summary: pd.DataFrame, min_cells: int) -> list[str]:
    """What the conditions of a screen are: singles and combinations, guides, replicates."""
    from mtpert.data.split import predictable_combinations

    conditions = list(summary.index.drop(spec.control))
    combinations = [c for c in conditions if len(spec.parts(c)) > 1]
    line = f"{len(conditions)} conditions in obs['{spec.condition_key}'] besides the control '{spec.control}'"
    lines = [f"{line}." if spec.combination_separator is None else (
        f"{line}: {len(conditions) - len(combinations)} single, {_count(len(combinations), 'combination')} "
        f"(separator '{spec.combination_separator}')."
    )]
    if spec.combination_separator is None and any("+" in c for c in conditions):
        lines.append("Labels such as 'A+B' look like combinations: pass --separator '+' to read them so.")
    if combinations:
        predictable = predictable_combinations(adata, spec, min_cells=min_cells)
        rest = [c for c in combinations if c not in predictable]
        lines.append(f"{len(predictable)} of {_count(len(combinations), 'combination')} can be predicted from their parts "
                     f"(each part applied alone; >= {min_cells} cells each)" + (f"; not: {_some(rest)}." if rest else "."))
        lines.append(_parts_line(spec, combinations))
    if "guides" in summary.columns:
        fewest, most = summary["guides"].drop(spec.control).agg(["min", "max"])
        lines.append(f"{adata.obs[spec.guide_key].nunique()} guides in obs['{spec.guide_key}']: "
                     f"{fewest if fewest == most else f'{fewest}-{most}'} per perturbation, "
                     f"{summary.loc[spec.control, 'guides']} for the control.")
    if "replicates" in summary.columns:
        sizes = adata.obs[spec.batch_key].astype(str).value_counts().sort_index()
        short = list(summary.index[summary["replicates"] < len(sizes)])
        lines.append(f"{len(sizes)} replicates in obs['{spec.batch_key}'] ("
                     + ", ".join(f"{name} {n:,}" for name, n in sizes.items()) + " cells); "
                     f"{len(summary) - len(short)} of {len(summary)} conditions have >= {min_cells} cells in each"
                     + (f"; not: {_some(short)}." if short else "."))
    return lines


def _parts_line(spec: DatasetSpec, combinations: list[str]) -> str:
    """How each combination's label was read: 'parts as read: A+B = A & B, ...'."""
    read = (f"{c} = {' & '.join(spec.parts(c))}" for c in combinations)
    return f"parts as read: {', '.join(read)}."


def _count(n: int, noun: str) -> str:
    """'1 combination', '2 combinations'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _some(names: list[str], shown: int = 5) -> str:
    """The first ``shown`` names, and how many more."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


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
    seed: Annotated[int, seed_option("The same arguments and seed give the same data.")] = 0,
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
