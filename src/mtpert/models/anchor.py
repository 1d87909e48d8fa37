"""Anchors of the multi-task family: the simple baseline a prediction starts from.

An anchored :class:`~mtpert.models.multitask.MultiTaskModel` predicts the change
``anchor + gate * correction``. The anchor is the change a simple baseline predicts, built from
the same per-group mean changes as :class:`~mtpert.models.simple.MeanShift` and
:class:`~mtpert.models.simple.Additive` (:func:`~mtpert.models.simple.mean_changes`):

* ``mean_shift``: the condition's mean change averaged over the training groups (a held-out
  group; a single perturbation, or a combination trained as such);
* ``additive``: the sum of its parts' mean changes (a combination never trained together);
* ``auto``: ``additive`` for a combination whose parts were each trained alone (trained together
  or not, so that the network learns their interaction on top of the sum), else ``mean_shift``;
  where held-out training combinations say the linear model of the parts
  (:class:`~mtpert.models.linear.LinearModel`) predicts combinations better than their sum, the
  combination's anchor is that model's change instead (:class:`LinearAnchor`).

Each condition's mean change is weighted towards no change by how well it carries over between
the training groups (:func:`anchor_weights`): a perturbation whose change in one group does not
predict its change in another gets (nearly) the control's "no change" rather than another
group's noise.

The network learns the correction from the training cells minus the anchor computed without their
own group (leave one group out), i.e. what the anchor misses on a group it has not seen; the gate
shrinks that correction towards 0 per condition (:func:`gate`).

A prediction adds its change to the control cells it is given, whose mean carries their sampling
noise, which the perturbed cells to predict do not share. Where the training groups' control means
differ by little more than that noise (replicates of one cell line), :class:`ControlReference`
removes the part of the given cells' deviation from the groups' average that noise explains.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
import pandas as pd
import scipy.stats

from mtpert.data.spec import DatasetSpec
from mtpert.errors import DataError
from mtpert.models.linear import LinearModel
from mtpert.models.simple import ConditionKey, MeanChanges, key_string, parts_alone, some

AnchorKind = Literal["auto", "mean_shift", "additive", "none"]
AnchorShrinkage = Literal["expected", "lower_bound"]
"""How :func:`anchor_weights` reads the groups' agreement (see there)."""
Evidence = tuple[np.ndarray, np.ndarray, np.ndarray]
"""One held-out (group, condition): the network's mean correction, the miss (observed change
minus anchor) and the miss's sampling variance, each (genes,)."""
ANCHOR_MIN_CELLS = 5
"""Control and perturbed cells a group needs for its mean change to enter an anchor (as the
baselines' default ``min_cells``)."""


@dataclass(frozen=True)
class LinearAnchor:
    """A combination's change by the linear model of its parts: ``intercept`` plus the sum of
    its parts' rows of ``parts`` (keys, genes; NaN but for single perturbations), which is
    :meth:`LinearModel.change <mtpert.models.linear.LinearModel.change>` split over the parts."""

    intercept: np.ndarray
    parts: np.ndarray

    @classmethod
    def of(cls, model: LinearModel, keys: Sequence[ConditionKey]) -> LinearAnchor:
        """The fitted ``model``'s shares, on the rows of ``keys``."""
        parts = np.full((len(keys), len(model.intercept)), np.nan, dtype=np.float32)
        row = {key: i for i, key in enumerate(keys)}
        shares = model.part_changes()
        for j, key in enumerate(model.singles):
            if key in row:
                parts[row[key]] = shares[:, j]
        return cls(model.intercept.astype(np.float32), parts)


