"""The validated, gene-aligned cells of one held-out target, and the values every metric shares.

An :class:`EvalPair` holds three sets of cells over the same genes -- ``control`` (the target's
unperturbed cells), ``truth`` (its real perturbed cells) and ``pred`` (predicted perturbed
cells) -- as dense arrays of log-normalized expression. It is built once per target; what the
metrics derive from it (per-gene means, DEG rankings, PCA coordinates, the MMD bandwidth,
bootstrap means, the test of the true effect) is computed on first use and cached. The PCA and
the bandwidth are fitted on control ∪ truth only, so the prediction is measured in a space it
had no say in, and the distance of ``pred`` and of ``control`` to ``truth`` share one scale.

When many targets share one control (the perturbations of a screen), a :class:`SharedControl`
computes what depends on the control alone once, for all of them: the checked matrix, its means,
the relabellings of the effect test, and -- since the targets then share one :class:`Space`,
fitted on control ∪ the truths of every target -- its coordinates and within-set distances.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import cached_property
from types import MappingProxyType
from typing import Literal

import numpy as np
import pandas as pd
import scipy.linalg
from numpy.typing import ArrayLike, DTypeLike

from mtpert._array import one_blas_thread
from mtpert.errors import DataError
from mtpert.metrics.de import Moments, by_strength, median_se, welch_se, welch_t_of
from mtpert.metrics.distances import ToTruth, mean_distance, mean_kernel, median_heuristic_gamma
from mtpert.metrics.effect import EffectTest, Relabellings
from mtpert.metrics.inputs import Cells, load_sets

Which = Literal["control", "truth", "pred"]
PairMean = Literal["euclidean", "rbf"]
"""What :meth:`EvalPair.pair_mean` averages over pairs of cells: their Euclidean distance, or
their RBF kernel with the space's MMD bandwidth."""

DEFAULT_N_PCS = 50
N_BOOTSTRAP = 100
BOOTSTRAP_FRACTION = 0.8
"""Each bootstrap resample draws this fraction of the cells, without replacement."""
MIN_VARIANCE_RATIO = 1e-10
"""Principal axes with less variance than this times the largest are numerically zero: dropped."""
MAX_CELLS_FOR_SPACE = 20_000
"""Most cells a shared :class:`Space` is fitted on (a fixed random subset beyond this)."""


@dataclass(frozen=True)
class Space:
    """Where the distances of a pair are measured: principal axes and an MMD bandwidth.

    Attributes:
        center: per-gene mean subtracted before projecting.
        axes: principal axes (rows, unit length), largest variance first.
        mmd_gamma: RBF ``gamma`` of MMD, by the median heuristic on the fitted cells.
    """

    center: np.ndarray
    axes: np.ndarray
    mmd_gamma: float

    @classmethod
    def fit(cls, sets: list[np.ndarray], n_pcs: int = DEFAULT_N_PCS, *, seed: int = 0) -> Space:
        """The top ``n_pcs`` principal axes of the union of ``sets`` and the median-heuristic
        bandwidth of its cells (``seed`` draws the cells it uses beyond
        :data:`~mtpert.metrics.distances.MAX_CELLS_FOR_BANDWIDTH`)."""
        center, axes = _principal_axes(np.vstack(sets), n_pcs)
        space = cls(center, axes, mmd_gamma=float("nan"))
        projected = np.vstack([space.project(X) for X in sets])  # set by set, as pairs project
        return replace(space, mmd_gamma=median_heuristic_gamma(projected, seed=seed))

    def project(self, X: np.ndarray) -> np.ndarray:
        """Coordinates of the cells ``X`` on the axes."""
        return (X - self.center) @ self.axes.T


class SharedControl:
    """The control cells of many targets, with what each target's :class:`EvalPair` derives from
    them alone, computed once instead of once per target; pass it as the pair's ``control``.

    The targets share one :class:`Space` (in a single pair, the space is the pair's own: fitted on
    its control ∪ truth); fit it on the control and every target's truth, so that a prediction
    still has no say in it.

    Args:
        control: cells x genes log-normalized expression, checked as in :class:`EvalPair`.
        space: where the targets' distances are measured.
        genes: gene names of array input.
        dtype: float dtype of the stored array (the pairs' dtype).
    """

    def __init__(
        self,
        control: Cells,
        space: Space,
        *,
        genes: ArrayLike | None = None,
        dtype: DTypeLike = np.float64,
    ) -> None:
        names, matrices = load_sets({"control": control}, genes=genes, dtype=dtype)
        self.genes: pd.Index = names
        self.data: np.ndarray = matrices["control"]
        self.space = space
        self.relabellings = Relabellings(self.data)
        self.mean: np.ndarray = self.relabellings.control_mean
        self.pcs: np.ndarray = space.project(self.data)
        self.pair_means: dict[PairMean, float] = {}
        """Means over pairs of control cells, filled by the first pair that needs each."""

    def __repr__(self) -> str:
        return f"SharedControl({len(self.data)} cells x {len(self.genes)} genes, {len(self.space.axes)} axes)"


