"""Plotting functions: each takes an optional matplotlib Axes and returns the Axes it drew on."""

from mtpert.pl.plots import mean_expression_scatter, metric_by_model

__all__ = ["mean_expression_scatter", "metric_by_model"]