@dataclass(frozen=True)
class Anchors:
    """Each training (condition, dose)'s mean change averaged over groups, times its weight
    (:func:`anchor_weights`): (keys, genes), NaN rows where no group has one; ``linear``: the
    combinations' anchor where it is the linear model's (None: the sum of the parts)."""

    keys: list[ConditionKey]
    shifts: np.ndarray
    linear: LinearAnchor | None = None

    @classmethod
    def of(
        cls,
        table: MeanChanges,
        weights: np.ndarray,
        without: str | None = None,
        linear: LinearAnchor | None = None,
    ) -> Anchors:
        """The weighted anchors of ``table``'s groups; ``without``: those of the other groups,
        falling back to ``without``'s own change where no other group has the key (a condition
        trained in one group only has no other estimate)."""
        if without not in table.groups:
            return cls(table.keys, weights[:, None] * table.averaged(), linear)
        j = table.groups.index(without)
        others = [i for i in range(len(table.groups)) if i != j]
        rest = MeanChanges(
            table.keys, [table.groups[i] for i in others], table.changes[:, others]
        ).averaged()
        shifts = weights[:, None] * np.where(np.isnan(rest), table.changes[:, j], rest)
        return cls(table.keys, shifts, linear)

    def kind(self, spec: DatasetSpec, kind: AnchorKind, condition: str, dose: float | None) -> str:
        """The anchor ``kind`` resolves to for ``condition`` at ``dose``: ``mean_shift`` or
        ``additive`` (see the module)."""
        if kind != "auto":
            return kind
        parts = spec.parts(condition)
        singles = {c for c, d in self.known if len(spec.parts(c)) == 1 and d == dose}
        return "additive" if len(parts) > 1 and set(parts) <= singles else "mean_shift"

    def change(
        self, spec: DatasetSpec, kind: AnchorKind, condition: str, dose: float | None, *, model: str
    ) -> tuple[str, np.ndarray]:
        """The anchor used for ``condition`` at ``dose`` (``mean_shift``, ``additive`` or
        ``linear``) and its change (genes,); :class:`DataError` where the named (or any, for
        ``auto``) cannot be built."""
        known = self.known
        row = {(tuple(sorted(spec.parts(c))), d): i for (c, d), i in known.items()}
        dose = None if dose is None else float(dose)
        key = (tuple(sorted(spec.parts(condition))), dose)
        resolved = self.kind(spec, kind, condition, dose)
        if resolved == "mean_shift" and key in row:  # a combination in any order
            return "mean_shift", self.shifts[row[key]]
        if kind == "mean_shift":
            raise DataError(
                f"{model}: anchor='mean_shift' needs '{key_string(condition, dose)}' in training "
                f"and it is not (known: {some([key_string(*k) for k in known])}); use "
                "anchor='additive' or 'auto' to build a combination from its parts."
            )
        parts = parts_alone(list(known), spec, condition, dose, model=model)
        if self.linear is not None and len(parts) > 1:
            shares = self.linear.parts[[known[p] for p in parts]]
            if not np.isnan(shares).any():
                return "linear", self.linear.intercept + shares.sum(axis=0)
        return "additive", np.sum([self.shifts[row[((p,), d)]] for p, d in parts], axis=0)

    @cached_property
    def known(self) -> dict[ConditionKey, int]:
        """Row of each key that has a change (read once per anchors, not per prediction)."""
        return {k: i for i, k in enumerate(self.keys) if not np.isnan(self.shifts[i]).all()}


def anchor_weights(table: MeanChanges, shrinkage: AnchorShrinkage = "expected") -> np.ndarray:
    """Each key's weight in [0, 1] between no change (0) and its mean change over the training
    groups (1), chosen by leaving each group out. A perturbation without a detectable effect, or
    whose effect differs between groups, gets a weight near 0. Keys measured in fewer than 2
    groups keep weight 1 (nothing to judge them by).

    Over the n groups with the key, the other groups' mean change predicts the left-out group's:
    their agreement ``A`` estimates n times the shared change's energy, and the predictions'
    energy ``E`` that plus the group-specific part averaged over n - 1 groups. The anchor
    averages all n, whose specific part is smaller by (n - 1) / n, so the weight that best
    predicts a new group's change from it is ``A / (A + (E - A) (n - 1) / n)`` (the leave-one-out
    least squares ``A / E`` would shrink it as if it averaged n - 1).

    The measured agreement carries sampling noise (its sd ``s`` from ``table.noise``), and the
    shared energy it estimates cannot be negative. ``shrinkage`` says which estimate of ``A``:

    * ``expected``: its expected value given the measured agreement ``a`` (a flat prior on
      ``A >= 0``, ``a ~ N(A, s^2)``: the mean of that normal truncated at 0,
      ``a + s phi(a/s) / Phi(a/s)``). Never exactly 0: where the groups do not agree the weight
      is small (a few hundredths) but keeps the sign of the mean change, which is still the best
      guess of each gene's direction.
    * ``lower_bound``: ``a - s``, and weight 0 where that is not above 0: a change that repeats
      no better than noise is predicted as exactly no change.
    """
    weights = np.ones(len(table.keys))
    for k in range(len(table.keys)):
        have = np.flatnonzero(~np.isnan(table.changes[k]).all(axis=1))
        if len(have) < 2:
            continue
        changes = table.changes[k, have].astype(np.float64)
        noise = (
            np.zeros_like(changes)
            if table.noise is None
            else table.noise[k, have].astype(np.float64)
        )
        n = len(have)
        others = [(changes.sum(0) - changes[i]) / (n - 1) for i in range(n)]
        # the noise of the left-out change and of the others' mean, summed (both enter the agreement)
        noises = [noise[i] + (noise.sum(0) - noise[i]) / (n - 1) ** 2 for i in range(n)]
        measured, spread, energy = _agreement(others, list(changes), noises)
        agreement = (
            _expected_non_negative(measured, spread)
            if shrinkage == "expected"
            else measured - spread
        )
        if agreement > 0:
            specific = max(energy - agreement, 0.0) * (n - 1) / n
            weights[k] = min(agreement / (agreement + specific), 1.0)
        else:
            weights[k] = 0.0
    return weights