class EvalPair:
    """Control, true and predicted cells of one target, checked and put in the same gene order.

    Args:
        control, truth, pred: cells x genes log-normalized expression (log1p of
            ``normalize_total``), checked as described in :mod:`mtpert.metrics.inputs`: AnnData
            must look log-normalized, arrays must be finite. ``pred`` and ``control`` are
            reordered to ``truth``'s gene order when they hold the same genes in another order.
            ``control`` may be a :class:`SharedControl`: then the pair uses its space, and
            ``truth`` and ``pred`` are put in its gene order.
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
        self.shared = control if isinstance(control, SharedControl) else None
        if self.shared is not None:
            names, matrices = load_sets({"truth": truth, "pred": pred}, genes=genes, dtype=dtype)
            names, matrices = _in_gene_order(self.shared.genes, names, matrices)
            matrices["control"] = self.shared.data
        else:  # truth first: its gene order is the one the others are put in
            sets = {"truth": truth, "control": control, "pred": pred}
            names, matrices = load_sets(sets, genes=genes, dtype=dtype)
        self.genes: pd.Index = names
        self.data: Mapping[Which, np.ndarray] = MappingProxyType(
            {w: matrices[w] for w in ("control", "truth", "pred")}
        )
        self.n_pcs = n_pcs
        self.seed = seed
        self._distances: dict[tuple[ToTruth, Which], float] = {}
        self._pair_means: dict[tuple[Which, Which, PairMean], float] = {}
        self._moments: dict[Which, Moments] = {}

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
        means = {which: X.mean(axis=0) for which, X in self.data.items() if which != "control"}
        control = self.shared.mean if self.shared is not None else self.data["control"].mean(axis=0)
        return MappingProxyType({"control": control, **means})

    @cached_property
    def degs_s0(self) -> float:
        """The fudge constant of truth vs control, with which the true and the predicted DEGs are
        both ranked (:mod:`mtpert.metrics.de`: a prediction may not set its own)."""
        return median_se(welch_se(self.moments("control"), self.moments("truth")))

    @cached_property
    def truth_degs(self) -> np.ndarray:
        """Every gene index, ranked by |Welch t| of truth vs control (the true DEGs first)."""
        return self._degs("truth")

    @cached_property
    def pred_degs(self) -> np.ndarray:
        """Every gene index, ranked by |Welch t| of pred vs control, moderated by ``degs_s0``."""
        return self._degs("pred")

    def _degs(self, of: Which) -> np.ndarray:
        return by_strength(welch_t_of(self.moments("control"), self.moments(of), s0=self.degs_s0))

    def moments(self, of: Which) -> Moments:
        """Per-gene mean and variance of set ``of``, for the t statistics of the DEGs (cached)."""
        if of not in self._moments:
            self._moments[of] = Moments.of(self.data[of])
        return self._moments[of]

    @cached_property
    def effect(self) -> EffectTest:
        """Size and permutation test of the true change from control (:mod:`mtpert.metrics.effect`),
        with a fixed seed, not ``seed``: whether an effect is detectable depends on the cells only."""
        relabellings = (
            self.shared.relabellings if self.shared else Relabellings(self.data["control"])
        )
        return relabellings.test(self.data["truth"])

    @cached_property
    def space(self) -> Space:
        """Where distances are measured: the principal axes of control ∪ truth (at most ``n_pcs``,
        fewer when control ∪ truth has lower rank) and their MMD bandwidth; a shared control's
        space when the pair has one."""
        if self.shared is not None:
            return self.shared.space
        return Space.fit([self.data["control"], self.data["truth"]], self.n_pcs, seed=self.seed)

    @cached_property
    def pcs(self) -> Mapping[Which, np.ndarray]:
        """Each set's coordinates in :attr:`space`. Each set is projected separately with the same
        operation, so identical sets get identical coordinates."""
        pcs = {which: self.space.project(X) for which, X in self.data.items() if which != "control"}
        control = (
            self.shared.pcs if self.shared is not None else self.space.project(self.data["control"])
        )
        return MappingProxyType({"control": control, **pcs})

    @property
    def mmd_gamma(self) -> float:
        """RBF kernel ``gamma`` for MMD: median heuristic on control ∪ truth in PCA space."""
        return self.space.mmd_gamma

    def pair_mean(self, a: Which, b: Which, kind: PairMean) -> float:
        """Mean over all pairs (x in ``a``, y in ``b``, in PCA space) of their Euclidean distance or
        RBF kernel (:data:`PairMean`); computed once, and once for all pairs of a shared control."""
        a, b = sorted((a, b))
        shared = self.shared is not None and a == b == "control"
        cache = self.shared.pair_means if shared else self._pair_means
        key = kind if shared else (a, b, kind)
        if key not in cache:
            X, Y = self.pcs[a], self.pcs[b]
            cache[key] = (
                mean_distance(X, Y) if kind == "euclidean" else mean_kernel(X, Y, self.mmd_gamma)
            )
        return cache[key]

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
def _in_gene_order(
    genes: pd.Index, names: pd.Index, matrices: dict[str, np.ndarray]
) -> tuple[pd.Index, dict[str, np.ndarray]]:
    """``matrices`` (columns named ``names``) with their columns in the order of ``genes``."""
    if names.equals(genes):
        return genes, matrices
    if len(names) != len(genes) or not names.isin(genes).all():
        missing = genes.difference(names, sort=False)
        raise DataError(
            f"The cells' genes differ from the shared control's: {len(missing)} of the control's "
            f"genes are missing (e.g. {missing[:5].tolist()}). Score cells over the control's genes."
        )
    order = names.get_indexer(genes)
    return genes, {what: X[:, order] for what, X in matrices.items()}


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
    with one_blas_thread():
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
