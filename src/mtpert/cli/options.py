"""Options shared by several subcommands, declared once."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:
    import pandas as pd

    from mtpert.data.spec import DatasetSpec

console = Console()
err_console = Console(stderr=True)

CellTypeKey = Annotated[
    str | None, typer.Option(help="obs column with the cell type, the held-out unit [default: cell_type].")
]
ConditionKey = Annotated[str | None, typer.Option(help="obs column with the perturbation label [default: condition].")]
Control = Annotated[str | None, typer.Option(help="Value of the condition column marking control cells [default: control].")]
DoseKey = Annotated[str | None, typer.Option(help="Optional numeric obs column with the dose.")]
MinCells = Annotated[int, typer.Option(help="Fewest control and perturbed cells a held-out group needs.")]


def make_spec(
    cell_type_key: str | None,
    condition_key: str | None,
    control: str | None,
    dose_key: str | None,
    *,
    data: str | None = None,
) -> DatasetSpec:
    """The keys the user gave, over the registered spec of ``data`` (if it names a dataset)."""
    from mtpert.data.registry import DATASETS
    from mtpert.data.spec import DatasetSpec

    base = DATASETS[data].spec if data in DATASETS else DatasetSpec()
    given = {"cell_type_key": cell_type_key, "condition_key": condition_key, "control": control, "dose_key": dose_key}
    return DatasetSpec.from_dict({**base.to_dict(), **{k: v for k, v in given.items() if v is not None}})


def print_frame(frame: pd.DataFrame, *, title: str | None = None, digits: int = 3) -> None:
    """Print a DataFrame (index included) as a rich table, numbers rounded."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    names = [str(n) for n in frame.index.names] if frame.index.nlevels > 1 else [str(frame.index.name or "")]
    for name in names:
        table.add_column(name)
    for column in frame.columns:
        table.add_column(str(column), justify="right")
    for index, row in frame.iterrows():
        labels = index if isinstance(index, tuple) else (index,)
        cells = [f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in row]
        table.add_row(*(str(x) for x in labels), *cells)
    console.print(table)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn mtpert's input errors into a one-line message and exit code 2, not a traceback."""
    from mtpert.errors import MtpertError

    try:
        yield
    except (MtpertError, FileNotFoundError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        err_console.print(f"[bold red]error:[/] {message}", highlight=False)
        raise typer.Exit(code=2) from None
