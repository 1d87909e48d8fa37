"""The baselines every learned model must beat: no change, and changes averaged from training.

Each predicts the control cells plus a per-gene change (so the cells keep their spread), clipped
at 0, the floor of log1p data. Which one is the bar depends on the split:

* :class:`ControlPredictor` (``control``): any split; the perturbation changes nothing.
* :class:`MeanShift` (``mean_shift``): a held-out group (cell line, cell type): each condition's
  change averaged over the training groups. It predicts only condition labels seen in training
  (a combination ``A+B`` included, as a label of its own), so not an unseen combination.
* :class:`GlobalMean` (``global_mean``): any split; the average change of all training
  perturbations, whatever was asked: a model that beats it uses what is specific to a
  perturbation.
* :class:`Additive` (``additive``): unseen combinations (``A+B`` from the changes of ``A`` and
  ``B`` alone); on a single perturbation it is that perturbation's change.
* :class:`~mtpert.models.linear.LinearModel` (``linear``): unseen combinations, as a linear
  model on perturbation embeddings.

Doses are matched exactly, as :class:`MeanShift` matches them: a dose not seen in training is
refused with the doses that were.
"""

from __future__ import annotations

import warnings
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData

from mtpert._array import dense
from mtpert.data.backed import on_disk
from mtpert.data.spec import DatasetSpec
from mtpert.errors import ConfigError, DataError
from mtpert.models.base import PerturbationModel, check_weights

ConditionKey = tuple[str, float | None]
"""A condition label and its dose (None when the spec has no dose key)."""

SHOWN = 10
"""Names an error lists before saying how many more there are."""


@dataclass(frozen=True)
class MeanChanges:
    """The mean log-expression change from control of every training (condition, dose), per group.

    ``changes[k, g]`` is the mean of the cells of ``keys[k]`` in group ``groups[g]`` (of the spec's
    cell-type key) minus the mean of that group's control cells; NaN where the group lacks
    ``min_cells`` of either (:func:`mean_changes`). Every key has at least one group's change.
    ``noise`` (same shape, optional): the sampling variance of each change (the two means' variances
    over their cells, summed), for judging how far a change is only noise. ``controls`` (groups,
    genes; with ``noise``): each group's mean control log-expression and, in ``control_noise``,
    its sampling variance.
    """

    keys: list[ConditionKey]
    groups: list[str]
    changes: np.ndarray
    noise: np.ndarray | None = None
    controls: np.ndarray | None = None
    control_noise: np.ndarray | None = None

    def averaged(self) -> np.ndarray:
        """Each key's change averaged over the groups that have one, with equal weight, so an
        abundant group does not dominate: (keys, genes)."""
        return _nanmean(self.changes, axis=1)

    def index(self) -> dict[ConditionKey, int]:
        """Row of each key."""
        return {key: i for i, key in enumerate(self.keys)}


