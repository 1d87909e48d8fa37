"""Hyperparameter search without leakage: an Optuna study whose trials are scored on the
training data alone.

A trial fits the model with suggested hyperparameters once per *inner* held-out target, taken
from the cells the model may train on: leave-one-group-out over the training groups (or, for the
other splits, held-out training conditions or combinations), each scored with one metric of the
evaluation suite, averaged. The cells of the benchmark's own held-out target are never given to
:func:`tune`, so nothing about them can reach the choice. Inner folds reuse the outer fold's genes.

Studies persist in a journal file (Optuna's ``JournalFileBackend``): a killed study resumes with
its finished trials kept, and several processes can add trials to one study (``jobs``). TPE
samples the space (seeded); a trial whose running mean over the inner targets is worse than the
median of earlier trials at the same point is pruned. Optuna is an optional dependency:
``pip install 'mtpert[tune]'``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, get_type_hints

import numpy as np
import pandas as pd
from anndata import AnnData
from pydantic import Field, TypeAdapter, ValidationError

from mtpert.data.folds import Holdout, SplitKind
from mtpert.data.spec import DEFAULT_MIN_CELLS, DatasetSpec
from mtpert.data.split import Split, eligible_conditions, eligible_groups, predictable_combinations
from mtpert.errors import ConfigError, DataError, MissingDependencyError
from mtpert.io import atomic_write
from mtpert.lock import process_alive, this_host
from mtpert.metrics.registry import METRICS
from mtpert.models.registry import get_model
from mtpert.models.search import Choice, Distribution, FloatRange, IntRange, read_space
from mtpert.scoring import fit_and_score

if TYPE_CHECKING:
    import optuna

__all__ = [
    "TUNE",
    "TuneSettings",
    "TuningResult",
    "free_space",
    "inner_splits",
    "read_settings",
    "tune",
]

_Settings = TypeVar("_Settings")

TUNE = "tune"
"""The key of a benchmark model's tuning settings among its parameters:
``models: {mtae_tuned: {model: mtae, tune: {trials: 30}}}``."""

log = logging.getLogger("mtpert.tune")

FINISHED = ("COMPLETE", "PRUNED", "FAIL")
"""Trial states that count towards a study's budget (a trial that failed would fail again)."""
INTERRUPTED = "mtpert_interrupted"
"""User attribute of a trial left running by a killed process (marked failed, run again)."""
RUNNER = "mtpert_process"
"""User attribute of a trial: ``{"host": ..., "pid": ...}`` of the process running it, recorded
as it starts, so that a study resumed beside it tells a trial still running from one whose
process is gone."""


@dataclass(frozen=True)
class TuneSettings:
    """How to tune one model, as a benchmark config's ``tune:`` or ``mtpert tune`` reads it.

    Attributes:
        trials: trials in the study (a resumed study runs only those it lacks).
        metric: the evaluation-suite metric a trial is scored on (mean over inner targets);
            its direction comes from the metric.
        inner_folds: inner held-out targets per trial (training groups, conditions or
            combination draws); fewer where the training data have fewer.
        space: overrides of the model's declared search space (:mod:`mtpert.models.search`):
            ranges and choices to tune, fixed values to hold.
        pruning: stop a trial early when its running mean is below the median of earlier trials.
        timeout: seconds after which no new trial starts (None: no limit).
    """

    trials: Annotated[int, Field(ge=1)] = 20
    metric: str = "r2_top100"
    inner_folds: Annotated[int, Field(ge=1)] = 3
    space: Mapping[str, Any] = field(default_factory=dict)
    pruning: bool = True
    timeout: Annotated[float, Field(gt=0)] | None = None

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ConfigError(f"tune.metric '{self.metric}' is not a metric; choose one of {sorted(METRICS)}.")
        if METRICS[self.metric].scope != "per_target":
            raise ConfigError(f"tune.metric '{self.metric}' is not scored per target; choose one that is, e.g. r2_top100.")
        read_space(self.space, where="tune.space")  # refuse a malformed space before any work

    @classmethod
    def read(cls, value: Mapping[str, Any] | int | TuneSettings) -> TuneSettings:
        """Settings from a mapping (a config's ``tune:``), or a number of trials."""
        if isinstance(value, TuneSettings):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            value = {"trials": value}
        return read_settings(cls, value, where=TUNE, example="{trials: 20} or a number of trials")

    def to_dict(self) -> dict[str, Any]:
        return {"trials": self.trials, "metric": self.metric, "inner_folds": self.inner_folds,
                "space": dict(self.space), "pruning": self.pruning, "timeout": self.timeout}  # fmt: skip



