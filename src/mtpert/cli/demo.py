"""``mtpert demo``: the whole pipeline offline, on simulated data with a known answer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import Progress

from mtpert.cli.options import console, print_frame, user_errors


def demo(
    out: Annotated[Path, typer.Option(help="Directory for the results table and figures.")] = Path("mtpert-demo"),
    models: Annotated[str, typer.Option(help="Comma-separated registered model names.")] = "control,mean_shift",
    seed: Annotated[int, typer.Option(help="Seed for the simulation, split and models.")] = 1,
) -> None:
    """Simulate a perturbation experiment, hold out each cell type, fit and score the models."""
    from mtpert.benchmark.demo import DEMO_METRICS, run_demo

    names = list(dict.fromkeys(m.strip() for m in models.split(",") if m.strip()))
    with user_errors(), Progress(console=console, transient=True) as progress:
        task = progress.add_task("fitting models", total=None)
        results = run_demo(out, models=names, seed=seed, on_progress=lambda msg: progress.update(task, description=msg))
    table = results[results["metric"].isin(DEMO_METRICS)].pivot_table(index="model", columns="metric", values="value")
    console.print("Mean over held-out cell types (*_rel: below 1 beats predicting no change):")
    print_frame(table[list(DEMO_METRICS)].reindex(names).T)
    console.print(f"Results and figures in [bold]{escape(str(out))}/[/] (results.csv, metrics.png, scatter.png)")
