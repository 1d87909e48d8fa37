"""Anchors of the multi-task family: the simple baseline a prediction starts from.

An anchored :class:`~mtpert.models.multitask.MultiTaskModel` predicts the change
``anchor + gate * correction``. The anchor is the change a simple baseline predicts, built from
the same per-group mean changes as :class:`~mtpert.models.simple.MeanShift` and
:class:`~mtpert.models.simple.Additive` (:func:`~mtpert.models.simple.mean_changes`):

* ``mean_shift``: the condition's mean change averaged over the training groups (a held-out
  group; a single perturbation, or a combination trained as such);
* ``additive``: the sum of its parts' mean changes (a combination never trained together);
* ``auto``: ``mean_shift`` where training has the condition (at the dose), else ``additive``.

The network learns the correction from the training cells minus the anchor computed without their
own group (leave one group out), i.e. what the anchor misses on a group it has not seen; the gate
shrinks that correction towards 0 per condition (:func:`gate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from mtpert.data.spec import DatasetSpec
from mtpert.errors import DataError
from mtpert.models.simple import ConditionKey, MeanChanges, key_string, parts_alone, some

AnchorKind = Literal["auto", "mean_shift", "additive", "none"]
ANCHOR_MIN_CELLS = 5
"""Control and perturbed cells a group needs for its mean change to enter an anchor (as the
baselines' default ``min_cells``)."""


@dataclass(frozen=True)
class Anchors:
    """Each training (condition, dose)'s mean change averaged over groups: (keys, genes), NaN rows
    where no group has one."""

    keys: list[ConditionKey]
    shifts: np.ndarray

    @classmethod
    def of(cls, table: MeanChanges, without: str | None = None) -> Anchors:
        """The anchors of ``table``'s groups; ``without``: those of the other groups, falling back
        to ``without``'s own change where no other group has the key (a condition trained in one
        group only has no other estimate)."""
        if without not in table.groups:
            return cls(table.keys, table.averaged())
        j = table.groups.index(without)
        others = [i for i in range(len(table.groups)) if i != j]
        rest = MeanChanges(
            table.keys, [table.groups[i] for i in others], table.changes[:, others]
        ).averaged()
        return cls(table.keys, np.where(np.isnan(rest), table.changes[:, j], rest))

    def change(
        self, spec: DatasetSpec, kind: AnchorKind, condition: str, dose: float | None, *, model: str
    ) -> tuple[str, np.ndarray]:
        """The anchor used for ``condition`` at ``dose`` (``mean_shift`` or ``additive``) and its
        change (genes,); :class:`DataError` where the named (or any, for ``auto``) cannot be built."""
        known = [i for i in range(len(self.keys)) if not np.isnan(self.shifts[i]).all()]
        row = {(tuple(sorted(spec.parts(self.keys[i][0]))), self.keys[i][1]): i for i in known}
        dose = None if dose is None else float(dose)
        key = (tuple(sorted(spec.parts(condition))), dose)
        if kind in ("auto", "mean_shift") and key in row:  # a combination in any order
            return "mean_shift", self.shifts[row[key]]
        if kind == "mean_shift":
            raise DataError(
                f"{model}: anchor='mean_shift' needs '{key_string(condition, dose)}' in training "
                f"and it is not (known: {some([key_string(*self.keys[i]) for i in known])}); use "
                "anchor='additive' or 'auto' to build a combination from its parts."
            )
        parts = parts_alone([self.keys[i] for i in known], spec, condition, dose, model=model)
        return "additive", np.sum([self.shifts[row[((p,), d)]] for p, d in parts], axis=0)


def anchor_per_cell(
    obs: pd.DataFrame,
    spec: DatasetSpec,
    table: MeanChanges,
    kind: AnchorKind,
    *,
    model: str,
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
        anchors = Anchors.of(table, without=group)
        for (condition, d), rows in in_group.groupby(
            ["condition", "dose"], sort=False, dropna=False
        ).indices.items():
            at = None if spec.dose_key is None else float(d)
            _, change = anchors.change(spec, kind, condition, at, model=model)
            shift[in_group.index[rows]] = change
    return shift


def mean_and_noise(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each gene's mean over cells ``X`` and the sampling variance of that mean (0 for one cell)."""
    if len(X) < 2:
        return X.mean(0), np.zeros(X.shape[1])
    return X.mean(0), X.var(0, ddof=1) / len(X)


def gate(
    corrections: Sequence[np.ndarray], misses: Sequence[np.ndarray], noises: Sequence[np.ndarray]
) -> float:
    """The weight in [0, 1] of the correction, from inner held-out groups' mean ``corrections``,
    ``misses`` (observed change minus anchor) and ``noises`` (sampling variance of each miss).

    Least squares in closed form (the weight minimizing ``sum ||gate * correction - miss||^2``),
    with the agreement lowered by one standard deviation of its sampling noise: a correction that
    agrees with the held-out groups only by chance gets weight 0. 0 without evidence.
    """
    energy = float(sum(np.dot(c, c) for c in corrections))
    if energy == 0.0:
        return 0.0
    agreement = sum(float(np.dot(c, m)) for c, m in zip(corrections, misses, strict=True))
    spread = np.sqrt(sum(float(np.dot(c * c, v)) for c, v in zip(corrections, noises, strict=True)))
    return float(np.clip((agreement - spread) / energy, 0.0, 1.0))