def read_settings(cls: type[_Settings], value: Any, *, where: str, example: str = "{}") -> _Settings:
    """Dataclass ``cls`` from a config's mapping, each value checked against its field's type
    (converted where that is lossless); one :class:`ConfigError` naming every bad key."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a mapping such as {example}, got {value!r}.")
    hints = get_type_hints(cls, include_extras=True)
    unknown = sorted(set(value) - set(hints))
    if unknown:
        raise ConfigError(f"{where}: unknown settings {unknown}; the settings are {sorted(hints)}.")
    checked, problems = {}, []
    for name, given in value.items():
        try:
            checked[name] = TypeAdapter(hints[name]).validate_python(given)
        except ValidationError as error:
            problems += [f"{where}.{name}: {given!r} is not valid: {e['msg']}" for e in error.errors()]
    if problems:
        raise ConfigError("; ".join(problems))
    return cls(**checked)


@dataclass(frozen=True)
class TuningResult:
    """What a study found.

    Attributes:
        best_params: the hyperparameters of the best trial, with the values held fixed.
        best_value: its mean metric over the inner targets.
        trials: one row per trial: ``number``, ``state``, ``value``, ``seconds`` and one column
            per tuned hyperparameter.
        inner_targets: what each trial held out (group names, condition labels or split seeds).
        fixed: the names in ``best_params`` held fixed in every trial (by the caller's
            ``params`` or a value in the space), not tuned.
    """

    model: str
    metric: str
    higher_is_better: bool
    best_params: dict[str, Any]
    best_value: float
    trials: pd.DataFrame
    inner_targets: tuple[str, ...]
    seconds: float
    fixed: tuple[str, ...] = ()


def tune(
    data: AnnData,
    spec: DatasetSpec,
    model: str,
    *,
    settings: TuneSettings | Mapping[str, Any] | int = TuneSettings(),
    params: Mapping[str, Any] | None = None,
    registered: str | None = None,
    kind: SplitKind = "group",
    group_key: str | None = None,
    fraction: float = 0.5,
    seed: int = 0,
    min_cells: int = DEFAULT_MIN_CELLS,
    storage: str | os.PathLike[str] | None = None,
    jobs: int = 1,
    on_trial: Callable[[int, int], None] | None = None,
) -> TuningResult:
    """Tune ``model`` on ``data`` (log-normalized; only cells the model may train on: leave the
    held-out target's cells out) by an Optuna study over its search space.

    Args:
        model: the name results are reported under; ``registered``: the registered model it is,
            where it is a named variant.
        settings: :class:`TuneSettings`, a mapping of them, or a number of trials.
        params: hyperparameters held fixed in every trial, never tuned (e.g. ``--set``).
        kind, group_key, fraction: the split of the inner targets, as the benchmark's
            (:class:`~mtpert.data.Holdout`): ``group`` holds out each of
            ``inner_folds`` training groups in turn, ``condition`` training conditions,
            ``combination`` a ``fraction`` of the training combinations per draw.
        seed: seeds the inner splits, every trial's fit and the sampler.
        storage: journal file of the study: a study there is resumed (and refused if it was made
            with other settings); None keeps it in memory.
        jobs: processes adding trials at once (each single-threaded); needs ``storage`` or uses
            a temporary journal.
        on_trial: called with (finished trials, total) after each trial, e.g. for a progress bar.

    Raises:
        ConfigError: nothing to tune, a malformed space, a study at ``storage`` made otherwise.
        DataError: no training target can be held out for the inner folds.
        MissingDependencyError: Optuna is not installed.
    """
    optuna = _optuna()
    settings = TuneSettings.read(settings)
    start = time.perf_counter()
    objective = Objective.build(data, spec, model, settings, params or {}, registered, kind, group_key, fraction, seed, min_cells)
    study_name = f"mtpert:{model}"
    with _journal(storage, jobs) as journal:
        study = _open_study(optuna, journal, study_name, objective, settings, seed)
        todo = settings.trials - _finished(study)
        if todo > 0 and jobs > 1:
            shares = [todo // jobs + (i < todo % jobs) for i in range(jobs)]
            with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
                futures = [
                    pool.submit(_optimize_share, objective, str(journal), study_name, share, seed + 1 + i, settings)
                    for i, share in enumerate(shares) if share
                ]  # fmt: skip
                for future in futures:
                    future.result()
            study = optuna.load_study(study_name=study_name, storage=_storage(optuna, journal))
        elif todo > 0:
            callbacks = [] if on_trial is None else [lambda s, t: on_trial(_finished(s), settings.trials)]
            study.optimize(objective, n_trials=todo, timeout=settings.timeout, catch=(Exception,), callbacks=callbacks)
        return _result(study, objective, settings, time.perf_counter() - start)


@dataclass(frozen=True, eq=False)
class Objective:
    """One trial: fit the model with suggested hyperparameters on each inner split and return
    the mean metric (picklable, so that worker processes can run trials)."""

    data: AnnData
    spec: DatasetSpec
    model: str
    registered: str | None
    params: Mapping[str, Any]
    space: Mapping[str, Distribution]
    splits: tuple[tuple[str, Split], ...]
    metric: str
    seed: int
    quiet: Mapping[str, Any] = field(default_factory=dict)
    """Runtime options of every trial's fit that change how it reports, not what it learns."""

    @classmethod
    def build(
        cls, data: AnnData, spec: DatasetSpec, model: str, settings: TuneSettings, params: Mapping[str, Any],
        registered: str | None, kind: SplitKind, group_key: str | None, fraction: float, seed: int, min_cells: int,
    ) -> Objective:  # fmt: skip
        """The objective of tuning ``model`` on ``data``: its space (declared, then the user's,
        less what ``params`` and the space hold fixed: :func:`free_space`) and the inner splits."""
        preset = get_model(registered or model)
        accepted = preset.cls.parameters()
        try:
            declared = preset(spec, **params).search_space()
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{model}: {error}") from error
        space, fixed = free_space(model, declared, settings, params)
        unknown = sorted((set(space) | set(fixed)) - set(accepted))
        if unknown:
            raise ConfigError(f"tune.space names {unknown}, which {model} does not take; see `mtpert models`.")
        data = data.copy() if data.is_view else data
        splits = inner_splits(data, spec, kind, settings.inner_folds, group_key=group_key, fraction=fraction, seed=seed, min_cells=min_cells)
        quiet = {"progress": False} if "progress" in accepted else {}
        params = {k: v for k, v in {**params, **fixed}.items() if k not in quiet}
        return cls(data, spec, model, registered, params, space, splits, settings.metric, seed, quiet)

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr(RUNNER, {"host": this_host(), "pid": os.getpid()})
        params = {**self.params, **suggest(trial, self.space), **self.quiet}
        values = []
        for step, (_, split) in enumerate(self.splits):
            result = fit_and_score(self.data, split, self.spec, self.model, self.seed, params, registered=self.registered)
            scores = result.scores.loc[result.scores["metric"] == self.metric, "value"].to_numpy(dtype=float)
            values.append(float(np.nanmean(scores)) if np.isfinite(scores).any() else math.nan)
            trial.report(float(np.nanmean(values)), step)
            if trial.should_prune():
                import optuna

                raise optuna.TrialPruned()
        return float(np.nanmean(values)) if np.isfinite(values).any() else math.nan

    def fingerprint(self) -> dict[str, Any]:
        """What decides the study's results: refused on resume if it differs."""
        return {
            "model": self.model, "registered": self.registered, "params": _jsonable(self.params),
            "space": {k: repr(v) for k, v in self.space.items()}, "inner": [name for name, _ in self.splits],
            "metric": self.metric, "seed": self.seed, "cells": self.data.n_obs, "genes": self.data.n_vars,
        }  # fmt: skip


def free_space(
    model: str, declared: Mapping[str, Distribution], settings: TuneSettings, params: Mapping[str, Any]
) -> tuple[dict[str, Distribution], dict[str, Any]]:
    """What a study of ``model`` varies: its ``declared`` space and the ranges of
    ``settings.space``, less every hyperparameter held fixed, by a value in ``params`` (the
    user's: ``--set``, a benchmark's model parameters) or in ``settings.space``; and the values
    ``settings.space`` fixes.

    Raises:
        ConfigError: a hyperparameter both held by ``params`` and given a range; nothing left
            to tune, saying whether the model declares no space or every value is held.
    """
    tuned, fixed = read_space(settings.space, where="tune.space")
    both = sorted(set(tuned) & set(params))
    if both:
        raise ConfigError(
            f"{model}: {', '.join(both)} is set to a value (--set, or the model's parameters) and given a range in tune.space; "
            "keep one: the value holds it fixed, the range tunes it."
        )
    candidates = declared | tuned
    space = {k: v for k, v in candidates.items() if k not in params and k not in fixed}
    if not candidates:
        raise ConfigError(
            f"{model} has nothing to tune: it declares no search space. Give ranges under tune.space, "
            "e.g. {lr: {low: 1e-4, high: 1e-2, log: true}}, or leave tune out."
        )
    if not space:
        raise ConfigError(
            f"{model} has nothing to tune: every hyperparameter it would tune ({', '.join(candidates)}) is held fixed "
            "(by --set, the model's parameters or a value in tune.space). Free one of them, or fit the model with these "
            "values instead of tuning it."
        )
    return space, fixed


def inner_splits(
    data: AnnData,
    spec: DatasetSpec,
    kind: SplitKind,
    folds: int,
    *,
    group_key: str | None = None,
    fraction: float = 0.5,
    seed: int = 0,
    min_cells: int = DEFAULT_MIN_CELLS,
) -> tuple[tuple[str, Split], ...]:
    """Up to ``folds`` held-out targets drawn (by ``seed``) from ``data``: training groups,
    conditions, or draws of combinations, named as a benchmark names its targets."""
    rng = np.random.default_rng(seed)
    if kind == "combination":
        if not predictable_combinations(data, spec, min_cells=min_cells):
            raise DataError("No combination of the training data can be held out for tuning (each needs its parts measured alone).")
        holdouts = [Holdout(str(k), "combination", fraction=fraction) for k in range(1, folds + 1)]
    elif kind == "group":
        table = eligible_groups(data, spec, group_key=group_key, min_cells=min_cells)
        names = sorted(table.index[table["eligible"]].astype(str))
        if len(names) < 2:
            raise DataError(
                f"Tuning holds out training groups in turn, but {len(names)} of them ({names}) has enough control and "
                f"perturbed cells (min_cells={min_cells}); a model cannot be tuned without leakage on these data."
            )
        chosen = sorted(str(g) for g in rng.choice(names, size=min(folds, len(names)), replace=False))
        holdouts = [Holdout(g, "group", group_key=group_key) for g in chosen]
    else:
        table = eligible_conditions(data, spec, group_key=group_key, min_cells=min_cells)
        labels = list(table.index[table["eligible"]])
        if not labels:
            raise DataError(f"No training condition can be held out for tuning (min_cells={min_cells}).")
        chosen = sorted(str(c) for c in rng.choice(labels, size=min(folds, len(labels)), replace=False))
        holdouts = [Holdout(table.at[c, "condition"], "condition", dose=table.at[c, "dose"], group_key=group_key) for c in chosen]
    return tuple((h.target if h.dose is None else f"{h.target}@{h.dose}", h.split(data, spec, seed=seed, min_cells=min_cells)) for h in holdouts)


def suggest(trial: optuna.Trial, space: Mapping[str, Distribution]) -> dict[str, Any]:
    """One value per hyperparameter of ``space``, drawn by ``trial`` (choices travel as JSON text,
    since Optuna's categorical values must be scalars)."""
    values: dict[str, Any] = {}
    for name, dist in space.items():
        if isinstance(dist, FloatRange):
            values[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log)
        elif isinstance(dist, IntRange):
            values[name] = trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            values[name] = _decoded(trial.suggest_categorical(name, [json.dumps(v) for v in dist.values]))
    return values


# ---------------------------------------------------------------------------- studies
def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise MissingDependencyError("Tuning needs Optuna: pip install 'mtpert[tune]'.") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


@contextmanager
def _journal(storage: str | os.PathLike[str] | None, jobs: int) -> Iterator[Path | None]:
    """The study's journal file: ``storage``, a temporary one for parallel trials, or None (in
    memory)."""
    if storage is None and jobs > 1:
        with tempfile.TemporaryDirectory(prefix="mtpert-tune-") as tmp:
            yield Path(tmp) / "study.journal"
        return
    if storage is not None:
        Path(storage).parent.mkdir(parents=True, exist_ok=True)
        _cut_torn_end(Path(storage))
    yield None if storage is None else Path(storage)


def _cut_torn_end(journal: Path) -> None:
    """Cut the end of a journal torn by a process killed mid-write (Optuna could not read it),
    keeping the whole file beside it as ``<name>.damaged``; the trials before the tear stay."""
    if not journal.is_file():
        return
    raw = journal.read_bytes()
    whole = 0
    for line in raw.splitlines(keepends=True):
        try:
            json.loads(line)
        except ValueError:
            break
        if not line.endswith(b"\n"):
            break
        whole += len(line)
    if whole == len(raw):
        return
    kept = journal.with_name(journal.name + ".damaged")
    atomic_write(kept, lambda f: f.write(raw))
    atomic_write(journal, lambda f: f.write(raw[:whole]))
    log.warning("%s ended in a torn record (a killed process?); cut it there, the whole file is kept as %s", journal, kept)


def _storage(optuna: Any, journal: Path | None) -> Any:
    if journal is None:
        return None
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(journal)))


