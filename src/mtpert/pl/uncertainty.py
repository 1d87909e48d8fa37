"""How far to trust a prediction: calibration curves and predicted changes with their intervals."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from mtpert.pl._labels import PointLabels
from mtpert.pl._text import literal


def calibration_curve(table: pd.DataFrame, *, ax: Axes | None = None, title: str | None = None) -> Axes:
    """Empirical coverage (y) against the nominal level (x), one line per method, from
    :func:`mtpert.uncertainty.interval_table` rows (several targets are averaged, their
    spread shown as a band of ± one standard deviation). On the diagonal: calibrated; below it:
    intervals too narrow."""
    missing = {"method", "level", "coverage"} - set(table.columns)
    if missing:
        raise ValueError(f"table lacks the columns {sorted(missing)}; pass mtpert.uncertainty.interval_table rows.")
    ax = ax if ax is not None else plt.subplots(figsize=(4.5, 4.5))[1]
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, c="k", label="calibrated")
    for method, rows in table.groupby("method", sort=False):
        stats = rows.groupby("level")["coverage"].agg(["mean", "std"]).fillna(0.0)
        line = ax.plot(stats.index, stats["mean"], marker="o", label=literal(str(method)))[0]
        ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"], color=line.get_color(), alpha=0.15, lw=0)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("nominal coverage")
    ax.set_ylabel("empirical coverage of the true change")
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    if title:
        ax.set_title(literal(title))
    return ax


def change_intervals(
    truth: np.ndarray,
    predicted: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    genes: Sequence[str],
    *,
    n_genes: int = 40,
    n_labels: int = 8,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Predicted (y, with its interval) against true (x) mean change of the ``n_genes`` genes of
    largest true change; intervals that miss the truth are drawn in red, and the largest changes
    are named."""
    truth, predicted, low, high = (np.asarray(a, dtype=float) for a in (truth, predicted, low, high))
    if not len(truth) == len(predicted) == len(low) == len(high) == len(genes):
        raise ValueError("truth, predicted, low, high and genes must have one value per gene.")
    ax = ax if ax is not None else plt.subplots(figsize=(4.5, 4.5))[1]
    shown = np.argsort(-np.abs(truth))[:n_genes]
    inside = (truth[shown] >= low[shown]) & (truth[shown] <= high[shown])
    for hit, colour, label in ((True, "tab:blue", "covers the truth"), (False, "tab:red", "misses it")):
        rows = shown[inside == hit]
        if len(rows):
            ax.errorbar(
                truth[rows], predicted[rows], yerr=[predicted[rows] - low[rows], high[rows] - predicted[rows]],
                fmt="o", ms=3, lw=0.8, c=colour, label=f"{label} ({len(rows)})",
            )  # fmt: skip
    edge = float(np.nanmax(np.abs(np.r_[truth[shown], low[shown], high[shown]]))) * 1.05 or 1.0
    ax.plot([-edge, edge], [-edge, edge], ls="--", lw=0.8, c="k")
    ax.axhline(0, lw=0.5, c="0.7")
    ax.axvline(0, lw=0.5, c="0.7")
    ax.set_xlim(-edge, edge)
    ax.set_ylim(-edge, edge)
    ax.set_xlabel("true mean change")
    ax.set_ylabel("predicted mean change")
    legend = ax.legend(fontsize=8, frameon=False, loc="upper left")
    named = shown[:n_labels]
    labels = [literal(str(genes[i])) for i in named]
    ax.add_artist(PointLabels(ax, np.column_stack([truth[named], predicted[named]]), labels, obstacles=(legend,)))
    if title:
        ax.set_title(literal(title))
    return ax
