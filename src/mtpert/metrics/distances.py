"""Distances between two sets of cells, standalone and inside an :class:`~mtpert.metrics.EvalPair`.

The standalone functions take two arrays of shape ``(n_cells, n_features)`` and follow pertpy's
``pertpy.tl.Distance`` definitions (pertpy 1.0.x), so numbers are comparable where the
definitions agree:

* :func:`e_distance` -- energy distance, from Euclidean distances as in pertpy >= 0.11
  (``squared=True`` gives the scPerturb / older-pertpy variant, which equals
  ``2 * euclidean(X, Y) ** 2`` and so measures only the means).
* :func:`wasserstein` -- exact optimal-transport cost with squared-Euclidean ground cost (POT's
  network simplex; pertpy reports an entropy-regularized Sinkhorn cost instead).
* :func:`euclidean` -- distance between the two mean vectors (pertpy's ``euclidean``).
* :func:`mean_pairwise` -- mean Euclidean distance over all cross pairs. Not a metric: a set's
  distance to itself is its mean within-set distance, not 0.
* :func:`mmd` -- biased MMD² with an RBF kernel (pertpy's ``mmd`` with ``kernel="rbf"``).

Inside a pair every distance is measured in the pair's PCA space (fit on control and truth
only), and MMD uses the pair's fixed bandwidth, so ``d(pred, truth)`` and ``d(control, truth)``
are directly comparable: :func:`relative` divides one by the other.

Pairwise distances come from :func:`scipy.spatial.distance.cdist`, which computes differences
directly (no ``|x|² + |y|² - 2x·y`` cancellation), so identical sets give exactly 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from scipy.spatial.distance import cdist, pdist

if TYPE_CHECKING:
    from mtpert.metrics.pair import EvalPair, Which

MAX_CELLS_FOR_BANDWIDTH = 1000
"""Cells used (a fixed random subset beyond this) for the median-heuristic bandwidth."""

EMD_MAX_ITER = 1_000_000
"""Iteration cap of the exact OT solver; POT's default (1e5) can stop short of the optimum."""


