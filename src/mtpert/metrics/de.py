"""Differentially expressed genes: Welch t-test per gene, ranked by |t|.

Genes are ranked by the absolute t statistic, so up- and down-regulated genes compete for the
same top-k list: a model must get both directions right, and a response dominated by
repression is not ignored. Ties (e.g. several genes with t = 0) keep gene order, so rankings
are deterministic.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats

from mtpert.metrics.inputs import Cells, load_sets

if TYPE_CHECKING:
    from mtpert.metrics.pair import EvalPair


def welch_t(control: np.ndarray, perturbed: np.ndarray) -> np.ndarray:
    """Welch's t statistic of ``perturbed`` vs ``control`` for every gene (column).

    A gene constant at the same value in both groups gets t = 0 (scipy gives NaN); a gene constant
    in each group at different values gets ±inf, a perfect separation that ranks first.
    """
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        t = stats.ttest_ind(perturbed, control, equal_var=False, axis=0).statistic
    return np.where(np.isnan(t), 0.0, t)


def rank_genes(control: np.ndarray, perturbed: np.ndarray) -> np.ndarray:
    """Gene indices ordered from most to least differentially expressed (|Welch t|, descending)."""
    return np.argsort(-np.abs(welch_t(control, perturbed)), kind="stable")


def top_degs(
    control: Cells, perturbed: Cells, n: int = 100, *, genes: ArrayLike | None = None
) -> pd.Index:
    """Names of the ``n`` genes with the largest |Welch t|, ``perturbed`` vs ``control``, top first.

    Inputs are log-normalized AnnData or arrays, checked and gene-aligned as in
    :class:`~mtpert.metrics.EvalPair`; ``genes`` names the columns of arrays (unnamed columns
    are called ``gene_0``, ``gene_1``, ...). Fewer than ``n`` genes: all of them.
    """
    names, data = load_sets({"perturbed": perturbed, "control": control}, genes=genes)
    return names[rank_genes(data["control"], data["perturbed"])[:n]]


def deg_overlap(pair: EvalPair, top: int = 100) -> float:
    """Genes shared by the top-``top`` DEGs of truth-vs-control and of pred-vs-control.

    A count from 0 to ``top``; with fewer genes than ``top``, all genes are used and the count
    is trivially the number of genes.
    """
    return float(np.intersect1d(pair.truth_degs[:top], pair.pred_degs[:top]).size)
