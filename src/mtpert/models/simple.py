"""The two baselines papers forget: doing nothing, and adding the average shift.

Any learned model should beat both; where it does not, the benchmark says so.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from anndata import AnnData

from mtpert._array import dense
from mtpert.data.spec import DatasetSpec
from mtpert.errors import DataError
from mtpert.models.base import PerturbationModel, check_weights

ConditionKey = tuple[str, float | None]


class ControlPredictor(PerturbationModel):
    """Predicts that the perturbation changes nothing: the control cells are returned as they are.

    Scores every relative distance at exactly 1, the line a model must be below to be useful.
    """

    name = "control"
    predicts_unseen_doses = True
    predicts_unseen_combinations = True

    def __init__(self, spec: DatasetSpec) -> None:
        super().__init__(spec)

    def _fit(self, train: AnnData, val: AnnData | None) -> None:
        pass

    def _predict(self, control: AnnData, condition: str, dose: float | None) -> np.ndarray:
        return dense(control.X)

    def _learned(self) -> dict[str, Any]:
        return {}

    def _restore(self, learned: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        check_weights(tensors, {})


class MeanShift(PerturbationModel):
    """Adds the average perturbation shift of the training cell types to each control cell.

    For each condition (and dose), the shift of a training cell type is its mean perturbed minus
    its mean control log-expression; the cell types are averaged with equal weight, so one
    abundant type does not dominate. Predictions are clipped at 0, the floor of log1p data.
    Cell types with fewer than ``min_cells`` control or perturbed cells are left out of the
    average as too noisy.
    """

    name = "mean_shift"

    def __init__(self, spec: DatasetSpec, *, min_cells: int = 5) -> None:
        super().__init__(spec, min_cells=min_cells)
        self.min_cells = min_cells
        self.conditions: list[ConditionKey] = []
        self.shifts = np.empty((0, 0), dtype=np.float32)

    def _cell_conditions(self, adata: AnnData) -> list[ConditionKey]:
        """Each cell's (condition, dose) key; dose is None when the spec has no dose key."""
        conditions = adata.obs[self.spec.condition_key].astype(str)
        if self.spec.dose_key is None:
            return [(c, None) for c in conditions]
        return list(zip(conditions, adata.obs[self.spec.dose_key].astype(float), strict=True))

    def _fit(self, train: AnnData, val: AnnData | None) -> None:
        cell_type = train.obs[self.spec.cell_type_key].astype(str).to_numpy()
        is_control = self.spec.is_control(train)
        keys = self._cell_conditions(train)
        labels = np.array([_key_string(*k) for k in keys])
        perturbed = {k for k, ctrl in zip(keys, is_control, strict=True) if not ctrl}
        self.conditions, shifts = [], []
        for key in sorted(perturbed, key=lambda k: (k[0], k[1] or 0.0)):
            in_condition = labels == _key_string(*key)
            per_type = []
            for t in np.unique(cell_type[in_condition]):
                ctrl = is_control & (cell_type == t)
                pert = in_condition & (cell_type == t)
                if ctrl.sum() >= self.min_cells and pert.sum() >= self.min_cells:
                    per_type.append(dense(train.X[pert]).mean(0) - dense(train.X[ctrl]).mean(0))
            if per_type:
                self.conditions.append(key)
                shifts.append(np.mean(per_type, axis=0))
            else:
                warnings.warn(
                    f"mean_shift: no training cell type has {self.min_cells} control and {self.min_cells} "
                    f"'{_key_string(*key)}' cells; that condition cannot be predicted (lower min_cells?).",
                    stacklevel=3,
                )
        if not self.conditions:
            raise DataError(
                f"mean_shift: no condition has a training cell type with {self.min_cells} control and "
                f"{self.min_cells} perturbed cells to estimate a shift from; lower min_cells."
            )
        self.shifts = np.asarray(shifts, dtype=np.float32)

    def _predict(self, control: AnnData, condition: str, dose: float | None) -> np.ndarray:
        key = (condition, None if dose is None else float(dose))
        if key not in self.conditions:
            known = [_key_string(*k) for k in self.conditions]
            raise DataError(
                f"mean_shift saw no '{_key_string(*key)}' cells in training and cannot predict it "
                f"(it cannot interpolate doses); known: {known}."
            )
        shift = self.shifts[self.conditions.index(key)]
        return np.clip(dense(control.X) + shift, 0.0, None)

    def _learned(self) -> dict[str, Any]:
        return {"conditions": [list(k) for k in self.conditions]}

    def _tensors(self) -> dict[str, np.ndarray]:
        return {"shifts": self.shifts}

    def _restore(self, learned: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        self.conditions = [(c, d) for c, d in learned["conditions"]]
        n_genes = len(self.genes)  # type: ignore[arg-type]
        check_weights(tensors, {"shifts": (len(self.conditions), n_genes)})
        self.shifts = tensors["shifts"].cpu().numpy()


def _key_string(condition: str, dose: float | None) -> str:
    return condition if dose is None else f"{condition}@{float(dose)}"
