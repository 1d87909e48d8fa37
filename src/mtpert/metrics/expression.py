"""Agreement of per-gene mean expression: R² of means and Pearson correlation of changes.

* :func:`r2` -- squared Pearson correlation of the per-gene means of truth and pred, the scGen
  convention; over all genes or the top true DEGs (truth vs control, see
  :mod:`mtpert.metrics.de`).
* :func:`r2_bootstrap` -- the same over resamples of 80% of the cells, reported as mean and
  standard deviation, which says how much of a difference between models is sampling noise.
  The DEGs stay those of the full data.
* :func:`pearson_delta` -- Pearson correlation of the predicted and true *changes* from control
  (``pred - control`` vs ``truth - control`` in means). Unlike R² of means, which is high even
  for a model that predicts no change (control and stimulated means correlate strongly), it
  rewards only the response itself.
* :func:`mse` -- mean squared error of per-gene means, pred vs truth (GEARS reports it over the
  top-20 DEGs): the size of the error, which correlations ignore.
* :func:`direction_accuracy` -- the fraction of the top true DEGs whose predicted change from
  control has the true sign: 1 for every direction right, about 0.5 for random signs, 0 for a
  prediction of no change (a change of exactly 0 has no direction).

A correlation with a constant vector is undefined and returned as NaN, silently; e.g. the
control itself used as the prediction has ``pearson_delta`` NaN.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from mtpert.metrics.pair import EvalPair


def pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation along the last axis; NaN (no warning) where a or b is constant."""
    a_centered = a - a.mean(axis=-1, keepdims=True)
    b_centered = b - b.mean(axis=-1, keepdims=True)
    numerator = (a_centered * b_centered).sum(axis=-1)
    denominator = np.sqrt((a_centered**2).sum(axis=-1) * (b_centered**2).sum(axis=-1))
    defined = (np.ptp(a, axis=-1) > 0) & (np.ptp(b, axis=-1) > 0) & (denominator > 0)
    r = np.divide(numerator, denominator, out=np.full(np.shape(numerator), np.nan), where=defined)
    return np.clip(r, -1.0, 1.0)


def _genes(pair: EvalPair, top: int | None) -> np.ndarray | slice:
    """All genes, or the indices of the ``top`` true DEGs."""
    return slice(None) if top is None else pair.truth_degs[:top]


def r2(pair: EvalPair, top: int | None = None) -> float:
    """R² of per-gene means, truth vs pred, over all genes or the ``top`` true DEGs."""
    genes = _genes(pair, top)
    return float(pearson(pair.means["truth"][genes], pair.means["pred"][genes]) ** 2)


def r2_bootstrap(pair: EvalPair, top: int | None = None) -> tuple[float, float]:
    """Mean and standard deviation of :func:`r2` over the pair's bootstrap resamples."""
    genes = _genes(pair, top)
    boot = pair.bootstrap_means
    values = pearson(boot["truth"][:, genes], boot["pred"][:, genes]) ** 2
    return float(values.mean()), float(values.std())


def pearson_delta(pair: EvalPair, top: int | None = None) -> float:
    """Pearson r of mean changes from control, pred vs truth (all genes or the ``top`` DEGs)."""
    genes = _genes(pair, top)
    control = pair.means["control"][genes]
    return float(pearson(pair.means["pred"][genes] - control, pair.means["truth"][genes] - control))


def mse(pair: EvalPair, top: int | None = None) -> float:
    """Mean squared error of per-gene means, pred vs truth (all genes or the ``top`` DEGs)."""
    genes = _genes(pair, top)
    return float(np.mean((pair.means["pred"][genes] - pair.means["truth"][genes]) ** 2))


def direction_accuracy(pair: EvalPair, top: int) -> float:
    """Fraction of the ``top`` true DEGs whose predicted mean change from control has the sign of
    the true change; all DEGs when there are fewer, NaN when truth equals control everywhere."""
    genes = _genes(pair, top)
    if not len(genes):
        return float("nan")
    control = pair.means["control"][genes]
    true_sign = np.sign(pair.means["truth"][genes] - control)
    return float(np.mean(np.sign(pair.means["pred"][genes] - control) == true_sign))
