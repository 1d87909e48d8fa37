"""Where runs execute: in this process, in a local process pool, or on a Ray cluster.

Every executor calls the same :func:`execute` on each run and yields the results as they finish;
only the process that drives the benchmark writes to its directory.
"""

from __future__ import annotations

import inspect
import json
import multiprocessing
import os
import resource
import threading
import time
import traceback
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from multiprocessing.managers import SyncManager
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

import pandas as pd
import torch
from anndata import AnnData

from mtpert.benchmark.grid import NOISE_CEILING, RunSpec
from mtpert.benchmark.store import RunResult
from mtpert.data.folds import Holdout, fold_data
from mtpert.data.labels import normalize_labels
from mtpert.data.registry import load_dataset
from mtpert.data.spec import DatasetSpec
from mtpert.data.split import Split
from mtpert.errors import ConfigError, MissingDependencyError
from mtpert.models.base import PerturbationModel
from mtpert.models.registry import get_model
from mtpert.scoring import fit_and_score, noise_ceiling, rank_scores, target_scores
from mtpert.train.loop import on_epoch
from mtpert.tuning import TUNE, TuningResult, tune
from mtpert.uncertainty import (
    UNCERTAINTY,
    UncertaintySettings,
    calibrate,
    fit_ensemble,
    interval_scores,
)

QUIET = {"progress": False}
"""Constructor options that change how a model reports, not what it learns; set in workers."""


@dataclass(frozen=True)
class Task:
    """A run and what to keep of it besides its scores."""

    run: RunSpec
    data: str
    keep_prediction: bool = False
    keep_model: bool = False
    tuning_dir: str | None = None
    """Folder of the tuning studies of runs that tune (one journal per run id); None: in memory."""


@dataclass(frozen=True)
class RunFailure:
    """A run that raised: the grid goes on without it, and a rerun tries it again."""

    run: RunSpec
    error: str
    """The traceback, as text."""

    @property
    def message(self) -> str:
        """The exception's last line, e.g. ``ValueError: ...``."""
        return self.error.strip().splitlines()[-1]


class Executor(Protocol):
    in_process: bool
    """Whether runs execute in this process (and can read data given as an AnnData)."""
    jobs: int
    """Runs executed at once."""
    board: Mapping[str, str]
    """What each running run is doing (run id -> status), where the executor can tell."""

    def map(self, tasks: Iterable[Task]) -> Iterator[RunResult | RunFailure]:
        """Execute ``tasks`` and yield each result (or failure) as soon as it is ready (in any order)."""
        ...


def usable_cores() -> int:
    """CPU cores this process may run on (respects taskset and container CPU sets)."""
    return len(os.sched_getaffinity(0))


# ---------------------------------------------------------------------------- one run
def execute(task: Task) -> RunResult:
    """Prepare the data for ``task.run``'s held-out cells, fit and score (or compute the noise
    ceiling), and return its table with the run's costs; nothing is written here, but what the
    run is doing is posted on this process's board (see :class:`LocalExecutor`).

    Where a group has several conditions or doses, the table also holds the ``rank`` of each
    prediction among them (:func:`mtpert.scoring.rank_scores`).
    """
    with _posted(task.run.id):
        return _execute(task)


