"""Fit a model on a fold and score it: the engine of benchmarks, tuning and uncertainty.

:func:`fit_and_score` fits a registered model on a split's training cells under a seed and
scores each held-out target with the evaluation suite (:func:`mtpert.metrics.evaluate`); every
target becomes one block of a long result table, prefixed by its ids (:func:`target_scores`).
:func:`rank_scores` adds the across-target metrics, :func:`noise_ceiling` the best score a
prediction can expect, and :func:`summarize` averages a table over groups and seeds. Folds
themselves are made by :func:`mtpert.data.make_fold`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from anndata import AnnData

from mtpert.data.folds import seed_everything
from mtpert.data.spec import DEFAULT_MIN_CELLS, DatasetSpec
from mtpert.data.split import Split, Target, single_dose
from mtpert.metrics import evaluate, evaluate_across
from mtpert.metrics.evaluate import RESULT_COLUMNS
from mtpert.models.base import PerturbationModel
from mtpert.models.registry import get_model

__all__ = [
    "FitResult",
    "Prediction",
    "fit_and_score",
    "noise_ceiling",
    "rank_scores",
    "summarize",
    "target_scores",
]


@dataclass(frozen=True)
class Prediction:
    """One model's prediction for one held-out target, with the cells it is scored against."""

    target: Target
    model: str
    seed: int
    control: AnnData
    truth: AnnData
    pred: AnnData


@dataclass(frozen=True)
class FitResult:
    """What fitting a model under one seed and scoring it on a split's targets produced.

    ``models``: the fitted model under key None, or one per dose (see :func:`fit_and_score`).
    """

    models: Mapping[float | None, PerturbationModel]
    scores: pd.DataFrame
    predictions: tuple[Prediction, ...]
    fit_seconds: float
    predict_seconds: float


def fit_and_score(
    data: AnnData,
    split: Split,
    spec: DatasetSpec,
    name: str,
    seed: int,
    params: Mapping[str, Any] | None = None,
    *,
    one_dose_at_a_time: bool = False,
    registered: str | None = None,
) -> FitResult:
    """Fit model ``name`` on ``split``'s training cells under ``seed`` and score every target.

    ``registered``: the registered model to build when ``name`` is a named variant of it
    (predictions are labelled ``name``).

    ``data`` is prepared (log-normalized, HVGs chosen without the held-out cells). The scores are
    the evaluation suite's long table, one block per target, with the target's ids and cell counts.

    ``one_dose_at_a_time`` (data with doses): a single-perturbation model's protocol, one model
    per dose of the targets, each fitted on the training cells of the control and that dose only
    (:func:`mtpert.data.single_dose`) and asked for the condition without a dose; scores and
    predictions are labelled with the dose again, and the times add up over the doses.
    """
    build = partial(get_model(registered or name), **(params or {}))  # spec -> model
    if not one_dose_at_a_time:
        return _fit_and_score(data, split, spec, name, seed, build)
    parts = {}
    for dose in sorted({t.dose for t in split.targets}):
        subset, dose_spec = single_dose(data, spec, dose)
        train, val = (names[names.isin(subset.obs_names)] for names in (split.train, split.val))
        targets = tuple(replace(t, dose=None) for t in split.targets if t.dose == dose)
        dose_split = replace(split, train=train, val=val, targets=targets)
        parts[dose] = _fit_and_score(subset, dose_split, dose_spec, name, seed, build)
    originals = {(t.group, t.condition, t.dose): t for t in split.targets}
    predictions = []
    for dose, part in parts.items():
        for p in part.predictions:
            pred = p.pred.copy()
            pred.obs[spec.dose_key] = dose
            predictions.append(replace(p, target=originals[p.target.group, p.target.condition, dose], pred=pred))
    return FitResult(
        {dose: part.models[None] for dose, part in parts.items()},
        pd.concat([part.scores.assign(dose=dose) for dose, part in parts.items()], ignore_index=True),
        tuple(predictions),
        sum(part.fit_seconds for part in parts.values()),
        sum(part.predict_seconds for part in parts.values()),
    )


