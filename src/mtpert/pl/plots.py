"""Figures a person would rather look at than read: predicted vs true means, metrics per model."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes

from mtpert.models.base import dense


def _axes(ax: Axes | None, size: tuple[float, float]) -> Axes:
    return ax if ax is not None else plt.subplots(figsize=size)[1]


def mean_expression_scatter(
    truth: AnnData,
    pred: AnnData,
    *,
    highlight: Sequence[str] = (),
    n_labels: int = 10,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Per-gene mean expression, prediction (y) against truth (x), with R² over all genes.

    Genes in ``highlight`` (e.g. the top true DEGs) are drawn in colour, the R² over them is shown
    too, and the first ``n_labels`` of them are named.
    """
    ax = _axes(ax, (4.5, 4.5))
    genes = truth.var_names
    x = dense(truth.X).mean(0)
    y = dense(pred[:, genes].X).mean(0)
    r2 = np.corrcoef(x, y)[0, 1] ** 2
    ax.scatter(x, y, s=4, c="0.6", alpha=0.6, linewidths=0, label="all genes")
    text = [f"R² all = {r2:.3f}"]
    marked = genes.get_indexer(pd.Index(highlight))
    marked = marked[marked >= 0]
    if len(marked):
        ax.scatter(x[marked], y[marked], s=10, c="tab:red", linewidths=0, label=f"top {len(marked)} DEGs")
        if len(marked) > 1:
            text.append(f"R² DEGs = {np.corrcoef(x[marked], y[marked])[0, 1] ** 2:.3f}")
        for i in marked[:n_labels]:
            ax.annotate(genes[i], (x[i], y[i]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    top = float(max(x.max(), y.max())) * 1.05
    ax.plot([0, top], [0, top], ls="--", lw=0.8, c="k")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("true mean expression")
    ax.set_ylabel("predicted mean expression")
    ax.text(0.03, 0.97, "\n".join(text), transform=ax.transAxes, va="top", fontsize=9)
    ax.legend(loc="lower right", fontsize=7, frameon=False)
    if title:
        ax.set_title(title)
    return ax


def metric_by_model(
    results: pd.DataFrame,
    metric: str,
    *,
    ax: Axes | None = None,
    order: Sequence[str] | None = None,
) -> Axes:
    """One box per model of ``metric`` over held-out groups and seeds, with each run as a dot.

    ``results`` is a long table with columns ``model``, ``metric`` and ``value``, as written by
    :func:`mtpert.benchmark.run_holdout`.
    """
    data = results[results["metric"] == metric]
    if data.empty:
        raise ValueError(f"No rows for metric '{metric}'; available: {sorted(results['metric'].unique())}.")
    models = list(order) if order is not None else sorted(data["model"].unique())
    ax = _axes(ax, (1.2 + 0.9 * len(models), 3.5))
    values = [data.loc[data["model"] == m, "value"].dropna().to_numpy() for m in models]
    ax.boxplot(values, showfliers=False, widths=0.6)
    ax.set_xticks(range(1, len(models) + 1), models, rotation=30, ha="right")
    jitter = np.random.default_rng(0)
    for i, v in enumerate(values, start=1):
        ax.scatter(i + jitter.uniform(-0.15, 0.15, len(v)), v, s=8, alpha=0.7, zorder=3)
    ax.set_ylabel(metric)
    return ax
