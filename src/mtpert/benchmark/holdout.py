"""Score models on held-out groups: prepare without leakage, split, fit, predict, evaluate.

For each held-out group the HVGs are chosen without that group's perturbed cells, so nothing a
model sees was selected using the cells it is scored on (``hvg_on_all_cells=True`` restores the
literature protocol). Every (group, model, seed) becomes one block of a long result table.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from mtpert.data.pp import prepare
from mtpert.data.spec import DEFAULT_MIN_CELLS, DatasetSpec
from mtpert.data.split import Split, Target, eligible_groups, heldout_mask, holdout_group
from mtpert.metrics import evaluate
from mtpert.models.base import PerturbationModel
from mtpert.models.registry import get_model

ProgressCallback = Callable[[str], None]


@dataclass(frozen=True)
class Prediction:
    """One model's prediction for one held-out target, with the cells it is scored against."""

    target: Target
    model: str
    seed: int
    control: AnnData
    truth: AnnData
    pred: AnnData


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so a run is repeatable on CPU."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class FitResult:
    """What fitting one model under one seed and scoring it on a split's targets produced."""

    model: PerturbationModel
    scores: pd.DataFrame
    predictions: tuple[Prediction, ...]
    fit_seconds: float
    predict_seconds: float


def fit_and_score(
    data: AnnData, split: Split, spec: DatasetSpec, name: str, seed: int, params: Mapping[str, Any] | None = None
) -> FitResult:
    """Fit model ``name`` on ``split``'s training cells under ``seed`` and score every target.

    ``data`` is prepared (log-normalized, HVGs chosen without the held-out cells). The scores are
    the evaluation suite's long table, one block per target, with the target's ids and cell counts.
    """
    seed_everything(seed)
    model = get_model(name)(spec, **(params or {}))
    start = time.perf_counter()
    model.fit(split.subset(data, "train"), split.subset(data, "val"))
    fit_seconds = time.perf_counter() - start
    blocks, predictions, predict_seconds = [], [], 0.0
    for target in split.targets:
        control, truth = data[target.control], data[target.truth]
        start = time.perf_counter()
        pred = model.predict(control, target.condition, target.dose)
        predict_seconds += time.perf_counter() - start
        predictions.append(Prediction(target, name, seed, control, truth, pred))
        blocks.append(target_scores(target, evaluate(control, truth, pred, seed=seed)))
    return FitResult(model, pd.concat(blocks, ignore_index=True), tuple(predictions), fit_seconds, predict_seconds)


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


def prepare_holdout(
    adata: AnnData, spec: DatasetSpec, group: str, *, n_hvg: int = 2000, hvg_on_all_cells: bool = False
) -> AnnData:
    """``adata`` log-normalized over HVGs chosen without ``group``'s perturbed cells (unless
    ``hvg_on_all_cells``, the literature protocol)."""
    exclude = None if hvg_on_all_cells else heldout_mask(adata, spec, group)
    return prepare(adata, spec, n_hvg=n_hvg, exclude=exclude)


def run_holdout(
    adata: AnnData,
    spec: DatasetSpec,
    models: Sequence[str],
    *,
    groups: Iterable[str] | None = None,
    seeds: Sequence[int] = (1, 2, 19193),
    n_hvg: int = 2000,
    hvg_on_all_cells: bool = False,
    min_cells: int = DEFAULT_MIN_CELLS,
    model_params: dict[str, dict] | None = None,
    on_progress: ProgressCallback | None = None,
    on_prediction: Callable[[Prediction], None] | None = None,
) -> pd.DataFrame:
    """Hold out each group in turn, fit every model under every seed, and score its prediction.

    In memory and sequential; :func:`mtpert.benchmark.run_benchmark` runs the same grid resumably,
    in parallel, with a report.

    Args:
        adata: raw counts or log-normalized data over all genes.
        models: registered model names (see :func:`mtpert.models.list_models`).
        groups: groups of ``spec.cell_type_key`` to hold out; default every group with at least
            ``min_cells`` control and perturbed cells.
        seeds: each seed fixes the train/validation split and the model's initialization.
        model_params: optional hyperparameters per model name.
        on_progress: called with a short message after each fitted model.
        on_prediction: called with every :class:`Prediction`, e.g. to plot or save it.

    Returns:
        Long table: one row per (group, condition, dose, model, seed, metric) with columns
        ``value``, ``spread``, ``fit_seconds`` and ``predict_seconds``.
    """
    model_params = model_params or {}
    if groups is None:
        table = eligible_groups(adata, spec, min_cells=min_cells)
        groups = table.index[table["eligible"]].tolist()
    blocks = []
    for group in groups:
        data = prepare_holdout(adata, spec, group, n_hvg=n_hvg, hvg_on_all_cells=hvg_on_all_cells)
        for seed in seeds:
            split = holdout_group(data, spec, group, seed=seed, min_cells=min_cells)
            for name in models:
                result = fit_and_score(data, split, spec, name, seed, model_params.get(name))
                if on_prediction is not None:
                    for prediction in result.predictions:
                        on_prediction(prediction)
                blocks.append(
                    result.scores.assign(
                        model=name,
                        seed=seed,
                        fit_seconds=result.fit_seconds,
                        predict_seconds=result.predict_seconds,
                    )
                )
                if on_progress is not None:
                    on_progress(f"{group} | {name} | seed {seed}")
    id_columns = ["group", "condition", "dose", "model", "seed", "n_control", "n_truth"]
    result = pd.concat(blocks, ignore_index=True)
    return result[id_columns + [c for c in result.columns if c not in id_columns]]


def summarize(results: pd.DataFrame, *, by: Sequence[str] = ("model",)) -> pd.DataFrame:
    """Mean and standard deviation of each metric over groups and seeds: rows ``by``, columns metrics."""
    return results.pivot_table(index=list(by), columns="metric", values="value", aggfunc=["mean", "std"])
