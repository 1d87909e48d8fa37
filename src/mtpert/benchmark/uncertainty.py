"""Predictions that say how sure they are: intervals for a held-out group's predicted mean change.

* **Draws** of the predicted mean change (:class:`ChangeDraws`): one per member of a deep ensemble
  (the model fitted under several seeds; Lakshminarayanan et al. 2017), and/or Monte Carlo dropout
  draws of each member (:meth:`mtpert.models.trained.TrainedModel.sampling_dropout`). Their
  spread is the model's own view of its uncertainty; on a group it has never seen it is usually
  too narrow, since the members share the data and the architecture.
* **Split-conformal calibration** (:func:`calibrate`): the same procedure applied to folds that
  hold out *training* groups in turn, whose true changes are known, gives one nonconformity score
  ``|true - mean| / (spread + floor)`` per (group, condition, gene). Their corrected ``level``
  quantile ``q`` turns any draws into the interval ``mean ± q (spread + floor)``. When the
  held-out group is exchangeable with the training groups, its (condition, gene) changes fall
  inside with probability at least ``level`` — marginally over genes and conditions, not for each
  gene — whatever the model gets right or wrong about itself. ``scale='constant'`` gives every
  gene the same width instead.
* **A confidence score** per target, :meth:`ChangeDraws.uncertainty`: the members' mean
  disagreement over genes, to rank predictions by how far to trust them.

Nothing here reads a held-out group's perturbed cells: calibration sees only the data it is
given (leave them out, as for tuning), and intervals need only the control cells.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from mtpert._array import dense
from mtpert.benchmark.holdout import SplitKind, seed_everything
from mtpert.benchmark.tuning import inner_splits
from mtpert.data.spec import DEFAULT_MIN_CELLS, DatasetSpec
from mtpert.errors import ConfigError
from mtpert.models.base import PerturbationModel
from mtpert.models.registry import get_model

Scale = Literal["spread", "constant"]
LEVELS = (0.5, 0.8, 0.95)
"""Nominal coverages reported by default."""


@dataclass(frozen=True)
class ChangeDraws:
    """Draws of a predicted mean change from control: ``draws`` is (draws x genes)."""

    genes: pd.Index
    draws: np.ndarray

    @property
    def mean(self) -> np.ndarray:
        return self.draws.mean(0)

    @property
    def spread(self) -> np.ndarray:
        """Standard deviation over the draws, per gene (0 for a single draw)."""
        return self.draws.std(0, ddof=1) if len(self.draws) > 1 else np.zeros(self.draws.shape[1])

    def quantiles(self, level: float) -> tuple[np.ndarray, np.ndarray]:
        """The central ``level`` interval of the draws themselves (uncalibrated)."""
        tail = (1 - level) / 2
        return np.quantile(self.draws, tail, axis=0), np.quantile(self.draws, 1 - tail, axis=0)

    def uncertainty(self) -> float:
        """The members' mean disagreement over genes: higher, less sure."""
        return float(self.spread.mean())


def fit_ensemble(
    model: str,
    spec: DatasetSpec,
    train: AnnData,
    val: AnnData | None = None,
    *,
    seeds: Sequence[int] = (1, 2, 3, 4, 5),
    params: Mapping[str, Any] | None = None,
) -> list[PerturbationModel]:
    """Model ``model`` (a registered name) fitted once per seed on the same cells: a deep ensemble."""
    if len(seeds) < 1:
        raise ConfigError("An ensemble needs at least one seed.")
    members = []
    for seed in seeds:
        seed_everything(seed)
        members.append(get_model(model)(spec, **(params or {})).fit(train, val))
    return members


def predict_draws(
    models: Sequence[PerturbationModel],
    control: AnnData,
    condition: str,
    dose: float | None = None,
    *,
    dropout_draws: int = 0,
    seed: int = 0,
) -> ChangeDraws:
    """Each model's predicted mean change of ``control`` under ``condition``; with
    ``dropout_draws``, that many Monte Carlo dropout draws of each model instead of one."""
    basal = dense(control.X).mean(0)
    rows = []
    for i, model in enumerate(models):
        if dropout_draws:
            with model.sampling_dropout(seed + i):  # type: ignore[attr-defined]
                rows += [dense(model.predict(control, condition, dose).X).mean(0) - basal for _ in range(dropout_draws)]
        else:
            rows.append(dense(model.predict(control, condition, dose).X).mean(0) - basal)
    return ChangeDraws(pd.Index(control.var_names), np.vstack(rows))


