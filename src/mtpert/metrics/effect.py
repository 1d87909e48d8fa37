"""Does a perturbation change expression at all? A permutation test, and the penalty for inventing a change.

In a pooled screen many perturbations have no effect that the measured cells can show (the
target is not expressed, the knock-out does not act on the genes kept, too few cells). For
those, the observed "true change" is sampling noise, and a model that predicts a large change
is wrong, however it scores on correlations of noise. This module decides which perturbations
have a detectable effect, so that they are scored apart, and measures how large a change a
model predicts where there is none.

The test statistic is the Euclidean distance between the mean log-expression of the truth and
of the control cells over all genes scored, ``||m_truth - m_control||`` (the change the
expression metrics measure). Its null distribution comes from relabelling: the cells of control
∪ truth are split at random into groups of the two sizes, ``N_PERMUTATIONS`` times, and the
p-value is ``(1 + #{null >= observed}) / (1 + N_PERMUTATIONS)``, exact for any distribution of
cells under "the perturbation does not change the cells". The effect is detectable when
``p < ALPHA``.

No correction for testing many perturbations is made, on purpose: each label depends on its
own cells only, so it does not change with which perturbations a split holds out, and an
uncorrected test calls *more* perturbations detectable, which is the safe side here -- only
perturbations without detectable effect are scored by :func:`effect_false_positive`, so a
perturbation wrongly called undetectable would punish a model for predicting a real effect.
The permutations use a fixed seed, so the label is a property of the data, the same for every
model and seed of a benchmark.

The noise scale is the root mean square of the null distances, known exactly without
permuting: ``noise² = (1/n_truth + 1/n_control) · Σ_g s²_g``, with ``s²_g`` the variance of gene
``g`` over control ∪ truth (ddof 1). A true change of about one ``noise`` is what random
relabelling gives; :func:`effect_false_positive` measures the predicted change in that unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mtpert._array import one_blas_thread

if TYPE_CHECKING:
    from mtpert.metrics.pair import EvalPair

N_PERMUTATIONS = 999
"""Random relabellings of control ∪ truth; the smallest p-value is 1 / (1 + N_PERMUTATIONS)."""
ALPHA = 0.05
"""A true change with a permutation p-value below this is a detectable effect."""
PERMUTATION_SEED = 0
"""Seed of the relabellings: fixed, so detectability is a property of the cells alone."""
TIE_TOLERANCE = 1e-12
"""Relative difference below which a null distance counts as equal to the observed one (the
same labelling summed in another order must tie, as it does on few or discrete cells)."""
PERMUTATIONS_PER_BLOCK = 128
"""Relabellings scored at once, which bounds memory at this many copies of the cell count."""


@dataclass(frozen=True)
class EffectTest:
    """Size and significance of a true change from control.

    Attributes:
        distance: ``||m_truth - m_control||``, Euclidean over genes, in log-expression.
        noise: root mean square of ``distance`` over random relabellings of control ∪ truth.
        p_value: permutation p-value of ``distance``.
    """

    distance: float
    noise: float
    p_value: float

    @property
    def detectable(self) -> bool:
        """Whether the change is larger than relabelling gives (``p_value < ALPHA``)."""
        return self.p_value < ALPHA

    @property
    def ratio(self) -> float:
        """``distance / noise``: about 1 for a perturbation without effect."""
        return _in_noise_units(self.distance, self.noise)


def effect_test(
    control: np.ndarray,
    truth: np.ndarray,
    *,
    n_permutations: int = N_PERMUTATIONS,
    seed: int = PERMUTATION_SEED,
) -> EffectTest:
    """Permutation test of the distance between the mean expression of ``truth`` and ``control``.

    Args:
        control, truth: cells x genes log-normalized expression (dense, same genes), at least
            one cell each and two in all.
        n_permutations: random relabellings of control ∪ truth into groups of the two sizes.
        seed: seed of the relabellings.

    Costs ``n_permutations`` products of a relabelling with the cells x genes matrix, on one
    BLAS thread (about 0.1 s for 3,000 cells x 300 genes). To test many truths against one
    control, :class:`Relabellings` shares the control's part of that work.
    """
    return Relabellings(control, n_permutations=n_permutations, seed=seed).test(truth)


class Relabellings:
    """:func:`effect_test` of many truths against one control (the perturbations of a screen).

    A relabelling depends only on the two group sizes and the seed, so every truth of the same
    size meets the same relabellings, and their product with the control cells -- most of the
    work when the control is large -- is computed once per truth size and reused (the most
    recent size is kept: score truths sorted by size to compute each once). Results equal
    :func:`effect_test`'s up to floating-point rounding.
    """

    def __init__(
        self,
        control: np.ndarray,
        *,
        n_permutations: int = N_PERMUTATIONS,
        seed: int = PERMUTATION_SEED,
    ) -> None:
        if n_permutations < 1:
            raise ValueError(f"n_permutations must be at least 1, got {n_permutations}.")
        self.control = control
        self.n_permutations = n_permutations
        self.seed = seed
        self._control_sum = control.sum(axis=0)
        self.control_mean: np.ndarray = control.mean(axis=0)
        self._control_squares = np.square(control).sum(axis=0)
        self._cached: tuple[int, list[tuple[np.ndarray, np.ndarray]]] | None = None

    def test(self, truth: np.ndarray) -> EffectTest:
        """Size and permutation p-value of the change of ``truth``'s mean from the control's."""
        n_control, n_truth = len(self.control), len(truth)
        n = n_control + n_truth
        scale = 1.0 / n_truth + 1.0 / n_control
        pooled_mean = (self._control_sum + truth.sum(axis=0)) / n
        with one_blas_thread():
            # the truth's sum minus its share of the pooled sum: (m_truth - m_control) / scale
            observed = scale * np.linalg.norm(truth.sum(axis=0) - n_truth * pooled_mean)
            exceed = 0
            for truth_labels, control_part in self._blocks(n_truth):
                null = scale * np.linalg.norm(
                    control_part + truth_labels @ truth - n_truth * pooled_mean, axis=1
                )
                exceed += int((null >= observed * (1 - TIE_TOLERANCE)).sum())
        distance = np.linalg.norm(truth.mean(axis=0) - self.control_mean)  # 0 for equal sets
        squares = self._control_squares + np.square(truth).sum(axis=0)
        variance = np.maximum(squares - n * pooled_mean**2, 0.0) / (n - 1)
        noise = np.sqrt(scale * variance.sum())
        return EffectTest(float(distance), float(noise), (1 + exceed) / (1 + self.n_permutations))

    def _blocks(self, n_truth: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """The relabellings for a truth of ``n_truth`` cells, block by block: the labels of the
        truth's cells, and the sum of the control cells each relabelling calls truth."""
        cached = self._cached
        if cached is not None and cached[0] == n_truth:
            return cached[1]
        n_control = len(self.control)
        labels = np.r_[np.zeros(n_control), np.ones(n_truth)]
        rng = np.random.default_rng(self.seed)
        blocks = []
        for start in range(0, self.n_permutations, PERMUTATIONS_PER_BLOCK):
            size = min(PERMUTATIONS_PER_BLOCK, self.n_permutations - start)
            relabelled = rng.permuted(np.tile(labels, (size, 1)), axis=1)
            blocks.append((relabelled[:, n_control:], relabelled[:, :n_control] @ self.control))
        self._cached = (n_truth, blocks)
        return blocks


def detectable(pair: EvalPair) -> float:
    """1.0 if the true change from control is a detectable effect (:func:`effect_test`), else 0.0."""
    return float(pair.effect.detectable)


def effect_false_positive(pair: EvalPair) -> float:
    """Size of the predicted change, ``||m_pred - m_control||``, in units of the true change's
    noise, where the true change is no detectable effect; NaN where it is one.

    0: the model predicts no change, as it should; about 1: a change no larger than sampling
    noise; larger: the model invents an effect the data do not show.
    """
    if pair.effect.detectable:
        return float("nan")
    change = float(np.linalg.norm(pair.means["pred"] - pair.means["control"]))
    return _in_noise_units(change, pair.effect.noise)


def _in_noise_units(distance: float, noise: float) -> float:
    """``distance / noise``; 0 for no distance, infinite for a distance where cells have no noise."""
    if distance == 0:
        return 0.0
    return distance / noise if noise > 0 else float("inf")
