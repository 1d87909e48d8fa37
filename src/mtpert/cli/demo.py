"""``mtpert demo``: the whole pipeline offline, on simulated data with a known answer."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import Progress

from mtpert.cli.options import console, print_frame, seed_option, user_errors

if TYPE_CHECKING:
    import pandas as pd

NO_CHANGE = "control"
"""The registered model that predicts no change: the line every other model must beat."""


def demo(
    out: Annotated[Path, typer.Option(help="Directory for the results table and figures.")] = Path("mtpert-demo"),
    models: Annotated[str, typer.Option(help="Comma-separated registered model names.")] = "control,mean_shift",
    seed: Annotated[int, seed_option("Seed for the simulation, split and models.")] = 1,
) -> None:
    """Simulate a perturbation experiment, hold out each cell type, fit and score the models."""
    from mtpert.benchmark.demo import demo_summary, run_demo

    names = list(dict.fromkeys(m.strip() for m in models.split(",") if m.strip()))
    with user_errors(), Progress(console=console, transient=True) as progress:
        task = progress.add_task("fitting models", total=None)
        results = run_demo(out, models=names, seed=seed, on_progress=lambda msg: progress.update(task, description=msg))
    summary = demo_summary(results, names)
    console.print(
        "Each row is a metric, averaged over the held-out cell types: each model's score, the best model on it, "
        "and what it measures (↑: higher is better, ↓: lower)."
    )
    print_frame(summary)
    for line in _verdict(summary, names):
        console.print(escape(line), highlight=False)
    console.print(f"Results and figures in [bold]{escape(str(out))}/[/] (results.csv, metrics.png, scatter.png)")


def _verdict(summary: pd.DataFrame, models: list[str]) -> list[str]:
    """Which model is best on most metrics, and why a model can do worse than predicting no change."""
    best = summary["best"].str.split(", ")
    wins = {m: sum(m in names for names in best) for m in models}
    leader = max(wins, key=wins.__getitem__)
    lines = [f"Best: {leader}, on {wins[leader]} of {len(summary)} metrics."]
    if NO_CHANGE not in models:
        return lines
    higher = summary["measures"].str.startswith("↑")
    baseline = summary[NO_CHANGE]
    for model in (m for m in models if m != NO_CHANGE):
        score = summary[model]
        worse = summary.index[(higher & (score < baseline)) | (~higher & (score > baseline))]
        if len(worse):
            lines.append(f"{model} is worse than '{NO_CHANGE}', which predicts no change, on {', '.join(worse)}.")
    if len(lines) > 1:
        lines.append(
            "Why a model can lose to no change: most genes do not respond, and no change is exact on them, which "
            "r2_all rewards; the *_rel distances compare whole cell distributions (1 = no change), and decoded "
            "cells are smoother than real ones, so a model can lose there while its mean response is right "
            "(r2_top100, deg_overlap_top100)."
        )
    return lines
