"""``mtpert peers``: the field's own models, each in an environment of its own; which are ready,
and ``mtpert peers setup NAME`` to make one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from mtpert.cli.options import console, user_errors

app = typer.Typer(
    help="The field's own models (CPA, State, CellFlow, pertpy's scGen), each run in its own environment: "
    "list them, or set one up.",
    invoke_without_command=True,
)


@app.callback()
def peers(ctx: typer.Context) -> None:
    """List the peers: whether each is ready to run (`--models NAME` in mtpert benchmark), and
    how to make it so."""
    if ctx.invoked_subcommand is not None:
        return
    from mtpert.models.peer_envs import peer_status, peers_dir

    table = Table(
        "peer", "ready", "version", "status / python", box=None, show_edge=False, pad_edge=False
    )
    status = peer_status()
    for name, row in status.iterrows():
        ready = "[green]yes[/]" if row["ready"] else "[red]no[/]"
        table.add_row(
            escape(str(name)),
            ready,
            escape(row["version"]),
            escape(row["python"] if row["ready"] else row["status"]),
        )
    console.print(table)
    console.print(
        f"{int(status['ready'].sum())} of {len(status)} ready. Environments live in {escape(str(peers_dir()))} "
        "($MTPERT_PEERS_DIR); `mtpert peers setup NAME` makes one, $MTPERT_PEER_<NAME> names one made otherwise.",
        highlight=False,
    )


@app.command("setup")
def setup(
    name: Annotated[str, typer.Argument(help="The peer: pertpy_scgen, cpa, state or cellflow.")],
    folder: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            help="Folder of peer environments (default $MTPERT_PEERS_DIR or ~/.local/share/mtpert/peers).",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Rebuild an environment that is already set up.")
    ] = False,
) -> None:
    """Create peer NAME's virtual environment with its pinned dependencies (a few minutes; needs
    PyPI and the Python version the peer's pins need)."""
    from mtpert.models.peer_envs import setup_peer

    with user_errors():
        python = setup_peer(
            name,
            folder,
            force=force,
            on_step=lambda step: console.print(escape(step), highlight=False),
        )
    console.print(
        f"Peer [bold]{escape(name)}[/] runs under {escape(str(python))}.", highlight=False
    )
