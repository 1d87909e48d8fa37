"""The validated, gene-aligned cells of one held-out target, and the values every metric shares.

An :class:`EvalPair` holds three sets of cells over the same genes -- ``control`` (the target's
unperturbed cells), ``truth`` (its real perturbed cells) and ``pred`` (predicted perturbed
cells) -- as dense arrays of log-normalized expression. It is built once per target; what the
metrics derive from it (per-gene means, DEG rankings, PCA coordinates, the MMD bandwidth,
bootstrap means, the test of the true effect) is computed on first use and cached. The PCA and
the bandwidth are fitted on control ∪ truth only, so the prediction is measured in a space it
had no say in, and the distance of ``pred`` and of ``control`` to ``truth`` share one scale.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from types import MappingProxyType
from typing import Literal

import numpy as np
import pandas as pd
import scipy.linalg
from numpy.typing import ArrayLike, DTypeLike
from threadpoolctl import threadpool_limits

from mtpert.errors import DataError
from mtpert.metrics.de import rank_genes
from mtpert.metrics.distances import ToTruth, median_heuristic_gamma
from mtpert.metrics.effect import EffectTest, effect_test
from mtpert.metrics.inputs import Cells, load_sets

Which = Literal["control", "truth", "pred"]

DEFAULT_N_PCS = 50
N_BOOTSTRAP = 100
BOOTSTRAP_FRACTION = 0.8
"""Each bootstrap resample draws this fraction of the cells, without replacement."""
MIN_VARIANCE_RATIO = 1e-10
"""Principal axes with less variance than this times the largest are numerically zero: dropped."""


class EvalPair:
    """Control, true and predicted cells of one target, checked and put in the same gene order.

    Args:
        control, truth, pred: cells x genes log-normalized expression (log1p of
            ``normalize_total``), checked as described in :mod:`mtpert.metrics.inputs`: AnnData
            must look log-normalized, arrays must be finite. ``pred`` and ``control`` are
            reordered to ``truth``'s gene order when they hold the same genes in another order.
        genes: gene names of array inputs (AnnData inputs carry their own).
        n_pcs: most principal components of the space the distances are measured in.
        seed: seed of the bootstrap resamples and of the bandwidth subsample.
        dtype: float dtype of the stored arrays.

    Raises:
        DataError: NaN/inf values, raw counts or non-log AnnData, fewer than two cells in a set,
            or gene sets that differ.
    """

    def __init__(
        self,
        control: Cells,
        truth: Cells,
        pred: Cells,
        *,
        genes: ArrayLike | None = None,
        n_pcs: int = DEFAULT_N_PCS,
        seed: int = 0,
        dtype: DTypeLike = np.float64,
    ) -> None:
        if n_pcs < 1:
            raise DataError(f"n_pcs must be at least 1, got {n_pcs}.")
        # truth first: its gene order is the one the others are put in
        sets = {"truth": truth, "control": control, "pred": pred}
        names, matrices = load_sets(sets, genes=genes, dtype=dtype)
        self.genes: pd.Index = names
        self.data: Mapping[Which, np.ndarray] = MappingProxyType(
            {w: matrices[w] for w in ("control", "truth", "pred")}
        )
        self.n_pcs = n_pcs
        self.seed = seed
        self._distances: dict[tuple[ToTruth, Which], float] = {}

    def __repr__(self) -> str:
        sizes = ", ".join(f"{len(X)} {which}" for which, X in self.data.items())
        return f"EvalPair({sizes} x {len(self.genes)} genes)"

    @property
    def n_cells(self) -> dict[Which, int]:
        """Number of cells in each set."""
        return {which: len(X) for which, X in self.data.items()}

    # ------------------------------------------------------------------ cached derived values
    @cached_property
    def means(self) -> Mapping[Which, np.ndarray]:
        """Per-gene mean expression of each set."""
        return MappingProxyType({which: X.mean(axis=0) for which, X in self.data.items()})

    @cached_property
    def truth_degs(self) -> np.ndarray:
        """Every gene index, ranked by |Welch t| of truth vs control (the true DEGs first)."""
        return rank_genes(self.data["control"], self.data["truth"])

    @cached_property
    def pred_degs(self) -> np.ndarray:
        """Every gene index, ranked by |Welch t| of pred vs control."""
        return rank_genes(self.data["control"], self.data["pred"])

    @cached_property
    def effect(self) -> EffectTest:
        """Size and permutation test of the true change from control (:mod:`mtpert.metrics.effect`),
        with a fixed seed, not ``seed``: whether an effect is detectable depends on the cells only."""
        return effect_test(self.data["control"], self.data["truth"])

    @cached_property
    def pcs(self) -> Mapping[Which, np.ndarray]:
        """Each set's coordinates on the principal axes of control ∪ truth.

        At most ``n_pcs`` axes, fewer when control ∪ truth has lower rank. Each set is projected
        separately with the same operation, so identical sets get identical coordinates.
        """
        fit_on = np.vstack([self.data["control"], self.data["truth"]])
        center, axes = _principal_axes(fit_on, self.n_pcs)
        return MappingProxyType({which: (X - center) @ axes.T for which, X in self.data.items()})

    @cached_property
    def mmd_gamma(self) -> float:
        """RBF kernel ``gamma`` for MMD: median heuristic on control ∪ truth in PCA space."""
        return median_heuristic_gamma(
            np.vstack([self.pcs["control"], self.pcs["truth"]]), seed=self.seed
        )

    @cached_property
    def bootstrap_means(self) -> Mapping[Which, np.ndarray]:
        """Per-gene means of truth and of pred over ``N_BOOTSTRAP`` resamples (rows).

        Each resample draws ``BOOTSTRAP_FRACTION`` of the cells without replacement, truth and
        pred independently, from a generator seeded with ``seed``.
        """
        rng = np.random.default_rng(self.seed)
        return MappingProxyType(
            {which: _resampled_means(self.data[which], rng) for which in ("truth", "pred")}
        )

    def distance(self, to_truth: ToTruth, of: Which) -> float:
        """``to_truth(self, of)``: a distance from ``of`` to truth, computed once and cached."""
        key = (to_truth, of)
        if key not in self._distances:
            self._distances[key] = to_truth(self, of)
        return self._distances[key]


# ---------------------------------------------------------------------- derived values
def _principal_axes(Z: np.ndarray, n_pcs: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``Z`` and its top principal axes (rows, unit length), largest variance first.

    Eigen-decomposes the smaller of the Gram and the covariance matrix, which for a few hundred
    cells x thousands of genes is several times faster than an SVD and gives the same axes. The
    eigensolver runs on one BLAS thread: at this size threads only add synchronisation, and on
    a busy machine multi-threaded OpenBLAS stalls there for seconds (measured: 4 s vs 0.05 s).
    """
    center = Z.mean(axis=0)
    centered = Z - center
    use_gram = centered.shape[0] < centered.shape[1]
    square = centered @ centered.T if use_gram else centered.T @ centered
    k = min(n_pcs, len(square))
    with threadpool_limits(limits=1, user_api="blas"):
        variances, vectors = scipy.linalg.eigh(
            square, subset_by_index=[len(square) - k, len(square) - 1]
        )
    variances, vectors = variances[::-1], vectors[:, ::-1]
    keep = variances > MIN_VARIANCE_RATIO * max(variances[0], 0.0)
    variances, vectors = variances[keep], vectors[:, keep]
    axes = (centered.T @ vectors / np.sqrt(variances)).T if use_gram else vectors.T
    return center, axes


def _resampled_means(X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-gene means over ``N_BOOTSTRAP`` subsamples of the rows of ``X`` (one row each)."""
    n = len(X)
    size = max(1, round(BOOTSTRAP_FRACTION * n))
    chosen = np.argsort(rng.random((N_BOOTSTRAP, n)), axis=1)[:, :size]
    weights = np.zeros((N_BOOTSTRAP, n), dtype=X.dtype)
    np.put_along_axis(weights, chosen, 1.0 / size, axis=1)
    return weights @ X