def _expected_non_negative(measured: float, sd: float) -> float:
    """``E[A | a]`` for ``a ~ N(A, sd^2)`` and a flat prior on ``A >= 0``: the mean of
    ``N(a, sd^2)`` truncated at 0 (``max(a, 0)`` without noise)."""
    if sd <= 0:
        return max(measured, 0.0)
    z = measured / sd
    return float(measured + sd * np.exp(scipy.stats.norm.logpdf(z) - scipy.stats.norm.logcdf(z)))


def anchor_per_cell(
    obs: pd.DataFrame,
    spec: DatasetSpec,
    table: MeanChanges,
    weights: np.ndarray,
    kind: AnchorKind,
    *,
    model: str,
    linear: LinearAnchor | None = None,
) -> np.ndarray:
    """(cells, genes) anchor of each cell's condition computed without the cell's group (zero for
    control cells): what the network's training targets are shifted by."""
    dose = obs[spec.dose_key].to_numpy(dtype=float) if spec.dose_key else np.full(len(obs), np.nan)
    cells = pd.DataFrame(
        {
            "group": obs[spec.cell_type_key].astype(str).to_numpy(),
            "condition": obs[spec.condition_key].astype(str).to_numpy(),
            "dose": dose,
        }
    )
    shift = np.zeros((len(obs), table.changes.shape[2]), dtype=np.float32)
    perturbed = cells[cells["condition"] != spec.control]
    for group, in_group in perturbed.groupby("group", sort=False):
        anchors = Anchors.of(table, weights, without=group, linear=linear)
        for (condition, d), rows in in_group.groupby(
            ["condition", "dose"], sort=False, dropna=False
        ).indices.items():
            at = None if spec.dose_key is None else float(d)
            _, change = anchors.change(spec, kind, condition, at, model=model)
            shift[in_group.index[rows]] = change
    return shift


@dataclass(frozen=True)
class ControlReference:
    """The anchor groups' average control mean (genes,), towards which a prediction pulls the mean
    of the control cells it is given by the part of their deviation that sampling noise explains.

    The given cells' mean ``m`` is their group's true control mean plus noise of variance ``v``
    (per gene, from the cells themselves). The perturbed cells to predict share the true mean, not
    that noise, so a prediction is shifted by ``-w (m - average)``, per gene ``w = min(1, v / d^2)``
    with ``d = m - average`` (the positive-part James-Stein share of the deviation that is noise):
    all of a deviation within the noise, little of one far beyond it. Whether groups differ by
    noise alone (replicates of one cell line) or by biology that their perturbed cells share
    (cell lines, cell types) is judged on the training groups (:meth:`of`).
    """

    average: np.ndarray

    @classmethod
    def of(cls, table: MeanChanges, weights: np.ndarray) -> tuple[ControlReference | None, str]:
        """The reference of ``table``'s groups where denoising pays, else None, and a note saying
        which. It pays where, leaving each training group out, the anchor of the other groups
        (``weights``, :func:`anchor_weights`) plus the group's denoising predicts its observed
        changes (each with its sampling variance, ``table.noise``) with a smaller squared error
        than the anchor alone, summed over its conditions, by more than one sd of the gain's
        sampling noise (as :func:`gate` judges a correction): a gain by chance is no gain."""
        if table.controls is None or table.control_noise is None or len(table.groups) < 2:
            return None, "no control denoising (fewer than 2 groups with control cells)"
        reference = cls(table.controls.mean(axis=0).astype(np.float32))
        gain = variance = plain = 0.0
        for j, group in enumerate(table.groups):
            others = [i for i in range(len(table.groups)) if i != j]
            judged = [
                k
                for k in range(len(table.keys))
                if not np.isnan(table.changes[k, j]).all()
                and not np.isnan(table.changes[k, others]).all(axis=1).all()
            ]
            if not judged:
                continue
            anchors = Anchors.of(table, weights, without=group).shifts
            shift = reference._shift(table.controls[j], table.control_noise[j])
            for k in judged:
                miss = table.changes[k, j] - anchors[k]
                # ||miss||^2 - ||shift - miss||^2, and the variance of its 2 <shift, miss> term
                gain += float(2 * shift @ miss - shift @ shift)
                noise = 0.0 if table.noise is None else table.noise[k, j]
                variance += float(4 * np.sum(shift**2 * noise))
                plain += float(miss @ miss)
        if plain == 0.0:
            return None, "no control denoising (no group to judge it on)"
        judged_by = (
            f"on held-out training groups: squared error x{1 - gain / plain:.3f}, "
            f"{gain / np.sqrt(variance) if variance else np.inf:.1f} sd of its noise"
        )
        if gain <= np.sqrt(variance):
            return None, f"no control denoising (it did not pay {judged_by})"
        return reference, f"control cells denoised (it paid {judged_by})"

    def shift(self, X: np.ndarray) -> np.ndarray:
        """What to add to each prediction from control cells ``X`` (cells, genes): (genes,)."""
        return self._shift(*mean_and_noise(X))

    def weight(self, X: np.ndarray) -> float:
        """The share of control cells ``X``'s deviation from the average removed, over genes:
        ``|shift| / |deviation|`` (0 for fewer than 2 cells: no noise to measure)."""
        mean, noise = mean_and_noise(X)
        deviation = float(np.linalg.norm(mean - self.average))
        return float(np.linalg.norm(self._shift(mean, noise))) / deviation if deviation else 0.0

    def _shift(self, mean: np.ndarray, noise: np.ndarray) -> np.ndarray:
        deviation = mean - self.average
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.where(deviation != 0, np.minimum(1.0, noise / deviation**2), 0.0)
        return (-share * deviation).astype(np.float32)


