"""Folds: a held-out target's prepared data and seeded split, the one way every run makes them.

:class:`Holdout` names what a split holds out (a group, a condition at a dose, or a share of a
screen's combinations, see :mod:`mtpert.data.split`). :func:`make_fold` prepares the data for it
with the HVGs chosen without the held-out cells (``hvg_on_all_cells=True`` restores the
literature protocol) and splits them under a seed; :func:`seed_everything` makes what runs on
the fold repeatable. Benchmarks, tuning, the command line and scripts all make folds here.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

import numpy as np
from anndata import AnnData

from mtpert.data.pp import prepare
from mtpert.data.spec import DEFAULT_MIN_CELLS, DatasetSpec
from mtpert.data.split import Split, holdout_combinations, holdout_condition, holdout_group

SplitKind = Literal["group", "condition", "combination"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so a run is repeatable on CPU."""
    import torch  # here, so that reading data never loads torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class Holdout:
    """What a split holds out, as a benchmark run names it.

    ``kind``: ``"group"`` holds out group ``target`` of ``group_key`` (default: the spec's
    cell-type key) at every dose (:func:`mtpert.data.holdout_group`); ``"condition"`` holds out
    condition ``target`` at ``dose`` in every group (:func:`mtpert.data.holdout_condition`);
    ``"combination"`` holds out a ``fraction`` of the predictable combinations, drawn with split
    seed ``int(target)`` (:func:`mtpert.data.holdout_combinations`).
    """

    target: str
    kind: SplitKind = "group"
    dose: float | None = None
    group_key: str | None = None
    fraction: float = 0.5

    def split(self, adata: AnnData, spec: DatasetSpec, *, seed: int = 0, min_cells: int = DEFAULT_MIN_CELLS) -> Split:
        """The split of ``adata``; ``seed`` divides the rest into train and validation cells."""
        if self.kind == "combination":
            return holdout_combinations(adata, spec, split_seed=int(self.target), fraction=self.fraction, seed=seed, min_cells=min_cells)
        options = {"group_key": self.group_key, "seed": seed, "min_cells": min_cells}
        if self.kind == "group":
            return holdout_group(adata, spec, self.target, **options)
        return holdout_condition(adata, spec, self.target, dose=self.dose, **options)


def prepare_holdout(
    adata: AnnData, spec: DatasetSpec, split: Split, *, n_hvg: int = 2000, hvg_on_all_cells: bool = False
) -> AnnData:
    """``adata`` log-normalized over HVGs chosen without ``split``'s held-out cells (unless
    ``hvg_on_all_cells``, the literature protocol)."""
    exclude = None if hvg_on_all_cells else adata.obs_names.isin(split.heldout)
    return prepare(adata, spec, n_hvg=n_hvg, exclude=exclude)


@dataclass(frozen=True, eq=False)
class Fold:
    """One held-out target's prepared data and seeded split: what a model fits and is scored on."""

    data: AnnData
    split: Split


def fold_data(
    raw: AnnData,
    spec: DatasetSpec,
    holdout: Holdout | str,
    *,
    n_hvg: int = 2000,
    hvg_on_all_cells: bool = False,
    min_cells: int = DEFAULT_MIN_CELLS,
) -> AnnData:
    """``raw`` prepared for ``holdout`` (a group's name is a group holdout): log-normalized over
    HVGs chosen without its held-out cells. The same for every seed, so it can be reused across
    seeds."""
    holdout = Holdout(holdout) if isinstance(holdout, str) else holdout
    heldout = holdout.split(raw, spec, min_cells=min_cells)
    return prepare_holdout(raw, spec, heldout, n_hvg=n_hvg, hvg_on_all_cells=hvg_on_all_cells)


def make_fold(
    raw: AnnData,
    spec: DatasetSpec,
    holdout: Holdout | str,
    *,
    seed: int,
    n_hvg: int = 2000,
    hvg_on_all_cells: bool = False,
    min_cells: int = DEFAULT_MIN_CELLS,
) -> Fold:
    """The fold of every benchmark run and script: :func:`fold_data`, split under ``seed``. Fit on
    ``fold.split.subset(fold.data, "train")`` (and ``"val"``), score on ``fold.split.targets``."""
    holdout = Holdout(holdout) if isinstance(holdout, str) else holdout
    data = fold_data(raw, spec, holdout, n_hvg=n_hvg, hvg_on_all_cells=hvg_on_all_cells, min_cells=min_cells)
    return Fold(data, holdout.split(data, spec, seed=seed, min_cells=min_cells))
