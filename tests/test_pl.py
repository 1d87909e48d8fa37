"""Plots: gene labels that never overlap, heatmap text readable on every cell, no torch import."""

from __future__ import annotations

import itertools
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from matplotlib.colors import to_rgb
from matplotlib.text import Text

from mtpert.pl import mean_expression_scatter, metric_heatmap
from mtpert.pl._labels import PointLabels

N_GENES = 200
CROWDED = 20
"""Genes whose means lie within a few hundredths of each other: labels there must make room."""


def crowded_cells() -> tuple[AnnData, AnnData, list[str]]:
    """Truth and a near-perfect prediction whose first ``CROWDED`` genes share one mean (~2)."""
    rng = np.random.default_rng(0)
    means = rng.uniform(0.1, 3.0, N_GENES)
    means[:CROWDED] = 2.0 + rng.normal(0, 0.03, CROWDED)
    genes = [f"GENE{i}_LONG" if i % 3 == 0 else f"G{i}" for i in range(N_GENES)]

    def cells(m: np.ndarray) -> AnnData:
        X = np.abs(m + rng.normal(0, 0.01, (20, N_GENES))).astype(np.float32)
        return AnnData(X, var=pd.DataFrame(index=genes))

    return cells(means), cells(means * 1.01), genes


def overlapping(boxes: list) -> list[tuple[int, int]]:
    return [(i, j) for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2) if a.overlaps(b)]


def test_scatter_gene_labels_do_not_overlap() -> None:
    truth, pred, genes = crowded_cells()
    fig, axes = plt.subplots(1, 2, figsize=(8, 4), layout="constrained")  # as the report lays it out
    for ax in axes:
        mean_expression_scatter(truth, pred, highlight=genes[:CROWDED], n_labels=CROWDED, ax=ax, title="model")
    fig.suptitle("B -> stimulated, seed 1")
    for dpi in (72, 150):  # placed again at each draw, for that draw's sizes
        fig.set_dpi(dpi)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax in axes:
            (labels,) = [a for a in ax.get_children() if isinstance(a, PointLabels)]
            boxes = [t.get_window_extent(renderer) for t in labels.shown]
            assert len(boxes) >= CROWDED // 2, f"only {len(boxes)} of {CROWDED} labels found room"
            assert {t.get_text() for t in labels.shown} <= set(genes[:CROWDED])
            assert not overlapping(boxes)
            frame = ax.get_window_extent(renderer)
            assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1 for b in boxes)
            legend = ax.get_legend().get_window_extent(renderer)
            assert not any(b.overlaps(legend) for b in boxes)
    # the data is crowded indeed: labels at a fixed offset from their points overlap
    ax = axes[0]
    naive = [Text(*ax.transData.transform((x, x)) + 3, g, fontsize=7, figure=fig) for x, g in zip(truth.X[0, :CROWDED], genes, strict=False)]
    assert overlapping([t.get_window_extent(renderer) for t in naive])
    plt.close(fig)


def contrast_ratio(a: object, b: object) -> float:
    """WCAG 2 contrast ratio of two colours (1 to 21)."""

    def luminance(color: object) -> float:
        c = np.asarray(to_rgb(color))
        c = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
        return float(c @ [0.2126, 0.7152, 0.0722])

    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_heatmap_text_contrasts_with_its_cell(higher_is_better: bool) -> None:
    values = np.linspace(0.0, 1.0, 12)  # the whole colour map, both dark ends included
    results = pd.DataFrame(
        {"model": [f"m{i // 4}" for i in range(12)], "group": [f"g{i % 4}" for i in range(12)],
         "metric": "r2_top100", "value": values, "higher_is_better": higher_is_better}
    )  # fmt: skip
    ax = metric_heatmap(results, "r2_top100")
    (image,) = ax.get_images()
    texts = [t for t in ax.texts if t.get_text()]
    assert len(texts) == 12
    colors = set()
    for text in texts:
        column, row = (round(v) for v in text.get_position())
        cell = image.cmap(image.norm(image.get_array()[row, column]))
        assert contrast_ratio(text.get_color(), cell) >= 4.5, (text.get_text(), text.get_color(), cell)
        colors.add(text.get_color())
    assert colors == {"black", "white"}  # dark and light cells both present
    plt.close(ax.figure)


def test_importing_mtpert_pl_does_not_import_torch() -> None:
    probe = "import sys, mtpert.pl; print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))[:3])"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
