"""Score models on held-out groups: prepare without leakage, split, fit, predict, evaluate.

For each held-out group the HVGs are chosen without that group's perturbed cells, so nothing a
model sees was selected using the cells it is scored on (``hvg_on_all_cells=True`` restores the
literature protocol). Every (group, model, seed) becomes one block of a long result table.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from mtpert.data.pp import prepare
from mtpert.data.spec import DEFAULT_MIN_CELLS, DatasetSpec
from mtpert.data.split import Target, eligible_groups, heldout_mask, holdout_group
from mtpert.metrics import evaluate
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
        exclude = None if hvg_on_all_cells else heldout_mask(adata, spec, group)
        data = prepare(adata, spec, n_hvg=n_hvg, exclude=exclude)
        for seed in seeds:
            split = holdout_group(data, spec, group, seed=seed, min_cells=min_cells)
            train, val = split.subset(data, "train"), split.subset(data, "val")
            for name in models:
                seed_everything(seed)
                model = get_model(name)(spec, **model_params.get(name, {}))
                start = time.perf_counter()
                model.fit(train, val)
                fit_seconds = time.perf_counter() - start
                for target in split.targets:
                    start = time.perf_counter()
                    control, truth = data[target.control], data[target.truth]
                    pred = model.predict(control, target.condition, target.dose)
                    predict_seconds = time.perf_counter() - start
                    scores = evaluate(control, truth, pred, seed=seed)
                    if on_prediction is not None:
                        on_prediction(Prediction(target, name, seed, control, truth, pred))
                    blocks.append(
                        scores.assign(
                            group=group,
                            condition=target.condition,
                            dose=target.dose,
                            model=name,
                            seed=seed,
                            n_control=len(target.control),
                            n_truth=len(target.truth),
                            fit_seconds=fit_seconds,
                            predict_seconds=predict_seconds,
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