def _open_study(optuna: Any, journal: Path | None, name: str, objective: Objective, settings: TuneSettings, seed: int) -> Any:
    """Create the study, or resume the one in ``journal`` if it was made with the same settings
    (trials left running by a killed process are marked failed)."""
    storage = _storage(optuna, journal)
    direction = "maximize" if METRICS[objective.metric].higher_is_better else "minimize"
    try:
        study = optuna.create_study(
            study_name=name, storage=storage, direction=direction, load_if_exists=True,
            sampler=optuna.samplers.TPESampler(seed=seed + _trials_in(storage, name)),  # a resumed study draws anew
            pruner=optuna.pruners.MedianPruner(n_startup_trials=5) if settings.pruning else optuna.pruners.NopPruner(),
        )  # fmt: skip
    except (ValueError, OSError) as error:
        raise ConfigError(f"Cannot open the tuning study in {journal}: {error}") from error
    fingerprint = objective.fingerprint()
    saved = study.user_attrs.get("mtpert")
    if saved is None:
        study.set_user_attr("mtpert", fingerprint)
    elif saved != _jsonable(fingerprint):
        changed = sorted(k for k in fingerprint if saved.get(k) != _jsonable(fingerprint[k]))
        raise ConfigError(
            f"The tuning study in {journal} was made with other settings ({', '.join(changed)} differ); "
            "remove it to start over, or tune into another folder."
        )
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if _abandoned(trial, journal):  # not counted: it is run again
            study._storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)
            study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    return study


