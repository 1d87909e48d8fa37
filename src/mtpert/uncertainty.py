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
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from pydantic import Field

from mtpert._array import dense
from mtpert.data.folds import SplitKind, seed_everything
from mtpert.data.spec import DEFAULT_MIN_CELLS, DatasetSpec
from mtpert.data.split import Target, condition_label
from mtpert.errors import ConfigError
from mtpert.models.base import PerturbationModel
from mtpert.models.registry import get_model
from mtpert.tuning import inner_splits, read_settings

__all__ = [
    "LEVELS",
    "PREFIX",
    "UNCERTAINTY",
    "Calibration",
    "ChangeDraws",
    "UncertaintySettings",
    "calibrate",
    "coverage",
    "fit_ensemble",
    "interval_scores",
    "interval_table",
    "predict_draws",
    "true_change",
]

Scale = Literal["spread", "constant"]
LEVELS = (0.5, 0.8, 0.95)
"""Nominal coverages reported by default."""

UNCERTAINTY = "uncertainty"
"""The key of a benchmark model's uncertainty settings among its parameters:
``models: {mtae: {uncertainty: {members: 5}}}``."""
PREFIX = "uq_"
"""Result rows of intervals are named ``uq_<quantity>_<level %>`` (``uq_coverage_80``): kept out
of the report's metric tables, gathered in its uncertainty section."""


@dataclass(frozen=True)
class UncertaintySettings:
    """How a benchmark run states its uncertainty, as a config's ``uncertainty:`` reads it.

    Attributes:
        members: models in the deep ensemble (the run's own model and ``members - 1`` more seeds).
        folds: training groups (or conditions, combination draws) held out in turn to calibrate.
        dropout_draws: MC-dropout draws per member instead of one prediction (0: none).
        levels: nominal coverages of the intervals.
    """

    members: Annotated[int, Field(ge=2)] = 5
    folds: Annotated[int, Field(ge=1)] = 3
    dropout_draws: Annotated[int, Field(ge=0)] = 0
    levels: tuple[float, ...] = LEVELS

    def __post_init__(self) -> None:
        if not self.levels or not all(0 < level < 1 for level in self.levels):
            raise ConfigError(f"uncertainty.levels must lie between 0 and 1, got {self.levels}.")

    @classmethod
    def read(cls, value: Mapping[str, Any] | UncertaintySettings) -> UncertaintySettings:
        """Settings from a config's mapping (``{}`` for the defaults)."""
        if isinstance(value, UncertaintySettings):
            return value
        return read_settings(cls, value, where=UNCERTAINTY)

    def to_dict(self) -> dict[str, Any]:
        return {"members": self.members, "folds": self.folds, "dropout_draws": self.dropout_draws, "levels": list(self.levels)}


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

    @classmethod
    def from_draws(
        cls, targets: Mapping[str, tuple[ChangeDraws, np.ndarray]], *, scale: Scale = "spread", floor: float = 0.01
    ) -> Calibration:
        """Scores of each calibration target's draws against its true change, by target name."""
        if scale not in ("spread", "constant"):
            raise ConfigError(f"scale must be 'spread' or 'constant', got {scale!r}.")
        if not targets:
            raise ConfigError("Calibration needs at least one target with a known change.")
        empty = cls(np.empty(0), (), scale, floor)
        scores = [empty.score(draws, truth) for draws, truth in targets.values()]
        return cls(np.concatenate(scores), tuple(targets), scale, floor)

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
    if scale == "spread" and len(seeds) < 2 and not dropout_draws:
        raise ConfigError("scale='spread' needs a spread: give two or more seeds, or dropout_draws.")
    targets = {}
    for _, split in inner_splits(data, spec, kind, folds, group_key=group_key, seed=seed, min_cells=min_cells):
        val = split.subset(data, "val")
        members = fit_ensemble(model, spec, split.subset(data, "train"), val if val.n_obs else None, seeds=seeds, params=params)
        for target in split.targets:
            control, truth = data[target.control], data[target.truth]
            draws = predict_draws(members, control, target.condition, target.dose, dropout_draws=dropout_draws, seed=seed)
            targets[target_name(target)] = (draws, true_change(control, truth))
    return Calibration.from_draws(targets, scale=scale, floor=floor)


def target_name(target: Target) -> str:
    """``group/condition`` (``@dose`` where there is one): how calibration names its targets."""
    return f"{target.group}/{condition_label(target.condition, target.dose)}"


def coverage(truth: np.ndarray, low: np.ndarray, high: np.ndarray) -> float:
    """Share of genes whose true change lies in [low, high]."""
    return float(np.mean((truth >= low) & (truth <= high)))


def interval_scores(
    members: Sequence[PerturbationModel],
    calibration: Calibration,
    control: AnnData,
    truth: AnnData,
    condition: str,
    dose: float | None,
    settings: UncertaintySettings,
    *,
    seed: int = 0,
) -> pd.DataFrame:
    """One target's interval rows for a benchmark's long table (``metric``, ``value``, ...): per
    level, the calibrated intervals' coverage of the true change (all genes, and the 20 of largest
    true change), their mean width, and the coverage of the members' own quantiles; and the
    members' disagreement (``uq_uncertainty``)."""
    draws = predict_draws(members, control, condition, dose, dropout_draws=settings.dropout_draws, seed=seed)
    change = true_change(control, truth)
    top = np.argsort(-np.abs(change))[:20]
    values = {f"{PREFIX}uncertainty": draws.uncertainty()}
    for level in settings.levels:
        pct = f"{100 * level:g}"
        low, high = calibration.interval(draws, level)
        own = draws.quantiles(level)
        values |= {
            f"{PREFIX}coverage_{pct}": coverage(change, low, high),
            f"{PREFIX}coverage_top20_{pct}": coverage(change[top], low[top], high[top]),
            f"{PREFIX}width_{pct}": float(np.mean(high - low)),
            f"{PREFIX}draws_coverage_{pct}": coverage(change, *own),
        }
    return pd.DataFrame(
        {"metric": list(values), "value": list(values.values()), "spread": np.nan, "best": np.nan, "higher_is_better": True}
    )


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