def _execute(task: Task) -> RunResult:
    run = task.run
    min_cells = run.prep["min_cells"]
    data = _prepared(task.data, run.spec, run.holdout, run.prep["n_hvg"], run.prep["hvg_on_all_cells"], min_cells)
    split = run.holdout.split(data, run.spec, seed=run.seed, min_cells=min_cells)
    _reset_peak_rss()
    start = time.perf_counter()
    costs: dict[str, Any] = {}
    predictions, models = (), {}
    if run.model == NOISE_CEILING:
        scores = noise_ceiling(data, split, run.seed, **run.model_params)
    else:
        params = {**run.model_params, **_quiet(run.registered_model)}
        uncertainty = params.pop(UNCERTAINTY, None)
        if TUNE in params:
            tuning = _tune(task, data, split, params)
            params = tuning.best_params
            costs |= {"tune_seconds": tuning.seconds, "tune_trials": float(len(tuning.trials)), "tune_value": tuning.best_value}
            costs["tuned_params"] = json.dumps({k: v for k, v in params.items() if k not in QUIET}, default=str)
        result = fit_and_score(
            data, split, run.spec, run.model, run.seed, params, one_dose_at_a_time=run.one_dose_at_a_time, registered=run.registered_model
        )
        ranks = rank_scores(data, run.spec, result.predictions, group_key=run.group_key, min_cells=min_cells)
        scores = pd.concat([result.scores, ranks], ignore_index=True) if len(ranks) else result.scores
        if uncertainty is not None:
            started = time.perf_counter()
            scores = pd.concat([scores, _intervals(task, data, split, params, result.models[None], uncertainty)], ignore_index=True)
            costs["uq_seconds"] = time.perf_counter() - started
        costs |= {"fit_seconds": result.fit_seconds, "predict_seconds": result.predict_seconds, **_fit_summary(result.models.values())}
        predictions = result.predictions if task.keep_prediction else ()
        models = {dose: m for dose, m in result.models.items() if task.keep_model and m.saveable}
        for model in result.models.values():
            if model not in models.values():
                model.close()  # a peer's process ends with its run
    costs |= {
        "run_seconds": time.perf_counter() - start,
        "peak_rss_mb": _peak_rss_mb(),
        "n_train": len(split.train),
        "n_val": len(split.val),
        "torch_threads": torch.get_num_threads(),
    }
    ids = {"run_id": run.id, "dataset": run.dataset, "split": run.split, "model": run.model, "seed": run.seed, "params": run.params}
    if run.split == "combination":  # which draw of held-out combinations (a pair may be held out by several)
        ids["split_seed"] = int(run.target)
    table = scores.assign(**ids, **costs)
    table = table[[*ids, *(c for c in table.columns if c not in ids)]]
    return RunResult(run, table, predictions, models)


def _tune(task: Task, data: AnnData, split: Split, params: dict[str, Any]) -> TuningResult:
    """Tune the run's model on the cells it may train on (never its held-out cells), its study in
    ``task.tuning_dir`` so that a killed run resumes it."""
    run = task.run
    settings = params.pop(TUNE)
    storage = None if task.tuning_dir is None else Path(task.tuning_dir) / f"{run.id}.journal"
    return tune(
        data[split.train.union(split.val)], run.spec, run.model, settings=settings, params=params,
        registered=run.registered_model, kind=run.split, group_key=run.group_key, fraction=run.holdout.fraction,
        seed=run.seed, min_cells=run.prep["min_cells"], storage=storage,
    )  # fmt: skip


def _intervals(task: Task, data: AnnData, split: Split, params: dict[str, Any], model: PerturbationModel, settings: dict[str, Any]) -> pd.DataFrame:
    """Calibrated intervals for each of the run's targets: a deep ensemble (the run's model and
    more seeds), calibrated on held-out training groups of the cells it may train on."""
    run, uq = task.run, UncertaintySettings.read(settings)
    seeds = [run.seed + 1000 * k for k in range(uq.members)]
    val = split.subset(data, "val")
    more = fit_ensemble(run.registered_model, run.spec, split.subset(data, "train"), val if val.n_obs else None, seeds=seeds[1:], params=params)
    calibration = calibrate(
        data[split.train.union(split.val)], run.spec, run.registered_model, seeds=seeds, params=params, kind=run.split,
        group_key=run.group_key, folds=uq.folds, dropout_draws=uq.dropout_draws, seed=run.seed, min_cells=run.prep["min_cells"],
    )  # fmt: skip
    blocks = [
        target_scores(t, interval_scores([model, *more], calibration, data[t.control], data[t.truth], t.condition, t.dose, uq, seed=run.seed))
        for t in split.targets
    ]
    return pd.concat(blocks, ignore_index=True)


_BOARD: MutableMapping[str, str] | None = None
"""Where runs in this process post what they are doing (set by the executor), or None."""


@contextmanager
def _posted(run_id: str) -> Iterator[None]:
    """Post the run as running, then each finished epoch of its fits, on this process's board;
    take it off when it ends."""
    board = _BOARD
    if board is None:
        yield
        return
    board[run_id] = "running"
    try:
        with on_epoch(lambda epoch, max_epochs: board.__setitem__(run_id, f"epoch {epoch}/{max_epochs}")):
            yield
    finally:
        board.pop(run_id, None)


