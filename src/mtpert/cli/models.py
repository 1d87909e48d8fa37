"""``mtpert models``: the registered models."""

from __future__ import annotations

from rich.table import Table

from mtpert.cli.options import console


def models() -> None:
    """List the registered models."""
    from mtpert.models.registry import list_models

    table = Table("model", "class", "options", "description")
    for name, row in list_models().iterrows():
        options = ", ".join(f"{k}={v}" for k, v in row["options"].items())
        table.add_row(str(name), row["class"], options, row["description"])
    console.print(table)
