"""Options shared by several subcommands, declared once."""

from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:
    from mtpert.data.spec import DatasetSpec

console = Console()
err_console = Console(stderr=True)

CellTypeKey = Annotated[str, typer.Option(help="obs column with the cell type (the held-out unit).")]
ConditionKey = Annotated[str, typer.Option(help="obs column with the perturbation label.")]
Control = Annotated[str, typer.Option(help="Value of the condition column that marks control cells.")]
DoseKey = Annotated[str | None, typer.Option(help="Optional numeric obs column with the dose.")]
MinCells = Annotated[int, typer.Option(help="Fewest control and perturbed cells a held-out group needs.")]


def make_spec(cell_type_key: str, condition_key: str, control: str, dose_key: str | None) -> DatasetSpec:
    from mtpert.data.spec import DatasetSpec

    return DatasetSpec(cell_type_key=cell_type_key, condition_key=condition_key, control=control, dose_key=dose_key)


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
