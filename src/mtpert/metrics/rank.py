"""Rank across conditions: is each prediction closer to its own condition's truth than to the others'?

Per-target metrics score a prediction of dose ``d`` against dose ``d``'s cells only, so a model
that predicts the same response at every dose can score well at every dose where the response
is similar. The rank metric compares across conditions (doses, or perturbations) of one group:
for the prediction of condition ``c``, take its distance to the true mean of every condition and
count the other conditions whose truth is closer than ``c``'s own (ties count one half), over
the number of other conditions. 0: the prediction is closest to its own truth; 1: farthest;
averaged over conditions, a prediction that ignores the condition scores exactly 0.5, since the
same ordering of truths then ranks each condition in turn. This is the idea of the rank metric of
PerturBench (Wu et al. 2024), here over the conditions of one group.

The distance is between per-gene mean expressions (pseudobulks): ``euclidean`` on mean
log-expression, the default, because along a dose series the response mostly grows in size, not
direction; ``cosine`` (1 - cosine similarity of the changes from the control mean) compares the
direction only, for distinct perturbations. Genes: all genes given (e.g. the HVGs a model was
trained on), or the union of the top ``n_degs`` DEGs of every true condition against control, so
that every condition is measured on one gene set.

Registered twice: ``rank`` (euclidean, all genes), made for dose series, and ``discrimination``
(:func:`discrimination`: cosine of the changes, all genes), which is how PerturBench ranks
distinct perturbations (cosine of log fold changes), e.g. the tens of knock-outs of a screen.
Euclidean distances mix the direction of a change with its size, so a prediction of the right
direction but half the size can land nearer a weak perturbation than its own; a perturbation is
told apart by what its change does, so ``discrimination`` compares directions only. A
prediction of exactly no change is equally far (cosine distance 1) from every truth and scores
exactly 0.5.

Both need several predictions at once, so they have scope ``across_targets``:
:func:`~mtpert.metrics.evaluate_across` scores them on a prediction file, in the long result
format, and :func:`~mtpert.metrics.rank_prediction` scores ``rank`` with the options above.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from mtpert.errors import DataError
from mtpert.metrics.de import Moments, by_strength, welch_t_of
from mtpert.metrics.inputs import Cells, iter_sets

Distance = Literal["euclidean", "cosine"]
DISTANCES: tuple[str, ...] = ("euclidean", "cosine")


def condition_rank(
    truths: Mapping[Hashable, Cells],
    preds: Mapping[Hashable, Cells],
    *,
    control: Cells | None = None,
    genes: ArrayLike | None = None,
    n_degs: int | None = None,
    distance: Distance = "euclidean",
) -> pd.Series:
    """Normalized rank of each condition's prediction among the true conditions (0 best).

    Args:
        truths: real cells of each condition of one group (e.g. keyed by dose).
        preds: predicted cells of some of those conditions (at least one); each is ranked
            against every condition in ``truths`` (at least two).
        control: the group's control cells; needed for ``n_degs`` and ``cosine``.
        genes: gene names of array inputs.
        n_degs: measure on the union of each truth's top ``n_degs`` DEGs vs control; all genes
            when None.
        distance: ``euclidean`` or ``cosine`` (see the module docstring).

    Returns:
        The rank of each key of ``preds``, named ``rank``.
    """
    if distance not in DISTANCES:
        raise DataError(f"distance must be one of {DISTANCES}, got {distance!r}.")
    if len(truths) < 2:
        raise DataError(f"Ranking needs the truth of at least two conditions, got {len(truths)}.")
    unknown = [k for k in preds if k not in truths]
    if unknown or not preds:
        raise DataError(
            f"Every prediction needs its condition's truth; no truth for {unknown or 'any (no predictions)'}; "
            f"truths: {list(truths)}."
        )
    if control is None and (n_degs is not None or distance == "cosine"):
        raise DataError(
            "Pass the group's control cells: n_degs and distance='cosine' measure changes from control."
        )
    sets = {("truth", k): v for k, v in truths.items()} | {("pred", k): v for k, v in preds.items()}
    if control is not None:
        sets["control", None] = control
    # one set dense at a time: a screen's thousands of sets need not fit in memory together
    _, matrices = iter_sets({f"{w} {k}": v for (w, k), v in sets.items()}, genes=genes)
    means, moments = {}, {}
    for key, (_, X) in zip(sets, matrices, strict=True):
        means[key] = X.mean(axis=0)
        if n_degs is not None and key[0] != "pred":  # DEGs come from the truths vs control
            moments[key] = Moments.of(X)
    columns: np.ndarray | slice = slice(None)
    if n_degs is not None:
        if n_degs < 1:
            raise DataError(f"n_degs must be at least 1, got {n_degs}.")
        ctrl = moments["control", None]
        columns = np.unique(
            np.concatenate([by_strength(welch_t_of(ctrl, moments["truth", k]))[:n_degs] for k in truths])
        )
        if not columns.size:
            raise DataError(
                "No true condition differs from control in any gene, so there are no DEGs to rank on."
            )
    means = {key: mean[columns] for key, mean in means.items()}
    truth = np.stack([means["truth", k] for k in truths])
    ranks = {}
    for key in preds:
        pred = means["pred", key]
        if distance == "euclidean":
            d = np.linalg.norm(truth - pred, axis=1)
        else:
            d = _cosine_distance(truth - means["control", None], pred - means["control", None])
        own = list(truths).index(key)
        others = np.delete(d, own)
        tied = np.isclose(others, d[own])
        ranks[key] = ((others < d[own]) & ~tied).sum() + 0.5 * tied.sum()
    return pd.Series(ranks, name="rank", dtype=float) / (len(truths) - 1)


def discrimination(
    truths: Mapping[Hashable, Cells],
    preds: Mapping[Hashable, Cells],
    *,
    control: Cells | None = None,
    genes: ArrayLike | None = None,
) -> dict[Hashable, float]:
    """Rank of each predicted change from control among the true changes of every condition, by
    cosine distance over all genes (:func:`condition_rank` with ``distance="cosine"``); 0 best,
    0.5 for a prediction that ignores the perturbation. NaN for every prediction when the group
    has no control cells, since there is no change to measure."""
    if control is None:
        return dict.fromkeys(preds, float("nan"))
    return condition_rank(truths, preds, control=control, genes=genes, distance="cosine").to_dict()


def _cosine_distance(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """1 - cosine similarity of ``pred`` with each row of ``truth`` (1 where a vector is zero)."""
    norms = np.linalg.norm(truth, axis=1) * np.linalg.norm(pred)
    dots = truth @ pred
    return 1.0 - np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
