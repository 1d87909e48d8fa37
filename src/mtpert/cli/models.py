"""``mtpert models``: the registered models."""

from __future__ import annotations

from rich.table import Table

from mtpert.cli.options import console


def models() -> None:
    """List the registered models."""
    from mtpert.models.registry import list_models

    table = Table("model", "description")
    for name, row in list_models().iterrows():
        table.add_row(str(name), row["description"])
    console.print(table)
