"""Models of a package outside mtpert, found through the ``mtpert.models`` and
``mtpert.crossmodal`` entry points."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from anndata import AnnData

from mtpert.data import DatasetSpec
from mtpert.models import CrossModalModel, PerturbationModel, register_model


class ShiftByOne(PerturbationModel):
    """Adds ``shift`` to every gene of the control cells, for the conditions seen in training."""

    name = "shift_by_one"

    def __init__(self, spec: DatasetSpec, *, shift: float = 1.0) -> None:
        super().__init__(spec, shift=shift)
        self.shift = shift
        self.conditions: list[str] = []

    def _fit(self, train: AnnData, val: AnnData | None) -> None:
        perturbed = train.obs.loc[~self.spec.is_control(train), self.spec.condition_key]
        self.conditions = sorted(perturbed.astype(str).unique())

    def _predict(self, control: AnnData, condition: str, dose: float | None) -> np.ndarray:
        if condition not in self.conditions:
            raise ValueError(f"shift_by_one saw no '{condition}' cells; known: {self.conditions}.")
        X = control.X.toarray() if sp.issparse(control.X) else np.asarray(control.X)
        return X + self.shift

    def _learned(self) -> dict[str, Any]:
        return {"conditions": self.conditions}

    def _restore(self, learned: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        self.conditions = list(learned["conditions"])


def register() -> None:
    """Presets of :class:`ShiftByOne`, registered the way a plugin with options does it."""
    register_model("shift_by_two", ShiftByOne, shift=2.0)


class TargetMean(CrossModalModel):
    """Predicts every cell's target modality as the training cells' mean: a cross-modal model of
    a package outside mtpert, found through the ``mtpert.crossmodal`` entry point."""

    name = "target_mean"

    def _fit(self, x: np.ndarray, y: np.ndarray, source: AnnData) -> None:
        self.mean = y.mean(axis=0)

    def _predict(self, x: np.ndarray) -> np.ndarray:
        return np.tile(self.mean, (len(x), 1))
