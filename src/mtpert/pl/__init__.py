"""Plotting functions: each takes an optional matplotlib Axes and returns the Axes it drew on.

Names from the data (models, groups, genes, metrics) and titles are drawn as plain text, never
parsed as mathtext: a ``$`` in a cell type shows as ``$``.
"""

from mtpert.pl.dose import dose_response
from mtpert.pl.graph import regulatory_graph
from mtpert.pl.plots import (
    deg_dotplot,
    mean_expression_scatter,
    metric_by_model,
    metric_grid,
    metric_heatmap,
    pca_overlay,
    perturbation_heatmap,
)
from mtpert.pl.training import loss_curves
from mtpert.pl.uncertainty import calibration_curve, change_intervals

__all__ = [
    "calibration_curve",
    "change_intervals",
    "deg_dotplot",
    "dose_response",
    "loss_curves",
    "mean_expression_scatter",
    "metric_by_model",
    "metric_grid",
    "metric_heatmap",
    "pca_overlay",
    "perturbation_heatmap",
    "regulatory_graph",
]