def execute_or_fail(task: Task) -> RunResult | RunFailure:
    """:func:`execute`, with an error in the run returned as a :class:`RunFailure` (one model's
    bug or bad hyperparameter must not stop a grid of hundreds of runs)."""
    try:
        return execute(task)
    except Exception:  # noqa: BLE001 (any failure of one run is reported, and the grid goes on)
        return RunFailure(task.run, traceback.format_exc())


_IN_MEMORY: dict[str, AnnData] = {}
"""Data given to the benchmark as an AnnData (:func:`in_memory`), by key: only runs executed in
this process can read it."""


@contextmanager
def in_memory(adata: AnnData, key: str) -> Iterator[str]:
    """Make ``adata`` the data of tasks whose ``data`` is ``key`` while the block runs."""
    _IN_MEMORY[key] = adata
    try:
        yield key
    finally:
        del _IN_MEMORY[key]
        _load.cache_clear()
        _prepared_version.cache_clear()


def load(data: str, spec: DatasetSpec) -> AnnData:
    """The raw dataset, read once per process and version of its file with its labels in
    canonical form (:func:`~mtpert.data.normalize_labels`); or the AnnData given with
    :func:`in_memory`, as it is."""
    return _load(data, spec, _version(data))


def _version(data: str) -> tuple[int, int, int] | None:
    """What tells one content of the file ``data`` from another without reading it (inode, size,
    modification time), so that a file rewritten between two benchmarks in one process is read
    again, not served from the cache; None where ``data`` is not a file (a registered name)."""
    try:
        status = os.stat(data)
    except OSError:
        return None
    return (status.st_ino, status.st_size, status.st_mtime_ns)


@lru_cache(maxsize=1)
def _load(data: str, spec: DatasetSpec, version: tuple[int, int, int] | None) -> AnnData:
    if data in _IN_MEMORY:
        return _IN_MEMORY[data]
    adata = load_dataset(data)
    normalize_labels(adata, spec)
    return adata


def _prepared(data: str, spec: DatasetSpec, holdout: Holdout, n_hvg: int, hvg_on_all_cells: bool, min_cells: int) -> AnnData:
    """Data prepared for one held-out target, kept for the next run of the same target (of the
    same version of the data's file)."""
    return _prepared_version(data, spec, _version(data), holdout, n_hvg, hvg_on_all_cells, min_cells)


@lru_cache(maxsize=2)
def _prepared_version(
    data: str,
    spec: DatasetSpec,
    version: tuple[int, int, int] | None,
    holdout: Holdout,
    n_hvg: int,
    hvg_on_all_cells: bool,
    min_cells: int,
) -> AnnData:
    return fold_data(load(data, spec), spec, holdout, n_hvg=n_hvg, hvg_on_all_cells=hvg_on_all_cells, min_cells=min_cells)


def _fit_summary(models: Iterable[PerturbationModel]) -> dict[str, float]:
    """What the fitted model(s) of a run learned: parameters and epochs add up over a model per
    dose, final losses are averaged (one model: its own numbers)."""
    table = pd.DataFrame([m.fit_summary() for m in models])
    return {k: float(table[k].sum() if k in ("n_params", "epochs") else table[k].mean()) for k in table}


def _quiet(model: str) -> dict[str, object]:
    accepted = inspect.signature(get_model(model).cls.__init__).parameters
    return {k: v for k, v in QUIET.items() if k in accepted}


def _reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark (Linux), so the next reading is this run's own peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # elsewhere the reading is the process's peak so far