def mean_changes(
    train: AnnData, spec: DatasetSpec, min_cells: int, *, model: str, noise: bool = False
) -> MeanChanges:
    """Every (condition, dose)'s change from control in every group of ``train`` (log data);
    ``noise``: also each change's sampling variance (one more pass, over the squares).

    The group means come from one sparse product over the cells (read chunk by chunk when the
    data are on disk), so thousands of perturbations cost one pass. Conditions that no group
    has ``min_cells`` control and ``min_cells`` perturbed cells of are left out with a warning
    naming ``model``; none left raises :class:`DataError`.
    """
    if min_cells < 1:
        raise ConfigError(f"{model}: min_cells must be at least 1, got {min_cells}.")
    obs = train.obs
    is_control = spec.is_control(train)
    dose = (
        np.full(train.n_obs, np.nan)
        if spec.dose_key is None
        else obs[spec.dose_key].to_numpy(dtype=float)
    )
    cells = pd.DataFrame(
        {
            "group": obs[spec.cell_type_key].astype(str).to_numpy(),
            "condition": obs[spec.condition_key].astype(str).to_numpy(),
            "dose": np.where(is_control, np.nan, dose),  # a group's control cells pool over doses
        }
    )
    ids = cells.groupby(list(cells.columns), sort=False, dropna=False).ngroup().to_numpy()
    _, first, counts = np.unique(ids, return_index=True, return_counts=True)
    labels = cells.iloc[first].reset_index(drop=True).assign(n=counts)
    means = _row_means(train, ids, len(labels))
    # the variance of a mean over n cells: (E[x^2] - E[x]^2) / (n - 1), unbiased
    variances = (
        np.maximum(_row_means(train, ids, len(labels), squared=True) - means**2, 0.0)
        / np.maximum(labels["n"].to_numpy() - 1, 1)[:, None]
        if noise
        else None
    )
    controls = labels.index[(labels["condition"] == spec.control) & (labels["n"] >= min_cells)]
    control_mean = {labels.at[i, "group"]: means[i] for i in controls}
    control_row = {labels.at[i, "group"]: i for i in controls}
    groups = sorted(control_mean)
    perturbed = labels[labels["condition"] != spec.control]
    keys = sorted(
        {
            (c, None if spec.dose_key is None else float(d))
            for c, d in zip(perturbed["condition"], perturbed["dose"], strict=True)
        },
        key=lambda k: (k[0], k[1] or 0.0),
    )
    row = {key: i for i, key in enumerate(keys)}
    column = {group: j for j, group in enumerate(groups)}
    changes = np.full((len(keys), len(groups), train.n_vars), np.nan, dtype=np.float32)
    spread = None if variances is None else np.full_like(changes, np.nan)
    for i, label in perturbed.iterrows():
        if label["n"] >= min_cells and label["group"] in column:
            key = (label["condition"], None if spec.dose_key is None else float(label["dose"]))
            changes[row[key], column[label["group"]]] = means[i] - control_mean[label["group"]]
            if spread is not None and variances is not None:
                spread[row[key], column[label["group"]]] = (
                    variances[i] + variances[control_row[label["group"]]]
                )
    estimated = ~np.isnan(changes).all(axis=(1, 2))
    if not estimated.any():
        raise DataError(
            f"{model}: no condition has a training cell type with {min_cells} control and "
            f"{min_cells} perturbed cells to estimate a change from; lower min_cells."
        )
    if not estimated.all():
        dropped = [key_string(*k) for k, ok in zip(keys, estimated, strict=True) if not ok]
        warnings.warn(
            f"{model}: no training cell type has {min_cells} control and {min_cells} cells of "
            f"{some(dropped)}; left out of the fit (lower min_cells?).",
            stacklevel=4,
        )
    return MeanChanges(
        [k for k, ok in zip(keys, estimated, strict=True) if ok],
        groups,
        changes[estimated],
        None if spread is None else spread[estimated],
        None if variances is None else np.stack([control_mean[g] for g in groups]),
        None if variances is None else np.stack([variances[control_row[g]] for g in groups]),
    )


