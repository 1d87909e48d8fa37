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
    models: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated registered model names. Default: control, mean_shift and the model "
            "to start with (mtpert.benchmark.demo.DEMO_MODELS)."
        ),
    ] = None,
    seed: Annotated[int, seed_option("Seed for the simulation, split and models.")] = 1,
) -> None:
    """Simulate a perturbation experiment, hold out each cell type, fit and score the models."""
    from mtpert.benchmark.demo import DEMO_MODELS, demo_summary, demo_verdict, run_demo

    given = models.split(",") if models is not None else DEMO_MODELS
    names = list(dict.fromkeys(m.strip() for m in given if m.strip()))
    with user_errors(), Progress(console=console, transient=True) as progress:
        task = progress.add_task("fitting models", total=None)
        results = run_demo(out, models=names, seed=seed, on_progress=lambda msg: progress.update(task, description=msg))
    summary = demo_summary(results, names)
    console.print(
        "Each row is a metric, averaged over the held-out cell types: each model's score, the best model on it, "
        "and what it measures (↑: higher is better, ↓: lower)."
    )
    print_frame(summary)
    counts, detail = demo_verdict(results, names)
    if len(counts):
        console.print(
            "Each model against each baseline (columns), paired over the held-out cell types: on how "
            "many metrics it is better (won: the bootstrap 95% interval of the difference lies above "
            "zero), worse (lost), or neither (tied).",
            highlight=False,
        )
        print_frame(counts.rename(columns=lambda b: f"vs {b}"))
    for line in _verdict(summary, detail, names):
        console.print(escape(line), highlight=False)
    console.print(f"Results and figures in [bold]{escape(str(out))}/[/] (results.csv, metrics.png, scatter.png)")


def _verdict(summary: pd.DataFrame, detail: pd.DataFrame, models: list[str]) -> list[str]:
    """Which model is best on most metrics; why the mean shift is hard to beat on this simulator;
    and why a model can do worse than predicting no change (``detail``: the demo's verdicts)."""
    best = summary["best"].str.split(", ")
    wins = {m: sum(m in names for names in best) for m in models}
    leader = max(wins, key=wins.__getitem__)
    lines = [f"Best: {leader}, on {wins[leader]} of {len(summary)} metrics."]
    if "mean_shift" in models and leader == "mean_shift":
        lines.append(
            "On this simulator each cell type's response is a part shared by all cell types plus a "
            "random part of its own that nothing in its control cells reveals. The mean shift adds "
            "the shared part, about the best any model can predict here, so it is hard to beat; "
            "which model is best on your data, `mtpert benchmark` tells."
        )
    if detail.empty:
        return lines
    lost = detail[(detail["baseline"] == NO_CHANGE) & (detail["verdict"] == "lost")]
    for model, rows in lost.groupby("model", sort=False):
        worse = ", ".join(rows["metric"])
        lines.append(f"{model} is worse than '{NO_CHANGE}', which predicts no change, on {worse}.")
    if len(lost):
        lines.append(
            "Why a model can lose to no change: most genes do not respond, and no change is exact on them, which "
            "r2_all rewards; the *_rel distances compare whole cell distributions (1 = no change), and decoded "
            "cells are smoother than real ones, so a model can lose there while its mean response is right "
            "(r2_top100, deg_overlap_top100)."
        )
    return lines