def _peak_rss_mb() -> float:
    """Peak resident memory (MiB) since :func:`_reset_peak_rss`, or of the process so far."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ---------------------------------------------------------------------------- executors
class LocalExecutor:
    """``jobs`` runs at a time on this machine, each with ``cores // jobs`` torch threads.

    ``jobs=1`` runs in this process; more use a pool of fresh (spawned) worker processes, each
    reading the data once and preparing it once per held-out group. ``raise_errors`` (only with
    ``jobs=1``): a run's exception propagates instead of becoming a :class:`RunFailure`.

    While :meth:`map` runs, :attr:`board` says what each running run is doing (run id ->
    ``"running"`` or ``"epoch 12/100"``), for a live view; it is shared with the workers.
    """

    def __init__(self, jobs: int = 1, *, raise_errors: bool = False) -> None:
        if jobs < 1:
            raise ConfigError(f"jobs must be >= 1, got {jobs}.")
        if raise_errors and jobs > 1:
            raise ConfigError("raise_errors needs jobs=1: errors in worker processes are reported as failed runs.")
        self.jobs = jobs
        self.threads = max(1, usable_cores() // jobs)
        self.raise_errors = raise_errors
        self.board: MutableMapping[str, str] = {}

    @property
    def in_process(self) -> bool:
        return self.jobs == 1

    def map(self, tasks: Iterable[Task]) -> Iterator[RunResult | RunFailure]:
        tasks = list(tasks)
        if self.jobs == 1:
            before = torch.get_num_threads()
            _start_worker(self.threads, self.board)
            try:
                yield from map(execute if self.raise_errors else execute_or_fail, tasks)
            finally:
                _start_worker(before, None)
            return
        context = multiprocessing.get_context("spawn")
        manager = SyncManager(ctx=context)
        manager.start(exit_when_orphaned)  # the board's process exits, like the workers, when orphaned
        with manager:
            self.board = manager.dict()
            pool = ProcessPoolExecutor(self.jobs, mp_context=context, initializer=_start_worker, initargs=(self.threads, self.board, True))
            try:
                pending = {pool.submit(execute_or_fail, t) for t in tasks}
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        yield future.result()
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
                self.board = {}


def _start_worker(threads: int, board: MutableMapping[str, str] | None, orphan_exit: bool = False) -> None:
    """Set up a process that executes runs: its torch threads, and the board its runs post on.

    ``orphan_exit`` (pool workers): exit as soon as the process that started this one is gone.
    A benchmark killed with SIGTERM or SIGKILL runs no clean-up, and its workers would otherwise
    go on computing runs nobody will save, holding the cores of the rerun that resumes it.
    """
    global _BOARD
    torch.set_num_threads(threads)
    _BOARD = board
    if orphan_exit:
        exit_when_orphaned()


def exit_when_orphaned(every: float = 1.0) -> None:
    """Watch, from a daemon thread, the id of this process's parent; once it changes (the parent
    died), exit at once."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="mtpert-orphan-exit").start()


class RayExecutor:
    """Each run as a Ray task of ``cpus_per_run`` CPUs, on the cluster ``address`` (default: the
    one in ``$RAY_ADDRESS``, else a local Ray started here). Workers read the data themselves:
    give a registered dataset name or a path every node can read.
    """

    in_process = False
    board: Mapping[str, str] = MappingProxyType({})  # Ray workers post nothing back while they run

    def __init__(self, address: str | None = None, cpus_per_run: int = 1) -> None:
        try:
            import ray
        except ImportError:
            raise MissingDependencyError("The Ray executor needs Ray: pip install 'mtpert[ray]' (or pip install ray).") from None
        if not ray.is_initialized():
            ray.init(address=address)
        self.ray = ray
        self.cpus_per_run = cpus_per_run

    @property
    def jobs(self) -> int:
        """Runs the cluster can hold at once."""
        return max(1, int(self.ray.cluster_resources().get("CPU", 1) // self.cpus_per_run))

    def map(self, tasks: Iterable[Task]) -> Iterator[RunResult | RunFailure]:
        ray = self.ray
        remote = ray.remote(num_cpus=self.cpus_per_run)(_execute_with_threads)
        pending = [remote.remote(t, self.cpus_per_run) for t in tasks]
        try:
            while pending:
                finished, pending = ray.wait(pending, num_returns=1)
                yield ray.get(finished[0])
        finally:
            for ref in pending:
                ray.cancel(ref)


def _execute_with_threads(task: Task, threads: int) -> RunResult | RunFailure:
    torch.set_num_threads(threads)
    return execute_or_fail(task)


def make_executor(kind: str, jobs: int = 1) -> Executor:
    """``'local'`` with ``jobs`` runs at a time, or ``'ray'`` (the cluster decides; one CPU per run)."""
    if kind == "local":
        return LocalExecutor(jobs)
    if kind == "ray":
        return RayExecutor()
    raise ConfigError(f"Unknown executor '{kind}'; use 'local' or 'ray'.")
