"""Plotting functions: each takes an optional matplotlib Axes and returns the Axes it drew on."""

from mtpert.pl.plots import mean_expression_scatter, metric_by_model
from mtpert.pl.training import loss_curves

__all__ = ["loss_curves", "mean_expression_scatter", "metric_by_model"]
