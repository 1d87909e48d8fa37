"""One resumable command for a whole benchmark: expand the grid, skip what is done, run the rest."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from mtpert.benchmark.executors import Executor, LocalExecutor, RunFailure, Task, load
from mtpert.benchmark.grid import BenchmarkConfig, Grid, expand
from mtpert.benchmark.store import ResultStore, RunResult
from mtpert.data.fingerprint import data_sha256
from mtpert.io import write_table

log = logging.getLogger("mtpert.benchmark")


@dataclass(frozen=True)
class Plan:
    """What an invocation will do: the grid, and the runs of it not yet finished."""

    config: BenchmarkConfig
    grid: Grid
    todo: tuple[Task, ...]
    store: ResultStore

    @property
    def n_done(self) -> int:
        return len(self.grid.runs) - len(self.todo)


def run_benchmark(
    config: BenchmarkConfig,
    out: str | os.PathLike[str],
    *,
    executor: Executor | None = None,
    on_plan: Callable[[Plan], None] | None = None,
    on_result: Callable[[RunResult], None] | None = None,
    on_failure: Callable[[RunFailure], None] | None = None,
) -> ResultStore:
    """Run every unfinished run of ``config`` with ``executor`` (default: one at a time, here),
    saving each as it finishes to the benchmark directory ``out``.

    Rerunning the same call resumes: finished runs are skipped, and run files that do not read
    back whole are moved aside and redone (:class:`~mtpert.benchmark.store.ResultStore`). ``out``
    is refused if it holds results of other data. Held-out groups too small to score are logged
    and skipped. A run that raises is logged, its traceback kept in
    ``out/failed/<run id>.txt`` and ``on_failure`` called; the grid goes on, and a rerun retries
    it. Returns the store, e.g. for :func:`mtpert.benchmark.write_report`.
    """
    adata = load(config.data)
    grid = expand(config, adata)
    for group, reason in grid.skipped["reason"].items():
        log.warning("skipping held-out group '%s': %s", group, reason)
    store = ResultStore(out)
    with store.open(dataclasses.replace(config, showcase=grid.showcase), data_sha256(adata)) as merged:
        todo = tuple(
            Task(run, config.data, grid.keeps_prediction(run, config), config.save_models)
            for run in grid.runs
            if not store.done(run)
        )
        write_table(grid.skipped.reset_index(), store.root / "skipped.csv")
        plan = Plan(merged, grid, todo, store)
        if on_plan is not None:
            on_plan(plan)
        for result in (executor or LocalExecutor()).map(todo):
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