def _sqdist(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    return cdist(X, Y, metric="sqeuclidean")


def e_distance(X: np.ndarray, Y: np.ndarray, *, squared: bool = False) -> float:
    """Energy distance: ``2·mean d(X, Y) - mean d(X, X) - mean d(Y, Y)``.

    Means run over all pairs, diagonal zeros included (pertpy's convention). ``d`` is Euclidean;
    ``squared=True`` uses squared Euclidean distances instead.
    """
    if squared:
        return float(2 * _sqdist(X, Y).mean() - _sqdist(X, X).mean() - _sqdist(Y, Y).mean())
    return 2 * mean_distance(X, Y) - mean_distance(X, X) - mean_distance(Y, Y)


def wasserstein(X: np.ndarray, Y: np.ndarray) -> float:
    """Exact optimal-transport cost between uniform weights, squared-Euclidean ground cost (W₂²).

    Uses POT's network simplex (``ot.emd2``); time grows roughly cubically with the cell count,
    about 10 ms for 300 x 300 cells. POT is imported here, not with the module, because it
    imports torch when torch is installed, and plots that only read metrics must not pay for it.
    """
    import ot

    a = np.full(len(X), 1.0 / len(X))
    b = np.full(len(Y), 1.0 / len(Y))
    return float(ot.emd2(a, b, _sqdist(X, Y), numItermax=EMD_MAX_ITER))


def euclidean(X: np.ndarray, Y: np.ndarray) -> float:
    """Euclidean distance between the mean vectors of ``X`` and ``Y``."""
    return float(np.linalg.norm(X.mean(axis=0) - Y.mean(axis=0)))


def mean_pairwise(X: np.ndarray, Y: np.ndarray) -> float:
    """Mean Euclidean distance over all pairs (x in X, y in Y)."""
    return mean_distance(X, Y)


def mean_distance(X: np.ndarray, Y: np.ndarray) -> float:
    """Mean Euclidean distance over all pairs (x in X, y in Y), zeros of identical cells included."""
    return float(cdist(X, Y, metric="euclidean").mean())


def mean_kernel(X: np.ndarray, Y: np.ndarray, gamma: float) -> float:
    """Mean RBF kernel ``exp(-gamma·|x - y|²)`` over all pairs (x in X, y in Y)."""
    return float(np.exp(-gamma * _sqdist(X, Y)).mean())


def median_heuristic_gamma(Z: np.ndarray, *, seed: int = 0) -> float:
    """RBF ``gamma = 1 / (2σ²)`` with σ the median non-zero pairwise Euclidean distance in ``Z``.

    Above :data:`MAX_CELLS_FOR_BANDWIDTH` cells, a fixed random subset (``seed``) is used. If
    every cell is identical, σ = 1 (any bandwidth then gives the same MMD, 0).
    """
    if len(Z) > MAX_CELLS_FOR_BANDWIDTH:
        Z = Z[np.random.default_rng(seed).choice(len(Z), MAX_CELLS_FOR_BANDWIDTH, replace=False)]
    distances = pdist(Z, metric="euclidean")
    distances = distances[distances > 0]
    sigma = float(np.median(distances)) if distances.size else 1.0
    return 1.0 / (2.0 * sigma**2)


def mmd(X: np.ndarray, Y: np.ndarray, *, gamma: float | None = None) -> float:
    """Biased MMD² with the RBF kernel ``exp(-gamma·|x - y|²)``.

    ``gamma=None`` picks it by :func:`median_heuristic_gamma` on ``X ∪ Y``; pass a fixed value
    to compare several sets on one scale (an :class:`EvalPair` fixes it from control ∪ truth).
    """
    if gamma is None:
        gamma = median_heuristic_gamma(np.vstack([X, Y]))
    return mean_kernel(X, X, gamma) + mean_kernel(Y, Y, gamma) - 2 * mean_kernel(X, Y, gamma)


# ---------------------------------------------------------------------- inside an EvalPair
ToTruth = Callable[["EvalPair", "Which"], float]
"""A distance from one set of a pair (``"pred"`` or ``"control"``) to its true cells."""


def e_distance_to_truth(pair: EvalPair, of: Which) -> float:
    """:func:`e_distance` from ``of`` to truth in the pair's PCA space."""
    within = pair.pair_mean(of, of, "euclidean") + pair.pair_mean("truth", "truth", "euclidean")
    return 2 * pair.pair_mean(of, "truth", "euclidean") - within


def wasserstein_to_truth(pair: EvalPair, of: Which) -> float:
    """:func:`wasserstein` from ``of`` to truth in the pair's PCA space."""
    return wasserstein(pair.pcs[of], pair.pcs["truth"])


def euclidean_to_truth(pair: EvalPair, of: Which) -> float:
    """:func:`euclidean` from ``of`` to truth in the pair's PCA space."""
    return euclidean(pair.pcs[of], pair.pcs["truth"])


def mean_pairwise_to_truth(pair: EvalPair, of: Which) -> float:
    """:func:`mean_pairwise` from ``of`` to truth in the pair's PCA space."""
    return pair.pair_mean(of, "truth", "euclidean")


def mmd_to_truth(pair: EvalPair, of: Which) -> float:
    """:func:`mmd` from ``of`` to truth in the pair's PCA space, with the pair's fixed bandwidth."""
    within = pair.pair_mean(of, of, "rbf") + pair.pair_mean("truth", "truth", "rbf")
    return within - 2 * pair.pair_mean(of, "truth", "rbf")


def absolute(to_truth: ToTruth, pair: EvalPair) -> float:
    """Distance from the prediction to the true cells."""
    return pair.distance(to_truth, "pred")


def relative(to_truth: ToTruth, pair: EvalPair) -> float:
    """Distance pred-to-truth over control-to-truth: 0 is perfect, 1 is no better than control.

    NaN when control and truth are at distance 0 (the perturbation changed nothing measurable).
    """
    baseline = pair.distance(to_truth, "control")
    return absolute(to_truth, pair) / baseline if baseline > 0 else float("nan")
