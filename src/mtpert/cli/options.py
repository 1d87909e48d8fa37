"""Options shared by several subcommands, declared once."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData

    from mtpert.data.spec import DatasetSpec

console = Console()
err_console = Console(stderr=True)

PIPED_WIDTH = 1000
"""Console width when the output is a file or a pipe: rich would otherwise cut every line and
table at 80 columns, and a table cut in a log file cannot be read back."""


def fit_consoles_to_output() -> None:
    """Keep a terminal's width; make output to a file or pipe :data:`PIPED_WIDTH` wide (or
    ``$COLUMNS`` wide, if set), so that no line or table is cut. Called before every command."""
    columns = os.environ.get("COLUMNS", "")
    for output in (console, err_console):
        if not output.is_terminal:
            output.width = int(columns) if columns.isdigit() else PIPED_WIDTH


CellTypeKey = Annotated[
    str | None, typer.Option(help="obs column with the cell type, the held-out unit [default: cell_type].")
]
ConditionKey = Annotated[str | None, typer.Option(help="obs column with the perturbation label [default: condition].")]
Control = Annotated[str | None, typer.Option(help="Value of the condition column marking control cells [default: control].")]
Separator = Annotated[
    str | None, typer.Option(help="Text between the perturbations of a combined condition, e.g. '+' for 'KLF1+MAP2K6'.")
]
DoseKey = Annotated[str | None, typer.Option(help="Optional numeric obs column with the dose.")]
GuideKey = Annotated[
    str | None,
    typer.Option(help="obs column naming each cell's guide RNA (pooled screens); `mtpert data info` shows the guides per perturbation."),
]
MAX_SEED = 2**32 - 1
"""Largest seed numpy's legacy and scikit-learn's generators take (as
:data:`mtpert.benchmark.grid.MAX_SEED`, written out so that --help loads no benchmark code)."""


def seed_option(help: str) -> typer.models.OptionInfo:
    """A ``--seed`` option that refuses what no generator takes (negative, or above
    :data:`MAX_SEED`) before any work, rather than failing inside numpy."""
    return typer.Option(min=0, max=MAX_SEED, help=help)


MinCells = Annotated[
    int, typer.Option(min=2, help="Fewest control and perturbed cells a held-out group needs (at least 2).")
]  # 2 is mtpert.data.spec.MIN_CELLS_FLOOR, written out so that --help loads no data code


def make_spec(
    cell_type_key: str | None,
    condition_key: str | None,
    control: str | None,
    dose_key: str | None,
    *,
    separator: str | None = None,
    guide_key: str | None = None,
    data: str | None = None,
) -> DatasetSpec:
    """The keys the user gave, over the registered spec of ``data`` (if it names a dataset)."""
    from mtpert.data.registry import DATASETS
    from mtpert.data.spec import DatasetSpec
    from mtpert.errors import DataError

    base = DATASETS[data].spec if data in DATASETS else DatasetSpec()
    given = {
        "cell_type_key": cell_type_key, "condition_key": condition_key, "control": control, "dose_key": dose_key,
        "combination_separator": separator, "guide_key": guide_key,
    }  # fmt: skip
    try:
        return DatasetSpec.from_dict({**base.to_dict(), **{k: v for k, v in given.items() if v is not None}})
    except DataError as error:  # a separator or control label that no label can be read with
        raise typer.BadParameter(str(error)) from None


def read_data(data: str, spec: DatasetSpec) -> AnnData:
    """Dataset ``data`` (an .h5ad file or a registered name) with its condition labels in
    canonical form (:func:`mtpert.data.normalize_labels`, which warns of what it renamed): how
    every command reads data."""
    from mtpert.data import load_dataset, normalize_labels

    adata = load_dataset(data)
    normalize_labels(adata, spec)
    return adata


def print_frame(frame: pd.DataFrame, *, title: str | None = None, digits: int = 3) -> None:
    """Print a DataFrame (index included) as a rich table, numbers rounded, text as written (no markup)."""
    from pandas.api.types import is_numeric_dtype
    from rich.table import Table

    table = Table(title=None if title is None else escape(title), title_justify="left")
    names = [str(n) for n in frame.index.names] if frame.index.nlevels > 1 else [str(frame.index.name or "")]
    for name in names:
        table.add_column(escape(name))
    for column in frame.columns:
        table.add_column(escape(str(column)), justify="right" if is_numeric_dtype(frame[column]) else "left")
    for index, row in frame.iterrows():
        labels = index if isinstance(index, tuple) else (index,)
        cells = [f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in row]
        table.add_row(*(escape(str(x)) for x in (*labels, *cells)))
    console.print(table)


def _show_warning(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
    """Print a warning as the commands print theirs (``warning: ...``), without the source line
    Python would show: a user of the command line did not write that line."""
    err_console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a user's error into a one-line message and exit code 2, not a traceback: mtpert's
    input errors, a missing file, a file or folder that cannot be written. Anything else is a bug
    in mtpert: its traceback is shown, with a request to report it, and the exit code is 1."""
    import warnings

    import mtpert
    from mtpert.errors import MtpertError

    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            yield
    except (MtpertError, FileNotFoundError) as error:
        err_console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False)
        raise typer.Exit(code=2) from None
    except (PermissionError, IsADirectoryError, NotADirectoryError) as error:
        err_console.print(f"[bold red]error:[/] cannot write {escape(str(error.filename))}: {error.strerror}; choose a path you can write to.", highlight=False)
        raise typer.Exit(code=2) from None
    except (typer.Exit, typer.Abort, typer.BadParameter):  # the command line's own answers
        raise
    except Exception:  # noqa: BLE001 (anything else is a bug: shown in full, with where to report it)
        err_console.print_exception(show_locals=False)
        err_console.print(
            f"[bold red]internal error[/] in mtpert {mtpert.__version__}: this is a bug, not a problem with your input. "
            "Please report it with the command you ran and the traceback above.",
            highlight=False,
        )
        raise typer.Exit(code=1) from None