@dataclass(frozen=True)
class Calibration:
    """Nonconformity scores from held-out training groups, and the intervals they give.

    Attributes:
        scores: ``|true - mean| / (spread + floor)`` (or ``|true - mean|`` with
            ``scale='constant'``) for every (calibration target, gene).
        targets: the calibration targets, as ``group/condition``.
    """

    scores: np.ndarray
    targets: tuple[str, ...]
    scale: Scale = "spread"
    floor: float = 0.01

    def factor(self, level: float) -> float:
        """The conformal quantile: the ``ceil((n + 1) level)``-th smallest of the n scores
        (infinite when there are too few scores for ``level``)."""
        if not 0 < level < 1:
            raise ConfigError(f"level must be between 0 and 1, got {level}.")
        n = len(self.scores)
        k = math.ceil((n + 1) * level)
        return math.inf if k > n else float(np.sort(self.scores)[k - 1])

    def interval(self, draws: ChangeDraws, level: float) -> tuple[np.ndarray, np.ndarray]:
        """``mean ± q (spread + floor)`` for each gene (``mean ± q`` with a constant scale)."""
        width = self.factor(level) * self._scale(draws)
        return draws.mean - width, draws.mean + width

    def score(self, draws: ChangeDraws, truth: np.ndarray) -> np.ndarray:
        return np.abs(truth - draws.mean) / self._scale(draws)

    def _scale(self, draws: ChangeDraws) -> np.ndarray:
        return draws.spread + self.floor if self.scale == "spread" else np.ones(len(draws.genes))


def true_change(control: AnnData, truth: AnnData) -> np.ndarray:
    """The measured mean change from control, per gene."""
    return dense(truth.X).mean(0) - dense(control.X).mean(0)


def calibrate(
    data: AnnData,
    spec: DatasetSpec,
    model: str,
    *,
    seeds: Sequence[int] = (1, 2, 3, 4, 5),
    params: Mapping[str, Any] | None = None,
    kind: SplitKind = "group",
    group_key: str | None = None,
    folds: int = 3,
    dropout_draws: int = 0,
    scale: Scale = "spread",
    floor: float = 0.01,
    seed: int = 0,
    min_cells: int = DEFAULT_MIN_CELLS,
) -> Calibration:
    """Split-conformal calibration on ``data`` (log-normalized, without the held-out cells): hold
    out ``folds`` training groups in turn (or conditions, or combinations: ``kind``), fit the
    ensemble on the rest, and score its draws on every held-out target."""
    if scale not in ("spread", "constant"):
        raise ConfigError(f"scale must be 'spread' or 'constant', got {scale!r}.")
    if scale == "spread" and len(seeds) < 2 and not dropout_draws:
        raise ConfigError("scale='spread' needs a spread: give two or more seeds, or dropout_draws.")
    calibration = Calibration(np.empty(0), (), scale, floor)
    scores, targets = [], []
    for _, split in inner_splits(data, spec, kind, folds, group_key=group_key, seed=seed, min_cells=min_cells):
        val = split.subset(data, "val")
        members = fit_ensemble(model, spec, split.subset(data, "train"), val if val.n_obs else None, seeds=seeds, params=params)
        for target in split.targets:
            control, truth = data[target.control], data[target.truth]
            draws = predict_draws(members, control, target.condition, target.dose, dropout_draws=dropout_draws, seed=seed)
            scores.append(calibration.score(draws, true_change(control, truth)))
            targets.append(f"{target.group}/{target.condition}")
    return Calibration(np.concatenate(scores), tuple(targets), scale, floor)


def coverage(truth: np.ndarray, low: np.ndarray, high: np.ndarray) -> float:
    """Share of genes whose true change lies in [low, high]."""
    return float(np.mean((truth >= low) & (truth <= high)))


def interval_table(
    truth: np.ndarray,
    draws: ChangeDraws,
    calibrations: Mapping[str, Calibration] | None = None,
    levels: Sequence[float] = LEVELS,
) -> pd.DataFrame:
    """Coverage and mean width at each level of the draws' own quantiles (``method='draws'``)
    and of each named calibration's intervals: one row per (method, level)."""
    rows = []
    for level in levels:
        intervals = {"draws": draws.quantiles(level)} | {
            name: c.interval(draws, level) for name, c in (calibrations or {}).items()
        }
        for method, (low, high) in intervals.items():
            rows.append({"method": method, "level": level, "coverage": coverage(truth, low, high), "width": float(np.mean(high - low))})
    return pd.DataFrame(rows)
