"""Figures a person would rather look at than read: predicted vs true cells, metrics per model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb
from matplotlib.typing import ColorType
from sklearn.decomposition import PCA

from mtpert._array import dense
from mtpert.pl._labels import PointLabels
from mtpert.pl._text import literal

ROW_INCHES = 0.25
"""Height per model in :func:`metric_by_model` and :func:`metric_grid`: room for one line of
10-point text."""


def _axes(ax: Axes | None, size: tuple[float, float]) -> Axes:
    return ax if ax is not None else plt.subplots(figsize=size)[1]


def _text_color_on(background: ColorType) -> str:
    """``"black"`` or ``"white"``: whichever has the higher WCAG 2 contrast ratio with
    ``background`` (relative luminance above 0.179 takes black), so cell text stays readable."""
    channels = np.asarray(to_rgb(background))
    linear = np.where(channels <= 0.04045, channels / 12.92, ((channels + 0.055) / 1.055) ** 2.4)
    luminance = float(linear @ (0.2126, 0.7152, 0.0722))
    return "black" if (luminance + 0.05) / 0.05 >= 1.05 / (luminance + 0.05) else "white"


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
    too, and the first ``n_labels`` of them are named; names never overlap each other, the points
    or the legend (:class:`~mtpert.pl._labels.PointLabels`: a name with no free place is left out).
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
    top = float(max(x.max(), y.max())) * 1.05
    ax.plot([0, top], [0, top], ls="--", lw=0.8, c="k")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("true mean expression")
    ax.set_ylabel("predicted mean expression")
    scores = ax.text(0.03, 0.97, "\n".join(text), transform=ax.transAxes, va="top", fontsize=9)
    legend = ax.legend(loc="lower right", fontsize=7, frameon=False)
    named = marked[:n_labels]
    if len(named):
        labels = [literal(genes[i]) for i in named]
        ax.add_artist(PointLabels(ax, np.column_stack([x[named], y[named]]), labels, obstacles=(scores, legend)))
    if title:
        ax.set_title(literal(title))
    return ax


def metric_by_model(
    results: pd.DataFrame,
    metric: str,
    *,
    ax: Axes | None = None,
    order: Sequence[str] | None = None,
) -> Axes:
    """One horizontal box per model of ``metric`` over held-out groups and seeds, with each run
    as a dot; the models are rows (the first on top), so their names stay legible however many
    there are. The title marks the direction (↑ higher is better, ↓ lower) where ``results``
    has a ``higher_is_better`` column.

    ``results`` is a long table with columns ``model``, ``metric`` and ``value``, as written by
    :func:`mtpert.benchmark.run_holdout`.
    """
    data = results[results["metric"] == metric]
    if data.empty:
        raise ValueError(f"No rows for metric '{metric}'; available: {sorted(results['metric'].unique())}.")
    models = list(order) if order is not None else sorted(data["model"].unique())
    ax = _axes(ax, (3.5, 0.8 + ROW_INCHES * len(models)))
    values = [data.loc[data["model"] == m, "value"].dropna().to_numpy() for m in models]
    rows = np.arange(len(models), 0, -1)  # the first model on top
    ax.boxplot(values, positions=rows, orientation="horizontal", showfliers=False, widths=0.6)
    ax.set_yticks(rows, [literal(m) for m in models])
    jitter = np.random.default_rng(0)
    for row, v in zip(rows, values, strict=True):
        ax.scatter(v, row + jitter.uniform(-0.15, 0.15, len(v)), s=8, alpha=0.7, zorder=3)
    arrow = "" if "higher_is_better" not in data else " ↑" if data["higher_is_better"].iloc[0] else " ↓"
    ax.set_title(literal(metric) + arrow, fontsize=10)
    return ax


def metric_grid(
    results: pd.DataFrame,
    metrics: Sequence[str],
    *,
    order: Sequence[str] | None = None,
    ncols: int = 4,
) -> plt.Figure:
    """:func:`metric_by_model` for each of ``metrics``, at most ``ncols`` panels a row, sharing
    the models' axis: the model names are written once per row of panels, and the figure grows
    with the number of models, so at 20 models no two names overlap."""
    models = list(order) if order is not None else sorted(results["model"].unique())
    cols = min(ncols, len(metrics))
    rows = -(-len(metrics) // cols)
    height = max(2.2, 1.0 + ROW_INCHES * len(models))
    fig, axes = plt.subplots(
        rows, cols, sharey=True, squeeze=False, layout="constrained", figsize=(1.0 + 2.8 * cols, height * rows)
    )
    for ax, metric in zip(axes.ravel(), metrics, strict=False):
        metric_by_model(results, metric, ax=ax, order=models)
    for ax in axes.ravel()[len(metrics) :]:
        ax.set_visible(False)
    return fig


def metric_heatmap(
    results: pd.DataFrame,
    metric: str,
    *,
    ax: Axes | None = None,
    order: Sequence[str] | None = None,
    annotate: bool = True,
) -> Axes:
    """Models (rows) x held-out groups (columns): ``metric`` averaged over seeds.

    Better values are greener whichever direction the metric improves in (read from the
    ``higher_is_better`` column of ``results`` when present). Each value is written in black or
    white, whichever contrasts more with its cell.
    """
    data = results[results["metric"] == metric]
    if data.empty:
        raise ValueError(f"No rows for metric '{metric}'; available: {sorted(results['metric'].unique())}.")
    table = data.pivot_table(index="model", columns="group", values="value", aggfunc="mean")
    if order is not None:
        table = table.reindex([m for m in order if m in table.index])
    higher = bool(data["higher_is_better"].iloc[0]) if "higher_is_better" in data.columns else True
    ax = _axes(ax, (1.5 + 0.8 * table.shape[1], 1.0 + 0.4 * table.shape[0]))
    values = table.to_numpy(dtype=float)
    image = ax.imshow(values, cmap="RdYlGn" if higher else "RdYlGn_r", aspect="auto")
    ax.set_xticks(range(table.shape[1]), [literal(g) for g in table.columns], rotation=40, ha="right")
    ax.set_yticks(range(table.shape[0]), [literal(m) for m in table.index])
    if annotate:
        for (i, j), value in np.ndenumerate(values):
            if np.isfinite(value):
                color = _text_color_on(image.cmap(image.norm(value)))
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color=color)
    ax.figure.colorbar(image, ax=ax, shrink=0.8, label=literal(metric))
    ax.set_title(f"{literal(metric)} ({'higher' if higher else 'lower'} is better)")
    return ax


def perturbation_heatmap(
    results: pd.DataFrame,
    model: str,
    metrics: Sequence[str],
    *,
    ax: Axes | None = None,
    annotate: bool = True,
) -> Axes:
    """One model's score on each held-out perturbation (rows: ``group | condition`` where there
    are several groups) and metric (columns), averaged over seeds.

    A cell's colour says where its score lies between the worst and the best that any model in
    ``results`` reached on that metric for any perturbation (green: best), so the panels of
    several models compare; the score itself is written in it.
    """
    data = results[results["metric"].isin(metrics)]
    if data.empty:
        raise ValueError(f"No rows for metrics {list(metrics)}; available: {sorted(results['metric'].unique())}.")
    several = data["group"].nunique() > 1
    label = (data["group"].astype(str) + " | " + data["condition"].astype(str)) if several else data["condition"].astype(str)
    table = data.assign(target=label).pivot_table(index=["target", "model"], columns="metric", values="value", aggfunc="mean")
    higher = data.groupby("metric")["higher_is_better"].first().astype(bool) if "higher_is_better" in data else pd.Series(True, index=table.columns)
    columns = [m for m in metrics if m in table.columns]
    low, high = table[columns].min(), table[columns].max()
    mine = table.xs(model, level="model")[columns] if model in table.index.get_level_values("model") else None
    if mine is None:
        raise ValueError(f"No rows for model '{model}'.")
    span = (high - low).replace(0, np.nan)
    goodness = ((mine - low) / span).where(higher[columns], (high - mine) / span)
    ax = _axes(ax, (1.5 + 0.75 * len(columns), 1.0 + 0.3 * len(mine)))
    image = ax.imshow(goodness.to_numpy(dtype=float), cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(columns)), [literal(m) for m in columns], rotation=40, ha="right")
    ax.set_yticks(range(len(mine)), [literal(t) for t in mine.index])
    if annotate:
        for (i, j), value in np.ndenumerate(mine.to_numpy(dtype=float)):
            if np.isfinite(value):
                shade = goodness.iat[i, j]
                color = _text_color_on(image.cmap(image.norm(shade if np.isfinite(shade) else 0.5)))
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color=color)
    ax.set_title(literal(model))
    return ax


def pca_overlay(
    control: AnnData,
    truth: AnnData,
    pred: AnnData,
    *,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Control, true perturbed and predicted cells in the first two principal components of the
    real cells: a good prediction lands on the truth, not on the control or off both."""
    ax = _axes(ax, (4.5, 4.5))
    genes = truth.var_names
    real = np.vstack([dense(control[:, genes].X), dense(truth.X)])
    pca = PCA(n_components=2, random_state=0).fit(real)
    for cells, label, color in ((control, "control", "0.6"), (truth, "truth", "tab:blue"), (pred, "prediction", "tab:red")):
        xy = pca.transform(dense(cells[:, genes].X))
        ax.scatter(xy[:, 0], xy[:, 1], s=5, alpha=0.5, c=color, linewidths=0, label=label)
    ratio = pca.explained_variance_ratio_
    ax.set_xlabel(f"PC1 ({ratio[0]:.0%})")
    ax.set_ylabel(f"PC2 ({ratio[1]:.0%})")
    ax.legend(fontsize=7, frameon=False, markerscale=2)
    if title:
        ax.set_title(literal(title))
    return ax


