"""A learned or prior regulatory graph: a network drawing for a few genes, a heatmap for many."""

from __future__ import annotations

from typing import Literal

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import TwoSlopeNorm

from mtpert.pl._text import literal

NETWORK_MAX_NODES = 30
"""Above this many genes, ``kind='auto'`` draws a heatmap: a circle of more nodes is unreadable."""


def regulatory_graph(
    edges: pd.DataFrame,
    *,
    min_probability: float = 0.5,
    kind: Literal["auto", "network", "heatmap"] = "auto",
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Draw a regulator -> target edge table, such as ``model.regulatory_graph()``.

    ``edges`` has ``regulator``, ``target`` and ``weight`` columns, and optionally
    ``mask_probability`` (taken as 1 where absent, e.g. for a prior network's edges). The network
    (genes on a circle, an arrow per edge with ``mask_probability >= min_probability``; red
    raises, blue lowers, width by ``|weight|``, opacity by probability) is drawn for up to
    :data:`NETWORK_MAX_NODES` genes with ``kind='auto'``; the heatmap (regulators x targets,
    ``weight * mask_probability``, every edge) otherwise.
    """
    missing = [c for c in ("regulator", "target", "weight") if c not in edges.columns]
    if missing:
        raise ValueError(
            f"edges needs columns regulator, target and weight (as model.regulatory_graph() "
            f"returns); missing {missing}."
        )
    if kind not in ("auto", "network", "heatmap"):
        raise ValueError(f"kind must be 'auto', 'network' or 'heatmap', got {kind!r}.")
    table = edges.assign(
        mask_probability=edges["mask_probability"] if "mask_probability" in edges.columns else 1.0
    )
    genes = list(dict.fromkeys([*table["regulator"].astype(str), *table["target"].astype(str)]))
    if kind == "auto":
        kind = "network" if len(genes) <= NETWORK_MAX_NODES else "heatmap"
    ax = ax if ax is not None else plt.subplots(figsize=(5, 5))[1]
    if kind == "network":
        _network(table[table["mask_probability"] >= min_probability], genes, ax)
    else:
        _heatmap(table, ax)
    if title:
        ax.set_title(literal(title))
    return ax


def _network(edges: pd.DataFrame, genes: list[str], ax: Axes) -> None:
    """Genes evenly on a circle, one arrow per edge (a loop marker for a self edge)."""
    angle = 2 * np.pi * np.arange(len(genes)) / max(len(genes), 1)
    position = {g: (np.cos(a), np.sin(a)) for g, a in zip(genes, angle, strict=True)}
    largest = float(edges["weight"].abs().max()) if len(edges) else 1.0
    for row in edges.itertuples(index=False):
        start, end = position[str(row.regulator)], position[str(row.target)]
        color = "tab:red" if row.weight > 0 else "tab:blue"
        alpha = float(np.clip(row.mask_probability, 0.15, 1.0))
        width = 0.5 + 2.5 * abs(row.weight) / (largest or 1.0)
        if start == end:  # a gene acting on itself: a ring around its node
            ax.scatter(*start, s=500, facecolors="none", edgecolors=color, alpha=alpha, linewidths=width)
            continue
        ax.annotate(
            "",
            xy=end,
            xytext=start,
            arrowprops={
                "arrowstyle": "-|>",
                "color": color,
                "alpha": alpha,
                "lw": width,
                "shrinkA": 12,
                "shrinkB": 12,
                "connectionstyle": "arc3,rad=0.1",  # A->B and B->A apart
            },
        )
    xy = np.array([position[g] for g in genes]).reshape(-1, 2)
    ax.scatter(xy[:, 0], xy[:, 1], s=250, c="white", edgecolors="0.3", zorder=3)
    for g, (x, y) in position.items():
        ax.text(1.18 * x, 1.18 * y, literal(g), ha="center", va="center", fontsize=8)
    ax.set_xlim(-1.45, 1.45)
    ax.set_ylim(-1.45, 1.45)
    ax.set_aspect("equal")
    ax.axis("off")


def _heatmap(edges: pd.DataFrame, ax: Axes) -> None:
    """Regulators (rows) x targets (columns), coloured by the expected effect."""
    values = edges.assign(effect=edges["weight"] * edges["mask_probability"])
    matrix = values.pivot_table(index="regulator", columns="target", values="effect", aggfunc="mean")
    largest = float(np.nanmax(np.abs(matrix.to_numpy()))) if matrix.size else 0.0
    largest = largest or 1.0
    image = ax.imshow(
        matrix.to_numpy(dtype=float),
        cmap="RdBu_r",
        norm=TwoSlopeNorm(0.0, -largest, largest),
        aspect="auto",
        interpolation="nearest",
    )
    if matrix.shape[1] <= 60:
        ax.set_xticks(range(matrix.shape[1]), [literal(c) for c in matrix.columns], rotation=90, fontsize=6)
    if matrix.shape[0] <= 60:
        ax.set_yticks(range(matrix.shape[0]), [literal(r) for r in matrix.index], fontsize=6)
    ax.set_xlabel("target")
    ax.set_ylabel("regulator")
    ax.figure.colorbar(image, ax=ax, label="weight x probability")
