"""Differentially expressed genes: Welch t-test per gene with a variance floor, ranked by |t|.

Genes are ranked by the absolute t statistic, so up- and down-regulated genes compete for the
same top-k list: a model must get both directions right, and a response dominated by
repression is not ignored. Ties (e.g. several genes with t = 0) keep gene order, so rankings
are deterministic. Genes whose means are exactly equal are not DEGs at all.

The plain Welch t divides by the standard error of the difference, which is ~0 for genes that
are almost never detected. Predictions are often smooth (a shift added to every cell), and then
a gene at 0 in every control cell that the model nudges by 0.007 gets an infinite t and ranks
above ISG15. Following SAM (Tusher et al. 2001, PNAS 98:5116), a fudge constant ``s0`` -- the
median standard error over genes -- is added to every gene's standard error, so a difference
must be large against typical noise, not merely against a degenerate zero.

A prediction's DEGs are ranked with the *truth's* ``s0`` (:class:`~mtpert.metrics.EvalPair`), the noise scale of the
target, the same for every model. Its own would let the prediction set the scale: a network
adds ~1e-4 of cell-to-cell variation to the genes no control cell expresses, their standard
errors then pull the median towards 0, and every gene it nudges from 0 ranks above the true
DEGs (on Norman's pairs this cost the networks 40 of the top 100).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from mtpert.metrics.inputs import Cells, load_sets

if TYPE_CHECKING:
    from mtpert.metrics.pair import EvalPair


@dataclass(frozen=True)
class Moments:
    """Per-gene mean and variance (ddof 1) of a set of cells, and its number of cells: all a
    t statistic needs, so that many sets can be summarized one at a time."""

    mean: np.ndarray
    var: np.ndarray
    n: int

    @classmethod
    def of(cls, X: np.ndarray) -> Moments:
        return cls(X.mean(axis=0), X.var(axis=0, ddof=1) if len(X) > 1 else np.zeros(X.shape[1]), len(X))


def welch_t(control: np.ndarray, perturbed: np.ndarray, *, s0: float | None = None) -> np.ndarray:
    """Welch's t statistic of ``perturbed`` vs ``control`` for every gene (column), moderated.

    ``t = (mean_p - mean_c) / (se + s0)`` with ``se`` Welch's standard error of the difference.
    ``s0=None`` uses the median ``se`` over genes with ``se > 0`` (SAM's fudge constant); pass
    ``s0=0`` for the plain Welch t (then a gene constant in each group at different values gets
    ±inf). A gene with equal means gets t = 0.
    """
    return welch_t_of(Moments.of(control), Moments.of(perturbed), s0=s0)


def welch_t_of(control: Moments, perturbed: Moments, *, s0: float | None = None) -> np.ndarray:
    """:func:`welch_t` from the two sets' :class:`Moments`."""
    if perturbed.n < 2 or control.n < 2:
        raise ValueError(
            f"A t-test needs at least 2 cells per group (got {control.n} control, {perturbed.n} perturbed)."
        )
    return moderated_t(perturbed.mean - control.mean, welch_se(control, perturbed), s0=s0)


def welch_se(control: Moments, perturbed: Moments) -> np.ndarray:
    """Welch's standard error of the difference of the two sets' means, per gene."""
    return np.sqrt(perturbed.var / perturbed.n + control.var / control.n)


def moderated_t(diff: np.ndarray, se: np.ndarray, *, s0: float | None = None) -> np.ndarray:
    """``diff / (se + s0)`` per gene, 0 where ``diff`` is 0: a difference of means (or any
    contrast of them) over its standard error, moderated by SAM's fudge constant ``s0``
    (:func:`median_se` of ``se`` when None)."""
    if s0 is None:
        s0 = median_se(se)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = diff / (se + s0)
    return np.where(diff == 0, 0.0, t)


def median_se(se: np.ndarray) -> float:
    """SAM's fudge constant: the median of the positive standard errors (1 if none is)."""
    positive = se[se > 0]
    return float(np.median(positive)) if positive.size else 1.0


def rank_genes(control: np.ndarray, perturbed: np.ndarray) -> np.ndarray:
    """Indices of genes whose means differ, from most to least differentially expressed.

    Ordered by |moderated t|, descending. Genes with exactly equal means are no DEGs and are left
    out, so a prediction identical to control has no DEGs (and a DEG overlap of 0), rather than
    an arbitrary top-k taken in gene order.
    """
    return by_strength(welch_t(control, perturbed))


def by_strength(t: np.ndarray) -> np.ndarray:
    """Indices of the genes with ``t != 0``, by ``|t|`` from largest, ties in gene order."""
    strength = np.abs(t)
    order = np.argsort(-strength, kind="stable")
    return order[strength[order] > 0]


def top_degs(
    control: Cells, perturbed: Cells, n: int = 100, *, genes: ArrayLike | None = None
) -> pd.Index:
    """Names of the ``n`` genes with the largest |moderated Welch t|, ``perturbed`` vs ``control``.

    Inputs are log-normalized AnnData or arrays, checked and gene-aligned as in
    :class:`~mtpert.metrics.EvalPair`; ``genes`` names the columns of arrays (unnamed columns
    are called ``gene_0``, ``gene_1``, ...). Fewer than ``n`` genes: all of them.
    """
    names, data = load_sets({"perturbed": perturbed, "control": control}, genes=genes)
    return names[rank_genes(data["control"], data["perturbed"])[:n]]


def deg_overlap(pair: EvalPair, top: int = 100) -> float:
    """Genes shared by the top-``top`` DEGs of truth-vs-control and of pred-vs-control (both
    ranked with the truth's fudge constant ``s0``).

    A count from 0 to ``top``; with fewer genes than ``top``, all genes are used and the count
    is trivially the number of genes.
    """
    return float(np.intersect1d(pair.truth_degs[:top], pair.pred_degs[:top]).size)
