"""The field's evaluation suite: expression, DEG and distribution metrics for predicted cells.

Build an :class:`EvalPair` (control, true and predicted cells of one target) or call
:func:`evaluate` / :func:`evaluate_prediction`; :func:`list_metrics` says what each metric
means, which value is best and whether it is computed per target or across targets.
:func:`evaluate_across` scores the across-target metrics, e.g. :func:`condition_rank`, which ranks
each prediction among the true conditions (doses) of its group (:func:`rank_prediction`),
:func:`discrimination` (the same among distinct perturbations) and :func:`genetic_interaction`
(combinations against the additivity of their singles). :func:`detectable_effects` tests which
conditions change expression at all; metric ``effect_false_positive`` penalizes a predicted change
where none is detectable.
:func:`register_metric` adds a metric; installed packages add theirs through the
``mtpert.metrics`` entry-point group. The distance functions also work standalone on two arrays.
"""

from mtpert.metrics.de import top_degs
from mtpert.metrics.distances import e_distance, euclidean, mean_pairwise, mmd, wasserstein
from mtpert.metrics.effect import EffectTest, effect_test
from mtpert.metrics.evaluate import (
    detectable_effects,
    evaluate,
    evaluate_across,
    evaluate_prediction,
    rank_prediction,
    score,
)
from mtpert.metrics.inputs import Condition
from mtpert.metrics.interaction import genetic_interaction
from mtpert.metrics.pair import EvalPair
from mtpert.metrics.rank import condition_rank, discrimination
from mtpert.metrics.registry import (
    METRICS,
    Metric,
    MetricRegistry,
    list_metrics,
    register_metric,
)

__all__ = [
    "METRICS",
    "Condition",
    "EffectTest",
    "EvalPair",
    "Metric",
    "MetricRegistry",
    "condition_rank",
    "detectable_effects",
    "discrimination",
    "e_distance",
    "effect_test",
    "euclidean",
    "evaluate",
    "evaluate_across",
    "evaluate_prediction",
    "genetic_interaction",
    "list_metrics",
    "mean_pairwise",
    "mmd",
    "rank_prediction",
    "register_metric",
    "score",
    "top_degs",
    "wasserstein",
]