def _abandoned(trial: optuna.trial.FrozenTrial, journal: Path | None) -> bool:
    """Whether running ``trial`` was left by a process that has ended: one of this host whose
    PID is gone, or one that never recorded itself (an mtpert before trials recorded their
    process; a trial records it first thing). This process runs no trial while it opens a
    study, so one it recorded was interrupted (e.g. in a notebook). A trial another host runs
    is left alone (its process cannot be checked from here), and said so."""
    runner = trial.user_attrs.get(RUNNER)
    if not isinstance(runner, dict):
        return True
    if runner.get("host") != this_host():
        log.warning(
            "trial %d of the study in %s runs on %s (PID %s), whose processes cannot be checked "
            "from here; it is left running (it does not count towards the trials)",
            trial.number, journal, runner.get("host"), runner.get("pid"),
        )  # fmt: skip
        return False
    return runner.get("pid") == os.getpid() or not process_alive(int(runner["pid"]))


def _trials_in(storage: Any, name: str) -> int:
    """Trials already in study ``name`` of ``storage`` (0 for a new study or in memory)."""
    if storage is None:
        return 0
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return 0
    return len(storage.get_all_trials(study_id, deepcopy=False))


def _optimize_share(objective: Objective, journal: str, name: str, trials: int, seed: int, settings: TuneSettings) -> None:
    """A worker process's share of the trials, single-threaded, with its own sampler seed."""
    import torch

    torch.set_num_threads(1)
    optuna = _optuna()
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5) if settings.pruning else optuna.pruners.NopPruner()
    study = optuna.load_study(study_name=name, storage=_storage(optuna, Path(journal)), sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner)
    study.optimize(objective, n_trials=trials, timeout=settings.timeout, catch=(Exception,))


