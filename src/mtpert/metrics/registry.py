"""Every metric mtpert reports, with the metadata needed to read it; open to users and plugins.

mtpert's own metrics are listed below. A user adds one with :func:`register_metric`, an installed
package through the ``mtpert.metrics`` entry-point group (the entry point names a :class:`Metric`
of the same name, or a function that calls :func:`register_metric`; see :mod:`mtpert.plugins`). Once registered, a metric is computed by
:func:`~mtpert.metrics.evaluate` (per-target metrics) or :func:`~mtpert.metrics.evaluate_across`
(across-target metrics), by the benchmark, and read by the report, with its best value and
direction in every result row.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import pandas as pd

from mtpert.metrics import distances as dist
from mtpert.metrics.de import deg_overlap
from mtpert.metrics.effect import detectable, effect_false_positive
from mtpert.metrics.expression import direction_accuracy, mse, pearson_delta, r2, r2_bootstrap
from mtpert.metrics.interaction import genetic_interaction
from mtpert.metrics.pair import EvalPair
from mtpert.metrics.rank import condition_rank, discrimination
from mtpert.plugins import PluginRegistry

MetricKind = Literal["expression", "de", "distance", "rank", "effect", "other"]
KINDS: tuple[MetricKind, ...] = ("expression", "de", "distance", "rank", "effect", "other")
Scope = Literal["per_target", "across_targets"]
SCOPES: tuple[Scope, ...] = ("per_target", "across_targets")
SCOPE_WORDS: Mapping[Scope, str] = {
    "per_target": "per target",
    "across_targets": "across the targets of a group",
}
SCORED_BY: Mapping[Scope, str] = {
    "per_target": "mtpert.metrics.evaluate / evaluate_prediction",
    "across_targets": "mtpert.metrics.evaluate_across",
}
"""The functions that compute the metrics of each scope, named in errors."""
ENTRY_POINT_GROUP = "mtpert.metrics"
"""Entry-point group in which installed packages declare their metrics."""


@dataclass(frozen=True)
class Metric:
    """One metric: how to compute it and how to read its value.

    Attributes:
        name: unique identifier, used in result tables.
        function: for a ``per_target`` metric, ``pair -> value`` or ``pair -> (mean, spread)``
            (resampled metrics) on an :class:`EvalPair` (one target's control, true and
            predicted cells). For an ``across_targets`` metric, ``(truths, preds, *, control)
            -> {key: value}``: the true cells of every condition (dose) of one group, the
            predictions of some of them (same keys) and the group's control cells (None when it
            has none), as :func:`~mtpert.metrics.condition_rank` takes them; one value per key
            of ``preds``. :func:`~mtpert.metrics.evaluate_across` keys them by
            :class:`~mtpert.metrics.Condition` (cell type, condition, dose and the single
            perturbations the condition combines).
        best: value of a perfect prediction (for ``mean_pairwise``, a bound no prediction reaches).
        higher_is_better: direction of improvement.
        description: one line for tables, docs and the report.
        kind: ``"expression"``, ``"de"``, ``"distance"``, ``"rank"``, ``"effect"`` (whether
            the true change is detectable, and what a model predicts where it is not) or
            ``"other"``.
        scope: ``"per_target"`` (computed from one target's cells) or ``"across_targets"``
            (computed from all predictions of a group at once, like ``rank``).
        version: of the definition, raised when a change of the computation makes earlier
            values incomparable. A benchmark records it with every value (``metric_version``),
            leaves out older values from its results, and ``mtpert benchmark --rescore`` redoes
            their runs.
    """

    name: str
    function: Callable[..., Any]
    best: float
    higher_is_better: bool
    description: str
    kind: MetricKind = "other"
    scope: Scope = "per_target"
    version: int = 1

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"Metric name {self.name!r} must be an identifier (e.g. 'my_r2').")
        if self.kind not in KINDS:
            raise ValueError(f"Metric kind {self.kind!r} is not one of {KINDS}.")
        if self.scope not in SCOPES:
            raise ValueError(f"Metric scope {self.scope!r} is not one of {SCOPES}.")
        if not callable(self.function):
            raise TypeError(f"The function of metric '{self.name}' is not callable: {self.function!r}.")
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise ValueError(f"Metric version must be a whole number from 1, got {self.version!r}.")

    def __call__(self, pair: EvalPair) -> tuple[float, float]:
        """``(value, spread)`` of a per-target metric; spread is NaN for metrics computed once."""
        self._require("per_target")
        result = self.function(pair)
        if isinstance(result, tuple):
            return float(result[0]), float(result[1])
        return float(result), math.nan

    def across(
        self,
        truths: Mapping[Hashable, Any],
        preds: Mapping[Hashable, Any],
        control: Any = None,
    ) -> pd.Series:
        """Value of an across-target metric for each key of ``preds``, as floats in that order."""
        self._require("across_targets")
        values = pd.Series(self.function(truths, preds, control=control), dtype=object)
        missing = [k for k in preds if k not in values.index]
        if missing:
            raise ValueError(f"Metric '{self.name}' returned no value for {missing}.")
        return values.reindex(list(preds)).astype(float)

    def _require(self, scope: Scope) -> None:
        if self.scope != scope:
            how = "one target at a time" if scope == "per_target" else "across the targets of a group"
            raise TypeError(
                f"Metric '{self.name}' is computed {SCOPE_WORDS[self.scope]}, not {how}; "
                f"score it with {SCORED_BY[self.scope]}."
            )


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
        "mse_top20",
        partial(mse, top=20),
        0.0,
        False,
        "Mean squared error of per-gene means, truth vs pred, over the top-20 true DEGs",
        "expression",
    ),
    Metric(
        "direction_top20",
        partial(direction_accuracy, top=20),
        1.0,
        True,
        "Fraction of the top-20 true DEGs whose predicted change from control has the true sign "
        "(0.5 random signs, 0 no change)",
        "de",
    ),
    Metric(
        "direction_top100",
        partial(direction_accuracy, top=100),
        1.0,
        True,
        "direction_top20 over the top-100 true DEGs",
        "de",
    ),
    Metric(
        "deg_overlap_top100",
        partial(deg_overlap, top=100),
        100.0,
        True,
        "Shared genes among the top-100 DEGs (|Welch t| vs control) of truth and of pred",
        "de",
        version=2,  # 2: the prediction's DEGs are ranked with the truth's fudge constant
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
    Metric(
        "detectable",
        detectable,
        1.0,
        True,
        "1 if the true mean change from control exceeds what random relabelling of control and "
        "true cells gives (permutation test, p < 0.05), 0 for no detectable effect; a property "
        "of the data, the same for every model",
        "effect",
    ),
    Metric(
        "effect_false_positive",
        effect_false_positive,
        0.0,
        False,
        "Where the true effect is not detectable: the predicted mean change in units of the "
        "sampling noise of the true one (0 no change, ~1 noise-sized; NaN where detectable)",
        "effect",
    ),
    Metric(
        "rank",
        condition_rank,
        0.0,
        False,
        "Fraction of the group's other true doses (conditions) whose mean expression is closer "
        "to the prediction than its own (0 best; 0.5 is what a dose-blind prediction scores)",
        "rank",
        "across_targets",
    ),
    Metric(
        "discrimination",
        discrimination,
        0.0,
        False,
        "Fraction of the group's other true perturbations whose change from control is closer "
        "in direction (cosine) to the predicted change than its own (0 best; 0.5 for a "
        "prediction that ignores the perturbation)",
        "rank",
        "across_targets",
    ),
    Metric(
        "gi_pearson_top20",
        partial(genetic_interaction, measure="pearson"),
        1.0,
        True,
        "Combinations: Pearson r of predicted vs true genetic interaction (change minus the sum "
        "of the measured singles' changes) over the 20 genes of strongest true interaction "
        "(0 for the additive model)",
        "expression",
        "across_targets",
    ),
    Metric(
        "gi_mse_top20",
        partial(genetic_interaction, measure="mse"),
        0.0,
        False,
        "Combinations: mean squared error of predicted vs true genetic interaction over the 20 "
        "genes of strongest true interaction (the additive model scores the true GI's mean square)",
        "expression",
        "across_targets",
    ),
)


BUILTIN: tuple[str, ...] = tuple(m.name for m in _ALL)
"""Names of mtpert's own metrics, in report order; the others in :data:`METRICS` were added by
users or plugins."""


class MetricRegistry(PluginRegistry[Metric]):
    """Metrics by name, read like a dict (:class:`~mtpert.plugins.PluginRegistry`): mtpert's,
    those added with :meth:`register`, and those of the plugins of entry-point group ``group``.

    A plugin's entry point names a :class:`Metric` of the entry point's name, or a function that
    calls :func:`register_metric` itself.
    """

    kind = "metric"

    def __init__(self, metrics: Iterable[Metric] = (), *, group: str = ENTRY_POINT_GROUP) -> None:
        super().__init__(((metric.name, metric) for metric in metrics), group)

    def register(self, metric: Metric) -> Metric:
        """Add ``metric`` under its name and return it. The same definition again (function by
        ``module:qualname``, and metadata) is accepted, e.g. from a notebook cell run twice;
        another metric under a taken name is refused (:class:`~mtpert.errors.ConfigError`)."""
        if not isinstance(metric, Metric):
            raise TypeError(f"{metric!r} is not a mtpert.metrics.Metric.")
        return self._add(metric.name, metric)

    def _register_plugin(self, name: str, loaded: object) -> None:
        if isinstance(loaded, Metric):
            if loaded.name != name:
                raise ValueError(f"the entry point is named '{name}' but its Metric '{loaded.name}'")
            self.register(loaded)
        elif callable(loaded):
            loaded()
        else:
            raise TypeError(
                f"the entry point must name a mtpert.metrics.Metric or a function that calls "
                f"register_metric, not a {type(loaded).__name__}"
            )

    @staticmethod
    def _identity(metric: Metric) -> tuple:
        """The function (by ``module:qualname``, so a function defined again by a rerun cell
        counts as the same) and the metadata."""
        function = metric.function
        where = f"{getattr(function, '__module__', '')}:{getattr(function, '__qualname__', repr(function))}"
        return (where, metric.best, metric.higher_is_better, metric.description, metric.kind, metric.scope)

    @staticmethod
    def _describe(metric: Metric) -> str:
        where, best, higher, *_, scope = MetricRegistry._identity(metric)
        return f"{where}, best {best:g}, {'higher' if higher else 'lower'} is better, {scope}"


METRICS: MetricRegistry = MetricRegistry(_ALL)
"""Every metric by name: mtpert's in report order, then those registered by users and plugins.
Read-only as a mapping; add to it with :func:`register_metric`."""


def register_metric(
    name: str,
    function: Callable[..., Any],
    *,
    best: float,
    higher_is_better: bool,
    description: str,
    scope: Scope = "per_target",
    kind: MetricKind = "other",
    version: int = 1,
) -> Metric:
    """Add a metric to :data:`METRICS`, so that evaluation, the benchmark and its report compute it.

    Arguments as the attributes of :class:`Metric`; ``function`` takes what its ``scope`` gives
    it. A name taken by another metric is refused (:class:`~mtpert.errors.ConfigError`), so no
    metric silently replaces another. Returns the registered :class:`Metric`.

    The registration holds in this process: a benchmark run in worker processes (``jobs > 1``,
    Ray) computes only the metrics they find too, mtpert's and those of installed plugins. Call
    it from your package's ``mtpert.metrics`` entry point to have it everywhere.
    """
    return METRICS.register(Metric(name, function, best, higher_is_better, description, kind, scope, version))


def list_metrics() -> pd.DataFrame:
    """One row per metric: name, kind, scope, best value, direction, description and version."""
    return pd.DataFrame(
        [
            {
                "name": m.name,
                "kind": m.kind,
                "scope": m.scope,
                "best": m.best,
                "higher_is_better": m.higher_is_better,
                "description": m.description,
                "version": m.version,
            }
            for m in METRICS.values()
        ]
    )