class ControlPredictor(PerturbationModel):
    """Predicts that the perturbation changes nothing: the control cells are returned as they are.

    Scores every relative distance at exactly 1, the line a model must be below to be useful.
    Fits any split.
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

    The baseline of a held-out group (cell line) split, at any number of perturbations. A
    combination ``A+B`` is a condition like any other: predicted if training has it, never
    built from its parts (see :class:`Additive` for that).
    """

    name = "mean_shift"

    def __init__(self, spec: DatasetSpec, *, min_cells: int = 5) -> None:
        super().__init__(spec, min_cells=min_cells)
        self.min_cells = min_cells
        self.conditions: list[ConditionKey] = []
        self.shifts = np.empty((0, 0), dtype=np.float32)

    def _fit(self, train: AnnData, val: AnnData | None) -> None:
        table = mean_changes(train, self.spec, self.min_cells, model=self.name)
        self.conditions = table.keys
        self.shifts = table.averaged().astype(np.float32)

    def _predict(self, control: AnnData, condition: str, dose: float | None) -> np.ndarray:
        key = (condition, None if dose is None else float(dose))
        if key not in self.conditions:
            known = [key_string(*k) for k in self.conditions]
            raise DataError(
                f"mean_shift saw no '{key_string(*key)}' cells in training and cannot predict it "
                f"(it cannot interpolate doses, nor combine perturbations: see 'additive'); "
                f"known: {some(known)}."
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


class GroupChangeModel(PerturbationModel):
    """Base of the baselines that add a change built from :class:`MeanChanges` to each control
    cell: a cell of a training group gets its own group's change where that group has one, other
    cells (a held-out group) the average over the training groups that have one.

    Its own group's change is the better estimate when there is one (a held-out combination in a
    cell line that has the singles); the average is all there is for a group held out whole,
    where it is what :class:`MeanShift` does.
    """

    def __init__(self, spec: DatasetSpec, *, min_cells: int = 5) -> None:
        super().__init__(spec, min_cells=min_cells)
        self.min_cells = min_cells
        self.table = MeanChanges([], [], np.empty((0, 0, 0), dtype=np.float32))

    @abstractmethod
    def _change(self, condition: str, dose: float | None, groups: np.ndarray) -> np.ndarray:
        """Change of each control cell (of group ``groups[i]``) under ``condition`` at ``dose``."""

    def _fit(self, train: AnnData, val: AnnData | None) -> None:
        self.table = mean_changes(train, self.spec, self.min_cells, model=self.name)

    def _predict(self, control: AnnData, condition: str, dose: float | None) -> np.ndarray:
        key = self.spec.cell_type_key
        groups = (
            control.obs[key].astype(str).to_numpy()
            if key in control.obs
            else np.full(control.n_obs, "")
        )
        change = self._change(condition, None if dose is None else float(dose), groups)
        return np.clip(dense(control.X) + change, 0.0, None)

    def _per_cell(self, by_group: np.ndarray, groups: np.ndarray) -> np.ndarray:
        """``by_group`` (training groups x genes, NaN rows where a group has no change) for each
        control cell: its group's row if it has one, else the mean of the rows that are set."""
        rows = np.vstack([by_group, _nanmean(by_group, axis=0)])
        known = {g: i for i, g in enumerate(self.table.groups) if not np.isnan(by_group[i]).all()}
        return rows[[known.get(g, len(by_group)) for g in groups]]

    def _learned(self) -> dict[str, Any]:
        return {"keys": [list(k) for k in self.table.keys], "groups": self.table.groups}

    def _tensors(self) -> dict[str, np.ndarray]:
        return {"changes": self.table.changes}

    def _restore(self, learned: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        keys = [(c, d) for c, d in learned["keys"]]
        shape = (len(keys), len(learned["groups"]), len(self.genes))  # type: ignore[arg-type]
        check_weights(tensors, {"changes": shape})
        self.table = MeanChanges(keys, list(learned["groups"]), tensors["changes"].cpu().numpy())


class GlobalMean(GroupChangeModel):
    """Adds the mean change of all training perturbations to each control cell, whatever was asked.

    The bar of "no perturbation-specific information" (the 'mean' baseline of Ahlmann-Eltze et
    al., Nat Methods 2025): within each training group, the changes from control of its
    perturbations (combinations included, each condition once) averaged;
    a cell of another group gets the average over groups. With doses, the perturbations at the
    asked dose are averaged. Fits any split; a model that does not beat it has learned nothing
    about the perturbation it was asked for.
    """

    name = "global_mean"
    predicts_unseen_combinations = True

    def _change(self, condition: str, dose: float | None, groups: np.ndarray) -> np.ndarray:
        at_dose = [i for i, (_, d) in enumerate(self.table.keys) if d == dose]
        if not at_dose:
            doses = sorted({d for _, d in self.table.keys if d is not None})
            raise DataError(
                f"global_mean saw no perturbed cells at dose {dose} in training and cannot "
                f"interpolate doses; its doses: {doses}."
            )
        return self._per_cell(_nanmean(self.table.changes[at_dose], axis=0), groups)


class Additive(GroupChangeModel):
    """Adds the sum of the single perturbations' changes to each control cell: A+B adds A's and B's.

    The additive model of combinations (GEARS, CPA and Ahlmann-Eltze et al. all compare with
    it): a part's change is the mean change of the training cells with that perturbation alone
    (per group, see :class:`GroupChangeModel`); a single perturbation is its own change.
    Combinations in training are not used: the model is the sum, whether or not the combination
    was seen. A part never seen alone in training (at the asked dose) cannot be predicted, even
    if a training combination contains it, since its own share of that combination is unknown.

    The baseline of unseen combinations; on a held-out group it is :class:`MeanShift` for
    single perturbations.
    """

    name = "additive"
    predicts_unseen_combinations = True

    def _fit(self, train: AnnData, val: AnnData | None) -> None:
        super()._fit(train, val)
        if not any(len(self.spec.parts(c)) == 1 for c, _ in self.table.keys):
            raise DataError(
                "additive: training has no single perturbation, only combinations; it sums the "
                "changes of perturbations seen alone, so it needs cells with one perturbation."
            )

    def _change(self, condition: str, dose: float | None, groups: np.ndarray) -> np.ndarray:
        row = self.table.index()
        parts = parts_alone(self.table.keys, self.spec, condition, dose, model=self.name)
        return sum(self._per_cell(self.table.changes[row[part]], groups) for part in parts)


def parts_alone(
    keys: Sequence[ConditionKey],
    spec: DatasetSpec,
    condition: str,
    dose: float | None,
    *,
    model: str,
) -> list[ConditionKey]:
    """The key of each part of ``condition`` at ``dose``, checked to be among the training
    ``keys`` alone; :class:`DataError` naming a part that is not (and the combinations or doses
    it was seen in)."""
    if not spec.parts(condition):
        raise DataError(f"{model}: '{condition}' names no perturbation.")
    seen = set(keys)
    for part in spec.parts(condition):
        if (part, dose) in seen:
            continue
        within = sorted({c for c, _ in keys if len(spec.parts(c)) > 1 and part in spec.parts(c)})
        doses = sorted({d for c, d in keys if c == part and d is not None})
        singles = sorted({c for c, _ in keys if len(spec.parts(c)) == 1})
        where = "alone" if dose is None else f"alone at dose {dose}"
        other_doses = f" (its doses alone: {doses})" if doses else ""
        in_combinations = f"; it is in the training combinations {some(within)}" if within else ""
        raise DataError(
            f"{model} cannot predict '{condition}': '{part}' was never seen {where} in training"
            f"{other_doses}{in_combinations}. {model} builds a condition from its parts seen alone; "
            f"those seen alone: {some(singles)}."
        )
    return [(part, dose) for part in spec.parts(condition)]


def key_string(condition: str, dose: float | None) -> str:
    """``condition``, or ``condition@dose``."""
    return condition if dose is None else f"{condition}@{float(dose)}"


def some(names: Sequence[str], shown: int = SHOWN) -> str:
    """The first ``shown`` names, quoted, and how many more there are."""
    listed = ", ".join(f"'{n}'" for n in names[:shown])
    return listed + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    """Mean over ``axis`` of the non-NaN values; NaN where there are none (without numpy's
    warning about empty slices)."""
    present = ~np.isnan(values)
    n = present.sum(axis=axis)
    total = np.where(present, values, 0.0).sum(axis=axis)
    return np.divide(total, n, out=np.full(total.shape, np.nan, dtype=values.dtype), where=n > 0)


def _row_means(adata: AnnData, ids: np.ndarray, n: int, *, squared: bool = False) -> np.ndarray:
    """Mean of ``adata.X`` (``squared``: of its squares) over the cells with each id in
    ``range(n)`` (float64), one sparse product per chunk of rows."""
    sums = np.zeros((n, adata.n_vars))
    disk = on_disk(adata)
    start = 0
    for block in disk.chunks() if disk is not None else (adata.X,):
        rows = block.shape[0]
        indicator = sp.csr_matrix(
            (np.ones(rows), (ids[start : start + rows], np.arange(rows))), shape=(n, rows)
        )
        if squared:
            block = block.power(2) if sp.issparse(block) else np.square(block, dtype=np.float64)
        product = indicator @ block
        sums += product.toarray() if sp.issparse(product) else np.asarray(product)
        start += rows
    return sums / np.bincount(ids, minlength=n)[:, None]
