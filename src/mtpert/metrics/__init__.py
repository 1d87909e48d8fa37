"""The field's evaluation suite: expression, DEG and distribution metrics for predicted cells.

Build an :class:`EvalPair` (control, true and predicted cells of one target) or call
:func:`evaluate` / :func:`evaluate_prediction`; :func:`list_metrics` says what each metric
means and which value is best. :func:`condition_rank` / :func:`rank_prediction` rank each
prediction among the true conditions (doses) of its group, a metric across targets. The
distance functions also work standalone on two arrays.
"""

from mtpert.metrics.de import top_degs
from mtpert.metrics.distances import e_distance, euclidean, mean_pairwise, mmd, wasserstein
from mtpert.metrics.evaluate import evaluate, evaluate_prediction, score
from mtpert.metrics.pair import EvalPair
from mtpert.metrics.rank import condition_rank, rank_prediction
from mtpert.metrics.registry import METRICS, Metric, list_metrics

__all__ = [
    "METRICS",
    "EvalPair",
    "Metric",
    "condition_rank",
    "e_distance",
    "euclidean",
    "evaluate",
    "evaluate_prediction",
    "list_metrics",
    "mean_pairwise",
    "mmd",
    "rank_prediction",
    "score",
    "top_degs",
    "wasserstein",
]