def deg_dotplot(
    control: AnnData,
    truth: AnnData,
    predictions: Mapping[str, AnnData],
    genes: Sequence[str],
    *,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Genes (columns) x control, truth and each prediction (rows): dot size is the fraction of
    cells expressing the gene, colour its mean expression. Shows at a glance whether a model
    moves the right genes, in the right direction, and keeps the cells' zeros."""
    rows = {"control": control, "truth": truth, **predictions}
    genes = list(genes)
    mean = np.array([dense(a[:, genes].X).mean(0) for a in rows.values()])
    frac = np.array([(dense(a[:, genes].X) > 0).mean(0) for a in rows.values()])
    ax = _axes(ax, (1.5 + 0.32 * len(genes), 0.8 + 0.35 * len(rows)))
    x, y = np.meshgrid(np.arange(len(genes)), np.arange(len(rows)))
    dots = ax.scatter(x.ravel(), y.ravel(), s=5 + 120 * frac.ravel(), c=mean.ravel(), cmap="viridis", edgecolors="none")
    ax.set_xticks(range(len(genes)), [literal(g) for g in genes], rotation=90, fontsize=7)
    ax.set_yticks(range(len(rows)), [literal(r) for r in rows])
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlim(-0.6, len(genes) - 0.4)
    ax.figure.colorbar(dots, ax=ax, shrink=0.8, label="mean expression")
    for share in (0.25, 1.0):  # size legend
        ax.scatter([], [], s=5 + 120 * share, c="0.5", label=f"{share:.0%} expressing")
    ax.legend(fontsize=7, frameon=False, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=2)
    if title:
        ax.set_title(literal(title))
    return ax