def _fit_and_score(
    data: AnnData, split: Split, spec: DatasetSpec, name: str, seed: int, build: Callable[[DatasetSpec], PerturbationModel]
) -> FitResult:
    seed_everything(seed)
    model = build(spec)
    start = time.perf_counter()
    model.fit(split.subset(data, "train"), split.subset(data, "val"))
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    preds = model.predict_many([(data[t.control], t.condition, t.dose) for t in split.targets])  # at once: a peer answers in one call
    predict_seconds = time.perf_counter() - start
    blocks, predictions = [], []
    for target, pred in zip(split.targets, preds, strict=True):
        control, truth = data[target.control], data[target.truth]
        predictions.append(Prediction(target, name, seed, control, truth, pred))
        blocks.append(target_scores(target, evaluate(control, truth, pred, seed=seed)))
    return FitResult({None: model}, pd.concat(blocks, ignore_index=True), tuple(predictions), fit_seconds, predict_seconds)


def rank_scores(
    data: AnnData,
    spec: DatasetSpec,
    predictions: Sequence[Prediction],
    *,
    group_key: str | None = None,
    min_cells: int = DEFAULT_MIN_CELLS,
) -> pd.DataFrame:
    """Rows of every across-target metric (:func:`mtpert.metrics.evaluate_across`), e.g. ``rank``
    (0 best): each prediction ranked among the true (condition, dose)s of its group of
    ``group_key`` that have ``min_cells`` cells, in ``data``. A model that predicts the same
    response at every dose scores 0.5 on average. No rows for a group with fewer than two such
    conditions.
    """
    by_group = replace(spec, cell_type_key=group_key or spec.cell_type_key)
    ids = [by_group.cell_type_key, spec.condition_key, *([spec.dose_key] if spec.dose_key else [])]
    obs = data.obs
    size = obs.groupby(ids, observed=True)[ids[0]].transform("size").to_numpy()
    control = spec.is_control(data)
    blocks = []
    for group in dict.fromkeys(p.target.group for p in predictions):
        in_group = (obs[ids[0]].astype(str) == group).to_numpy()
        truth = data[in_group & (control | (size >= min_cells))]
        if len(truth.obs.loc[~spec.is_control(truth), ids[1:]].drop_duplicates()) < 2:
            continue
        mine = [p for p in predictions if p.target.group == group]
        pred = ad.concat([p.pred for p in mine], index_unique="-", keys=[str(i) for i in range(len(mine))])
        ranks = evaluate_across(truth, pred, by_group)
        for p in mine:
            row = ranks["condition"] == p.target.condition
            if p.target.dose is not None:
                row &= np.isclose(ranks["dose"], p.target.dose)
            blocks.append(target_scores(p.target, ranks.loc[row, RESULT_COLUMNS].reset_index(drop=True)))
    return pd.concat(blocks, ignore_index=True) if blocks else pd.DataFrame()


def noise_ceiling(data: AnnData, split: Split, seed: int, repeats: int = 5) -> pd.DataFrame:
    """The best score a prediction can expect: each target's true cells split in two random
    halves, one half scored as the prediction of the other, averaged over ``repeats`` splits.

    Halves hold half the cells, so sampling noise is larger than between a prediction and all
    true cells: read it as an approximate ceiling. ``spread`` is the std over the splits.
    """
    rng = np.random.default_rng(seed)
    blocks = []
    for target in split.targets:
        control = data[target.control]
        runs = []
        for _ in range(repeats):
            cells = rng.permutation(target.truth.to_numpy())
            half = len(cells) // 2
            runs.append(evaluate(control, data[cells[:half]], data[cells[half:]], seed=seed))
        table = pd.concat(runs).groupby("metric", sort=False)
        scores = table.first().assign(value=table["value"].mean(), spread=table["value"].std()).reset_index()
        blocks.append(target_scores(target, scores))
    return pd.concat(blocks, ignore_index=True)


def target_scores(target: Target, scores: pd.DataFrame) -> pd.DataFrame:
    """``scores`` of one target prefixed by its ids: group, condition, dose and cell counts."""
    ids = {
        "group": target.group,
        "condition": target.condition,
        "dose": target.dose,
        "n_control": len(target.control),
        "n_truth": len(target.truth),
    }
    return scores.assign(**ids)[[*ids, *scores.columns]]


def summarize(results: pd.DataFrame, *, by: Sequence[str] = ("model",)) -> pd.DataFrame:
    """Mean and standard deviation of each metric over groups and seeds: rows ``by``, columns metrics."""
    return results.pivot_table(index=list(by), columns="metric", values="value", aggfunc=["mean", "std"])