def _finished(study: Any) -> int:
    """Trials that count towards the budget: finished ones, not those a killed process left."""
    return sum(t.state.name in FINISHED and not t.user_attrs.get(INTERRUPTED) for t in study.get_trials(deepcopy=False))


def _result(study: Any, objective: Objective, settings: TuneSettings, seconds: float) -> TuningResult:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None and math.isfinite(t.value)]
    if not complete:
        failed = [t for t in trials if t.state.name == "FAIL"]
        why = failed[-1].system_attrs.get("fail_reason", "no value") if failed else "none finished"
        raise ConfigError(f"Tuning {objective.model}: no trial of {len(trials)} finished with a value (last failure: {why}).")
    best = study.best_trial
    trials = [t for t in trials if not t.user_attrs.get(INTERRUPTED)]
    table = pd.DataFrame(
        [
            {"number": t.number, "state": t.state.name, "value": t.value,
             "seconds": t.duration.total_seconds() if t.duration else math.nan,
             **{k: _decoded(v) if isinstance(objective.space[k], Choice) else v for k, v in t.params.items()}}
            for t in trials
        ]
    )  # fmt: skip
    best_params = {**objective.params, **{k: _decoded(v) if isinstance(objective.space[k], Choice) else v for k, v in best.params.items()}}
    return TuningResult(
        objective.model, objective.metric, METRICS[objective.metric].higher_is_better, best_params, float(best.value),
        table, tuple(name for name, _ in objective.splits), seconds, tuple(objective.params),
    )  # fmt: skip


def _decoded(value: Any) -> Any:
    """A choice's value back from its JSON text (lists as tuples, as models take widths)."""
    if not isinstance(value, str):
        return value
    decoded = json.loads(value)
    return tuple(decoded) if isinstance(decoded, list) else decoded


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
