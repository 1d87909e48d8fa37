"""The offline demo: simulate an experiment, hold out each cell type, score every model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from mtpert.benchmark.harness import ProgressCallback, run_holdout
from mtpert.benchmark.report import BASELINES
from mtpert.benchmark.verdict import paired_verdict, verdict_counts
from mtpert.data.simulate import simulate
from mtpert.data.spec import DatasetSpec
from mtpert.errors import ConfigError
from mtpert.io import atomic_write, write_table
from mtpert.metrics import list_metrics, top_degs
from mtpert.models.registry import get_model
from mtpert.pl import mean_expression_scatter, metric_grid
from mtpert.scoring import Prediction

RECOMMENDED_MODEL = "mtae_plus_ot_anchored"
"""The model the README tells a newcomer to start with: the multi-task autoencoder anchored on
the simple baseline that fits the split, on the objective chosen across the real-data studies
(``benchmarks/anchored_defaults``). The demo runs it beside the baselines, so the first table
shows mtpert's own model."""
DEMO_MODELS = ("control", "mean_shift", RECOMMENDED_MODEL)
"""What ``mtpert demo`` runs by default: predicting no change, the mean shift, and
:data:`RECOMMENDED_MODEL`. The screen baselines (``additive``, ``linear``, ``global_mean``) are
left out: the demo's data has one condition and holds out cell types, where each of them
predicts exactly what the mean shift does."""
DEMO_METRICS = ("r2_all", "r2_top100", "deg_overlap_top100", "pearson_delta_all", "e_distance_rel", "mmd_rel")


def run_demo(
    out: Path,
    *,
    models: Sequence[str] = DEMO_MODELS,
    seed: int = 1,
    on_progress: ProgressCallback | None = None,
) -> pd.DataFrame:
    """Simulate data with a known response, benchmark ``models`` on it, write table and figures.

    Writes ``results.csv`` (long table), ``metrics.png`` (one panel per headline metric) and
    ``scatter.png`` (predicted vs true means for the first held-out cell type) to ``out``.
    """
    models = list(dict.fromkeys(models))
    if not models:
        raise ConfigError(f"No models given; name at least one, e.g. --models {','.join(DEMO_MODELS)} (see `mtpert models`).")
    for name in models:
        get_model(name)  # an unknown name fails now, not after the simulation
    out.mkdir(parents=True, exist_ok=True)
    spec = DatasetSpec()
    adata = simulate(seed=seed)
    first: list[Prediction] = []  # every model's prediction for the first held-out target

    def keep_first(p: Prediction) -> None:
        if not first or p.target.label() == first[0].target.label():
            first.append(p)

    results = run_holdout(adata, spec, models, seeds=(seed,), on_progress=on_progress, on_prediction=keep_first)
    write_table(results, out / "results.csv")

    fig = metric_grid(results, DEMO_METRICS, order=models, ncols=3)
    fig.suptitle("Simulated data: each cell type held out in turn")
    _save(fig, out / "metrics.png")

    degs = top_degs(first[0].control, first[0].truth, n=20)
    fig, axes = plt.subplots(1, len(first), figsize=(4.2 * len(first), 4.2), layout="constrained", squeeze=False)
    for ax, p in zip(axes[0], first, strict=True):
        mean_expression_scatter(p.truth, p.pred, highlight=degs, ax=ax, title=f"{p.model}: {p.target.label()}")
    _save(fig, out / "scatter.png")
    return results


def demo_summary(results: pd.DataFrame, models: Sequence[str]) -> pd.DataFrame:
    """The demo's table: per metric of :data:`DEMO_METRICS`, each model's mean over the held-out
    targets, the ``best`` model(s) on it (NaN scores left out) and what it ``measures`` (its
    description, prefixed by the direction: ``↑`` higher is better, ``↓`` lower)."""
    shown = results[results["metric"].isin(DEMO_METRICS)]
    table = shown.pivot_table(index="metric", columns="model", values="value")
    table = table.reindex(index=list(DEMO_METRICS), columns=list(models))
    metrics = list_metrics().set_index("name")
    higher, described = metrics["higher_is_better"], metrics["description"]

    def best(metric: str) -> str:
        scores = table.loc[metric].dropna()
        top = scores.max() if higher[metric] else scores.min()
        return ", ".join(scores.index[scores == top]) if len(scores) else "-"

    table.columns = table.columns.astype(str)  # the model names, beside the text columns below
    return table.assign(
        best=[best(m) for m in table.index],
        measures=[("↑ " if higher[m] else "↓ ") + described[m] for m in table.index],
    )


def demo_verdict(
    results: pd.DataFrame, models: Sequence[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each model against each baseline among ``models`` (those of
    :data:`~mtpert.benchmark.report.BASELINES`) on :data:`DEMO_METRICS`, paired over the held-out
    cell types: the won/tied/lost counts (rows: models, columns: baselines) and the verdict per
    metric (:func:`~mtpert.benchmark.verdict.paired_verdict`). Both empty without a baseline."""
    baselines = [b for b in BASELINES if b in models]
    if not baselines:
        return pd.DataFrame(), pd.DataFrame()
    detail = paired_verdict(results, baselines, DEMO_METRICS, models=models)
    return verdict_counts(detail, models, baselines), detail


def _save(fig: plt.Figure, path: Path) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)
