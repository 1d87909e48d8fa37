"""The field's evaluation suite: expression, DEG and distribution metrics for predicted cells.

Build an :class:`EvalPair` (control, true and predicted cells of one target) or call
:func:`evaluate` / :func:`evaluate_prediction`; :func:`list_metrics` says what each metric
means, which value is best and whether it is computed per target or across targets.
:func:`evaluate_across` scores the across-target metrics, e.g. :func:`condition_rank`, which ranks
each prediction among the true conditions (doses) of its group (:func:`rank_prediction`).
:func:`register_metric` adds a metric; installed packages add theirs through the
``mtpert.metrics`` entry-point group. The distance functions also work standalone on two arrays.
"""

from mtpert.metrics.de import top_degs
from mtpert.metrics.distances import e_distance, euclidean, mean_pairwise, mmd, wasserstein
from mtpert.metrics.evaluate import (
    evaluate,
    evaluate_across,
    evaluate_prediction,
    rank_prediction,
    score,
)
from mtpert.metrics.pair import EvalPair
from mtpert.metrics.rank import condition_rank
from mtpert.metrics.registry import (
    METRICS,
    Metric,
    MetricRegistry,
    list_metrics,
    register_metric,
)

__all__ = [
    "METRICS",
    "EvalPair",
    "Metric",
    "MetricRegistry",
    "condition_rank",
    "e_distance",
    "euclidean",
    "evaluate",
    "evaluate_across",
    "evaluate_prediction",
    "list_metrics",
    "mean_pairwise",
    "mmd",
    "rank_prediction",
    "register_metric",
    "score",
    "top_degs",
    "wasserstein",
]
