"""Every metric mtpert reports, with the metadata needed to read it.

The registry is one explicit tuple, built once at import and frozen: adding a metric means
writing its function (``EvalPair -> float`` or ``-> (mean, spread)``) and adding one
:class:`Metric` line below. Nothing registers itself at run time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType
from typing import Literal

import pandas as pd

from mtpert.metrics import distances as dist
from mtpert.metrics.de import deg_overlap
from mtpert.metrics.expression import pearson_delta, r2, r2_bootstrap
from mtpert.metrics.pair import EvalPair

MetricKind = Literal["expression", "de", "distance"]
KINDS: tuple[MetricKind, ...] = ("expression", "de", "distance")


@dataclass(frozen=True)
class Metric:
    """One metric: how to compute it on an :class:`EvalPair` and how to read its value.

    Attributes:
        name: unique identifier, used in result tables.
        function: ``pair -> value``, or ``pair -> (mean, spread)`` for resampled metrics.
        best: value of a perfect prediction (for ``mean_pairwise``, a bound no prediction reaches).
        higher_is_better: direction of improvement.
        description: one line for tables and docs.
        kind: ``"expression"``, ``"de"`` or ``"distance"``.
    """

    name: str
    function: Callable[[EvalPair], float | tuple[float, float]]
    best: float
    higher_is_better: bool
    description: str
    kind: MetricKind

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"Metric name {self.name!r} must be an identifier.")
        if self.kind not in KINDS:
            raise ValueError(f"Metric kind {self.kind!r} is not one of {KINDS}.")

    def __call__(self, pair: EvalPair) -> tuple[float, float]:
        """``(value, spread)``; spread is NaN for metrics computed once."""
        result = self.function(pair)
        if isinstance(result, tuple):
            return float(result[0]), float(result[1])
        return float(result), math.nan


def _expression(name: str, function: Callable, description: str) -> Metric:
    return Metric(name, function, 1.0, True, description, "expression")


def _distances(name: str, to_truth: dist.ToTruth, what: str) -> tuple[Metric, Metric]:
    """The absolute and the control-relative version of one distance (both best at 0)."""
    return (
        Metric(
            name,
            partial(dist.absolute, to_truth),
            0.0,
            False,
            f"{what}, pred to truth, in PCA space",
            "distance",
        ),
        Metric(
            f"{name}_rel",
            partial(dist.relative, to_truth),
            0.0,
            False,
            f"{what}, pred-to-truth over control-to-truth (< 1 beats predicting no change)",
            "distance",
        ),
    )


_ALL: tuple[Metric, ...] = (
    _expression("r2_all", r2, "R² of per-gene means, truth vs pred, all genes"),
    _expression("r2_top20", partial(r2, top=20), "R² of per-gene means over the top-20 true DEGs"),
    _expression(
        "r2_top100", partial(r2, top=100), "R² of per-gene means over the top-100 true DEGs"
    ),
    _expression(
        "r2_all_boot", r2_bootstrap, "r2_all over 100 resamples of 80% of cells: mean, std"
    ),
    _expression(
        "r2_top20_boot", partial(r2_bootstrap, top=20), "r2_top20 over 100 resamples: mean, std"
    ),
    _expression(
        "r2_top100_boot", partial(r2_bootstrap, top=100), "r2_top100 over 100 resamples: mean, std"
    ),
    _expression(
        "pearson_delta_all", pearson_delta, "Pearson r of mean change from control, pred vs truth"
    ),
    _expression(
        "pearson_delta_top20",
        partial(pearson_delta, top=20),
        "pearson_delta over the top-20 true DEGs",
    ),
    _expression(
        "pearson_delta_top100",
        partial(pearson_delta, top=100),
        "pearson_delta over the top-100 true DEGs",
    ),
    Metric(
        "deg_overlap_top100",
        partial(deg_overlap, top=100),
        100.0,
        True,
        "Shared genes among the top-100 DEGs (|Welch t| vs control) of truth and of pred",
        "de",
    ),
    *_distances("e_distance", dist.e_distance_to_truth, "Energy distance"),
    *_distances(
        "wasserstein", dist.wasserstein_to_truth, "Exact OT cost, squared-Euclidean ground cost"
    ),
    *_distances("euclidean", dist.euclidean_to_truth, "Euclidean distance between mean vectors"),
    *_distances(
        "mean_pairwise", dist.mean_pairwise_to_truth, "Mean Euclidean distance over cell pairs"
    ),
    *_distances("mmd", dist.mmd_to_truth, "Biased RBF MMD², bandwidth fixed from control ∪ truth"),
)

METRICS: Mapping[str, Metric] = MappingProxyType({metric.name: metric for metric in _ALL})
"""Every metric by name, in report order; read-only."""
if len(METRICS) != len(_ALL):
    raise RuntimeError("Duplicate metric names in mtpert.metrics.registry.")


def list_metrics() -> pd.DataFrame:
    """One row per metric: name, kind, best value, direction and description."""
    return pd.DataFrame(
        [
            {
                "name": m.name,
                "kind": m.kind,
                "best": m.best,
                "higher_is_better": m.higher_is_better,
                "description": m.description,
            }
            for m in METRICS.values()
        ]
    )