def mean_and_noise(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each gene's mean over cells ``X`` and the sampling variance of that mean (0 for one cell)."""
    if len(X) < 2:
        return X.mean(0), np.zeros(X.shape[1])
    return X.mean(0), X.var(0, ddof=1) / len(X)


def gene_gates(evidence: Sequence[Evidence]) -> np.ndarray:
    """Each gene's weight in [0, 1] of the correction, by :func:`gate`'s rule on that gene alone
    over every held-out (group, condition) of ``evidence``: a gene on which the network's
    correction agrees with the held-out misses no better than their noise gets 0, so a
    correction that does not carry over moves no gene (nor invents a DEG there)."""
    corrections, misses, noises = (
        np.stack(x).astype(np.float64) for x in zip(*evidence, strict=True)
    )
    energy = (corrections**2).sum(0)
    agreement = (corrections * misses).sum(0) - np.sqrt((corrections**2 * noises).sum(0))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.clip(np.where(energy > 0, agreement / energy, 0.0), 0.0, 1.0)


def gene_gates_if_they_pay(evidence: Sequence[Evidence]) -> np.ndarray | None:
    """:func:`gene_gates` of ``evidence`` where they pay, else None (the genes ungated).

    Per-gene weights from a handful of held-out groups are noisy: they can silence a real
    correction as easily as a spurious one. They are kept only if, cross-fitted on the two halves
    of ``evidence`` (each half's gates scored on the other), the corrections weighted by the
    pooled :func:`gate` times the gene gates miss the held-out changes by less than weighted by
    the pooled gate alone.
    """
    halves = (list(evidence[0::2]), list(evidence[1::2]))
    if not halves[1]:
        return None
    with_genes = without = 0.0
    for fit, test in (halves, halves[::-1]):
        pooled, genes = gate(*zip(*fit, strict=True)), gene_gates(fit)
        for correction, miss, _ in test:
            with_genes += float(np.sum((pooled * genes * correction - miss) ** 2))
            without += float(np.sum((pooled * correction - miss) ** 2))
    return gene_gates(evidence) if with_genes < without else None


def gate(
    corrections: Sequence[np.ndarray], misses: Sequence[np.ndarray], noises: Sequence[np.ndarray]
) -> float:
    """The weight in [0, 1] of the correction, from inner held-out groups' mean ``corrections``,
    ``misses`` (observed change minus anchor) and ``noises`` (sampling variance of each miss).

    Least squares in closed form (the weight minimizing ``sum ||gate * correction - miss||^2``),
    with the agreement lowered by one standard deviation of its sampling noise: a correction that
    agrees with the held-out groups only by chance gets weight 0. 0 without evidence.
    """
    agreement, spread, energy = _agreement(corrections, misses, noises)
    return 0.0 if energy == 0.0 else float(np.clip((agreement - spread) / energy, 0.0, 1.0))


def _agreement(
    corrections: Sequence[np.ndarray], misses: Sequence[np.ndarray], noises: Sequence[np.ndarray]
) -> tuple[float, float, float]:
    """``sum <correction, miss>``, the standard deviation of its sampling noise (the misses'
    variances ``noises``), and ``sum ||correction||^2``."""
    energy = float(sum(np.dot(c, c) for c in corrections))
    agreement = sum(float(np.dot(c, m)) for c, m in zip(corrections, misses, strict=True))
    spread = np.sqrt(sum(float(np.dot(c * c, v)) for c, v in zip(corrections, noises, strict=True)))
    return agreement, float(spread), energy
