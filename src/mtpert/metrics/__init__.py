"""The field's evaluation suite: expression, DEG and distribution metrics for predicted cells.

Build an :class:`EvalPair` (control, true and predicted cells of one target) or call
:func:`evaluate` / :func:`evaluate_prediction`; :func:`list_metrics` says what each metric
means and which value is best. The distance functions also work standalone on two arrays.
"""

from mtpert.metrics.de import top_degs
from mtpert.metrics.distances import e_distance, euclidean, mean_pairwise, mmd, wasserstein
from mtpert.metrics.evaluate import evaluate, evaluate_prediction, score
from mtpert.metrics.pair import EvalPair
from mtpert.metrics.registry import METRICS, Metric, list_metrics

__all__ = [
    "METRICS",
    "EvalPair",
    "Metric",
    "e_distance",
    "euclidean",
    "evaluate",
    "evaluate_prediction",
    "list_metrics",
    "mean_pairwise",
    "mmd",
    "score",
    "top_degs",
    "wasserstein",
]
