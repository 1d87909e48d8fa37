"""One resumable command for a whole benchmark: expand the grid, skip what is done, run the rest."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pandas as pd
from anndata import AnnData

from mtpert.benchmark.executors import Executor, LocalExecutor, RunFailure, Task, in_memory, load
from mtpert.benchmark.grid import BenchmarkConfig, Grid, expand
from mtpert.benchmark.store import MemoryStore, ResultStore, RunResult
from mtpert.data.fingerprint import data_sha256
from mtpert.data.spec import DEFAULT_MIN_CELLS, DatasetSpec
from mtpert.errors import ConfigError
from mtpert.scoring import Prediction

Store = ResultStore | MemoryStore
ProgressCallback = Callable[[str], None]
"""Called with a short message after each fitted model."""

log = logging.getLogger("mtpert.benchmark")

TUNING_DIR = "tuning"
"""Folder of a benchmark directory holding the tuning studies of runs that tune."""


@dataclass(frozen=True)
class Plan:
    """What an invocation will do: the grid, and the runs of it not yet finished."""

    config: BenchmarkConfig
    grid: Grid
    todo: tuple[Task, ...]
    store: Store

    @property
    def n_done(self) -> int:
        return len(self.grid.runs) - len(self.todo)


def run_benchmark(
    config: BenchmarkConfig,
    out: str | os.PathLike[str] | Store,
    *,
    adata: AnnData | None = None,
    executor: Executor | None = None,
    on_plan: Callable[[Plan], None] | None = None,
    on_result: Callable[[RunResult], None] | None = None,
    on_failure: Callable[[RunFailure], None] | None = None,
    rescore: bool = False,
) -> Store:
    """Run every unfinished run of ``config`` with ``executor`` (default: one at a time, here),
    saving each as it finishes to the benchmark directory ``out`` (or to a store object, such as
    a :class:`~mtpert.benchmark.store.MemoryStore`).

    Rerunning the same call resumes: finished runs are skipped, and run files that do not read
    back whole, or whose model's effective hyperparameters have changed since, are moved aside
    and redone (:class:`~mtpert.benchmark.store.ResultStore`). ``out``
    is refused if it holds results of other data. Held-out groups too small to score are logged
    and skipped. A run that raises is logged, its traceback kept in
    ``out/failed/<run id>.txt`` and ``on_failure`` called; the grid goes on, and a rerun retries
    it. Returns the store, e.g. for :func:`mtpert.benchmark.write_report`.

    ``adata``: the data itself, instead of reading ``config.data`` (which then only names it);
    runs must execute in this process (the default executor).

    ``rescore``: also redo the finished runs that hold values of a metric whose definition has
    changed since (:attr:`mtpert.metrics.Metric.version`; the report leaves those values out).
    """
    executor = executor or LocalExecutor()
    if adata is not None and not executor.in_process:
        raise ConfigError("Data given as an AnnData can only be run in this process (jobs=1); write it to an .h5ad to run it in parallel.")
    raw = load(config.data, config.dataset_spec()) if adata is None else adata
    digest = data_sha256(raw)
    grid = expand(config, raw)
    targets = grid.skipped if "model" not in grid.skipped else grid.skipped[grid.skipped["model"] == ""]
    for group, reason in targets["reason"].items():  # the models skipped were logged by expand
        log.warning("skipping held-out group '%s': %s", group, reason)
    store = ResultStore(out) if isinstance(out, str | os.PathLike) else out
    key = config.data if adata is None else f"in-memory:{digest}"
    with store.open(dataclasses.replace(config, showcase=grid.showcase), digest) as merged, _provided(adata, key):
        tuning = str(store.root / TUNING_DIR) if isinstance(store, ResultStore) else None
        store.retire_superseded(grid.runs, rescore=rescore)
        todo = tuple(
            Task(run, key, grid.keeps_prediction(run, config), config.save_models, tuning)
            for run in grid.runs
            if not store.done(run)
        )
        skipped_models = grid.skipped.get("model", [])
        store.write_skipped(grid.skipped, {run.model for run in grid.runs} | set(skipped_models))
        plan = Plan(merged, grid, todo, store)
        if on_plan is not None:
            on_plan(plan)
        for result in executor.map(todo):
            if isinstance(result, RunFailure):
                path = store.write_failure(result.run, result.error)
                log.error("%s failed: %s (traceback in %s); the other runs go on", result.run.label(), result.message, path)
                if on_failure is not None:
                    on_failure(result)
                continue
            store.write(result)
            log.info("finished %s (%s)", result.run.label(), result.run.id)
            if on_result is not None:
                on_result(result)
    return store


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
    model_params: Mapping[str, Mapping[str, Any]] | None = None,
    on_progress: ProgressCallback | None = None,
    on_prediction: Callable[[Prediction], None] | None = None,
) -> pd.DataFrame:
    """Hold out each group in turn, fit every model under every seed, and score its prediction:
    :func:`run_benchmark` on ``adata`` in this process, with nothing written to disk and no noise
    ceiling; a run's error is raised.

    Args:
        adata: raw counts or log-normalized data over all genes.
        models: registered model names (see :func:`mtpert.models.list_models`).
        groups: groups of ``spec.cell_type_key`` to hold out; default every group with at least
            ``min_cells`` control and perturbed cells.
        seeds: each seed fixes the train/validation split and the model's initialization.
        model_params: optional hyperparameters per model name.
        on_progress: called with a short message after each fitted model.
        on_prediction: called with every :class:`~mtpert.scoring.Prediction`, e.g. to
            plot or save it.

    Returns:
        The runs' long table (:func:`~mtpert.benchmark.executors.execute`): one row per (group,
        condition, dose, model, seed, metric) with ``value``, ``spread``, ``fit_seconds``,
        ``predict_seconds`` and the run's other costs.
    """
    config = BenchmarkConfig(
        data="in-memory", models=tuple(models), holdout="all" if groups is None else tuple(groups), seeds=tuple(seeds), spec=spec,
        n_hvg=n_hvg, hvg_on_all_cells=hvg_on_all_cells, min_cells=min_cells, model_params=dict(model_params or {}),
        noise_ceiling_repeats=0, save_predictions="none" if on_prediction is None else "all",
    )  # fmt: skip

    def report(result: RunResult) -> None:
        for prediction in result.predictions:
            on_prediction(prediction)  # type: ignore[misc]
        if on_progress is not None:
            on_progress(result.run.label())

    store = run_benchmark(config, MemoryStore(), adata=adata, executor=LocalExecutor(raise_errors=True), on_result=report)
    return store.results()


@contextmanager
def _provided(adata: AnnData | None, key: str) -> Iterator[None]:
    """Runs read ``adata`` under ``key`` while the block runs (nothing to do for data on disk)."""
    if adata is None:
        yield
        return
    with in_memory(adata, key):
        yield
