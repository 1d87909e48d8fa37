"""A benchmark directory: one result table per finished run, written atomically, and provenance.

Layout of ``DIR``::

    config.json          the benchmark's configuration (the union of resumed grids)
    environment.json     per invocation: id, time, mtpert version and git commit, the data's
                         fingerprint, packages, machine
    runs/<id>.parquet    one finished run: its scores (long table), its costs and its provenance
                         (.csv without pyarrow)
    predictions/<group>/<condition>[@<dose>]/cells.h5ad, <model>_seed<seed>.h5ad   kept predictions
                         (folder names: :func:`mtpert.io.safe_name` of the labels)
    models/<id>/         kept fitted models (see save_models)
    quarantine/          run files that did not read back whole, moved aside (their runs are redone)
    superseded/          run files of runs whose model's effective hyperparameters have changed
                         since (a default changed), moved aside; those runs are redone

A run's table is written last and atomically, so it exists only for a run that finished: a run
killed midway leaves nothing that resume would mistake for a result. Each table records how many
rows it has; a file truncated or damaged later (a full disk, a bad copy) is found on resume,
moved to ``quarantine/`` and its run redone. The directory is tied to the data's content
(:func:`mtpert.data.fingerprint.data_sha256`): resuming it on other data is refused.

A run's id covers its model's effective hyperparameters (:class:`~mtpert.benchmark.grid.RunSpec`),
and each table records them (``hparams``) and the run's place in the grid (``run_slot``). On
resume, a table in the place of a run of the grid but under another id was made with other
effective settings: it is moved to ``superseded/`` and the run redone, with one warning saying
how many. Tables written before effective settings were recorded are named by their place
(their id then) and have no ``hparams``: what their model took from defaults cannot be checked,
so they stand only for a run whose model takes nothing from defaults (its id is its place, as
for ``control`` or a model given every hyperparameter); the others are redone likewise.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import shutil
import subprocess
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.util import find_spec
from pathlib import Path

import anndata as ad
import pandas as pd

import mtpert
from mtpert.benchmark.grid import BenchmarkConfig, RunSpec, dataset_id
from mtpert.data.split import condition_label
from mtpert.errors import ConfigError
from mtpert.io import (
    atomic_path,
    atomic_write,
    safe_name,
    stale_temp_files,
    write_table,
)
from mtpert.lock import output_lock
from mtpert.metrics import METRICS
from mtpert.models.base import PerturbationModel
from mtpert.scoring import Prediction

log = logging.getLogger("mtpert.benchmark")

PACKAGES = ("numpy", "scipy", "pandas", "anndata", "scanpy", "scikit-learn", "torch", "pot", "matplotlib")
"""Packages whose versions decide results, recorded with every invocation."""

ROLE_KEY = "mtpert_role"
"""obs column of ``cells.h5ad`` saying whether a cell is a ``control`` or ``truth`` cell."""

ROW_COUNT = "run_rows"
"""Column of every run table holding its number of rows: a table that reads back with another
count (or none) was truncated or damaged."""

PROVENANCE = ("mtpert_version", "git_commit", "data_sha256", "invocation", "finished")
"""Columns of every run table saying which code, data and invocation made it, and when."""

IDENTITY = ("run_slot", "hparams")
"""Columns of every run table saying which place of the grid it fills, and with which effective
hyperparameters (those recorded before they were have neither)."""

METRIC_VERSION = "metric_version"
"""Column of every run table holding the version of each row's metric definition
(:attr:`mtpert.metrics.Metric.version`; tables written before it was recorded: version 1)."""

LEFT_OUT = "outdated_metrics"
"""Key of ``ResultStore.results().attrs``: the models whose values of each metric were left out,
scored before the metric's definition changed."""

GIT_CHANGES_SHOWN = 20
"""Changed paths of the source tree listed in an invocation's provenance (all are counted)."""

_OWN_FOLDERS = ("runs", "failed", "predictions", "models", "report")
"""Sub-folders the store writes; only in these (and the top level) are temporary files removed."""

_COMPARABLE = (
    "spec", "split", "group_key", "n_hvg", "hvg_on_all_cells", "min_cells", "noise_ceiling_repeats", "one_dose_at_a_time",
    "combination_fraction",
)  # fmt: skip
"""Settings every run of one directory must share for its results to be comparable."""


@dataclass(frozen=True)
class Invocation:
    """One command's provenance, stamped on every run it writes."""

    id: str
    started: str
    mtpert_version: str
    git_commit: str | None
    data_sha256: str
    git_changes: tuple[str, ...] = ()
    """Paths of the source tree that differ from ``git_commit`` (see :func:`git_state`)."""

    @classmethod
    def now(cls, data_sha256: str, output: Path) -> Invocation:
        """This invocation, writing to ``output`` (which never counts as a change of the code)."""
        started = datetime.now(UTC).isoformat(timespec="seconds")
        commit, changes = git_state(output)
        return cls(uuid.uuid4().hex[:12], started, mtpert.__version__, commit, data_sha256, changes)


@dataclass(frozen=True)
class RunResult:
    """What a worker hands back: the run's table, and what was asked to be kept."""

    run: RunSpec
    table: pd.DataFrame
    predictions: tuple[Prediction, ...] = ()
    models: Mapping[float | None, PerturbationModel] = field(default_factory=dict)


class ResultStore:
    """Reads and writes one benchmark directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.runs = self.root / "runs"
        self.suffix = ".parquet" if find_spec("pyarrow") else ".csv"
        self.invocation: Invocation | None = None
        self.quarantined: list[tuple[Path, str]] = []
        """Run files this invocation moved to ``quarantine/``, each with what was wrong with it."""
        self._places: dict[str, list[tuple[Path, bool]]] = {}
        """Run files by the place in the grid they fill, each with whether it records ``hparams``."""
        self._outdated: dict[str, list[str]] = {}
        """Run files (by stem) holding values of a metric whose definition changed since, with
        those metrics."""

    # ------------------------------------------------------------------ writing
    @contextmanager
    def open(self, config: BenchmarkConfig, data_sha256: str) -> Iterator[BenchmarkConfig]:
        """Hold the directory for one invocation on data with fingerprint ``data_sha256``: lock
        it, refuse it if it holds results of other data or incomparable settings, reconcile
        ``config`` with the one it holds, record the environment, remove the temporary files a
        killed run left behind, and move run files that do not read back whole to ``quarantine/``.
        Run files stamped with other data's fingerprint are refused even without ``config.json``.

        Yields the configuration to write back: models, seeds and groups of both invocations.
        """
        with output_lock(self.root):
            self.runs.mkdir(exist_ok=True)
            history = self._environments()
            self._check_data(config, data_sha256, history)
            merged = self._merge(config)
            for stale in stale_temp_files(self.root) + [f for d in _OWN_FOLDERS for f in stale_temp_files(self.root / d, recursive=True)]:
                stale.unlink()
            self.quarantined = self._check_runs(data_sha256)
            self.invocation = Invocation.now(data_sha256, self.root)
            _warn_mixed_versions(self.root, history, self.invocation)
            atomic_write(self.root / "config.json", lambda f: f.write(json.dumps(merged.to_dict(), indent=2).encode()))
            history.append(environment(self.invocation, config.data))
            atomic_write(self.root / "environment.json", lambda f: f.write(json.dumps(history, indent=2).encode()))
            yield merged

    def _check_data(self, config: BenchmarkConfig, data_sha256: str, history: list[dict]) -> None:
        """Refuse a directory whose runs were made from other data, naming both."""
        old = self.config()
        if old is None:
            return
        recorded = [(e.get("data", old.data), e["data_sha256"]) for e in history if e.get("data_sha256")]
        if recorded and recorded[-1][1] != data_sha256:
            name, digest = recorded[-1]
            raise ConfigError(
                f"{self.root} holds results on '{name}' (data sha256 {digest[:12]}…), but '{config.data}' has other "
                f"content (sha256 {data_sha256[:12]}…); its results would not apply. Use another --out."
            )
        if dataset_id(old.data) != dataset_id(config.data):
            raise ConfigError(f"{self.root} holds results on '{old.data}', not '{config.data}'; use another --out.")
        if not recorded:
            log.warning(
                "%s predates data fingerprints: its runs cannot be checked against '%s'; from now on they are "
                "(sha256 %s…).", self.root, config.data, data_sha256[:12],
            )  # fmt: skip

    def _check_runs(self, data_sha256: str) -> list[tuple[Path, str]]:
        """Move every run file that does not read back whole to ``quarantine/`` (its run is
        redone), and refuse run files made from other data than ``data_sha256``'s."""
        moved, foreign = [], set()
        self._places = {}
        for file in self._run_files():
            table, problem = _read_run(file)
            if table is not None:
                foreign |= set(table.get("data_sha256", pd.Series(dtype=str)).dropna()) - {data_sha256}
                place = str(table["run_slot"].iloc[0]) if "run_slot" in table.columns else file.stem
                self._places.setdefault(place, []).append((file, "hparams" in table.columns))
                if outdated := sorted(set(table.loc[_outdated(table), "metric"])):
                    self._outdated[file.stem] = outdated
                continue
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
            target = self.root / "quarantine" / f"{file.name}.{stamp}"
            target.parent.mkdir(exist_ok=True)
            shutil.move(file, target)
            log.warning("run file %s %s; moved to %s, and its run is redone", file.name, problem, target)
            moved.append((target, problem))
        if foreign:
            raise ConfigError(
                f"{self.runs} holds runs made from other data (sha256 {', '.join(d[:12] + '…' for d in sorted(foreign))}) than "
                f"this data (sha256 {data_sha256[:12]}…); their results would not apply. Use another --out."
            )
        return moved

    def _merge(self, config: BenchmarkConfig) -> BenchmarkConfig:
        """``config`` extended by the models, seeds and groups already in the directory; refuses
        settings that would make old and new results incomparable."""
        old = self.config()
        if old is None:
            return config
        changed = [k for k in _COMPARABLE if _setting(old, k) != _setting(config, k)]
        changed += [
            f"{what} of {m}"
            for m in sorted(set(old.models) & set(config.models))
            for what, before, now in (
                ("model_params", dict(old.model_params.get(m, {})), dict(config.model_params.get(m, {}))),
                ("registered model", old.registered(m), config.registered(m)),
            )
            if before != now
        ]
        if changed:
            raise ConfigError(
                f"{self.root} holds results made with other settings ({', '.join(changed)}); "
                "results would not be comparable. Use another --out, or the settings in its config.json."
            )
        holdout = "all" if "all" in (old.holdout, config.holdout) else tuple(dict.fromkeys(old.holdout + config.holdout))
        values = config.to_dict() | {
            "models": list(dict.fromkeys(old.models + config.models)),
            "seeds": list(dict.fromkeys(old.seeds + config.seeds)),
            "split_seeds": list(dict.fromkeys(old.split_seeds + config.split_seeds)),
            "holdout": holdout,
            "model_params": {**old.to_dict()["model_params"], **config.to_dict()["model_params"]},
            "variants": {**old.variants, **config.variants},
        }
        return BenchmarkConfig.from_dict(values)

    def retire_superseded(self, runs: Sequence[RunSpec], *, rescore: bool = False) -> None:
        """Move to ``superseded/`` every run file in the place of one of ``runs`` under another id:
        made with other effective hyperparameters (or before they were recorded, so unchecked),
        it does not stand for the run, which is redone. One warning says how many, and why.

        ``rescore``: also the files of ``runs`` holding values of a metric whose definition
        changed since (:attr:`mtpert.metrics.Metric.version`), so that those runs are redone and
        scored anew (their other metrics come out the same: the runs are seeded)."""
        if rescore:
            rescored = [file for run in runs for file, _ in self._places.get(run.slot, ()) if file.stem == run.id and file.stem in self._outdated]
            if rescored:
                metrics = ", ".join(sorted({m for file in rescored for m in self._outdated[file.stem]}))
                log.warning("%d runs are redone to score %s anew (--rescore); their old results are kept in %s.", len(rescored), metrics, self._retire(rescored))
        stale = [(run, file, recorded) for run in runs for file, recorded in self._places.get(run.slot, ()) if file.stem != run.id]
        if not stale:
            return
        folder = self._retire([file for _, file, _ in stale])
        unchecked = sum(not recorded for _, _, recorded in stale)
        models = ", ".join(sorted({run.model for run, _, _ in stale}))
        log.warning(
            "%d runs are redone because their model's effective hyperparameters (its defaults included) changed since "
            "they were recorded (models: %s%s); their old results are kept in %s.", len(stale), models,
            f"; {unchecked} of them were recorded before runs kept those settings, so they cannot be checked" if unchecked else "",
            folder,
        )  # fmt: skip

    def _retire(self, files: Sequence[Path]) -> Path:
        """Move ``files`` to ``superseded/``, stamped with the time (their runs are redone);
        return the folder."""
        folder = self.root / "superseded"
        folder.mkdir(exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        for file in files:
            shutil.move(file, folder / f"{file.stem}.{stamp}{file.suffix}")
        return folder

    def write(self, result: RunResult) -> Path:
        """Save what was kept of a run, then its table: the table's existence marks it done."""
        run = result.run
        for p in result.predictions:
            self._write_prediction(p)
        for dose, model in result.models.items():  # None: the run's one model; else one per dose
            model.save(self.root / "models" / run.id / ("" if dose is None else f"dose_{dose}"))
        path = write_table(self._stamped(result), self.runs / f"{run.id}{self.suffix}")
        (self.failed / f"{run.id}.txt").unlink(missing_ok=True)  # an earlier failure, now rerun
        return path

    def _stamped(self, result: RunResult) -> pd.DataFrame:
        """The run's table with its identity, the invocation's provenance and, last, its row count."""
        if self.invocation is None:
            raise RuntimeError("ResultStore.write outside ResultStore.open")
        i, run = self.invocation, result.run
        finished = datetime.now(UTC).isoformat(timespec="seconds")
        stamps = dict(zip(PROVENANCE, (i.mtpert_version, i.git_commit or "", i.data_sha256, i.id, finished), strict=True))
        identity = dict(zip(IDENTITY, (run.slot, run.hparams), strict=True))
        versions = _current_versions(result.table["metric"])
        return result.table.assign(**identity, **stamps, **{METRIC_VERSION: versions, ROW_COUNT: len(result.table)})

    def write_skipped(self, skipped: pd.DataFrame, models: Iterable[str] = ()) -> None:
        """Record what is not run, with the reason (``skipped.csv``): the held-out targets too
        small to score, and the models that cannot serve the split. A run of some of the store's
        models (``models``: those of this run) keeps the rows of the store's other models."""
        path = self.root / "skipped.csv"
        table = skipped.reset_index()
        if path.is_file():
            old = pd.read_csv(path, dtype=str, keep_default_na=False)
            if "model" in old:
                kept = old[(old["model"] != "") & ~old["model"].isin(set(models))]
                if len(kept):
                    table = table if "model" in table else table.assign(model="")
                    kept = kept.rename(columns={old.columns[0]: table.columns[0]})
                    table = pd.concat([table, kept], ignore_index=True)
        write_table(table, path)

    @property
    def failed(self) -> Path:
        """Folder of the tracebacks of runs that raised (``<run id>.txt``); rerunning retries them."""
        return self.root / "failed"

    def write_failure(self, run: RunSpec, error: str) -> Path:
        """Keep the traceback of a failed run; the run stays not done, so a rerun tries it again."""
        self.failed.mkdir(parents=True, exist_ok=True)
        text = f"{run.label()} (run {run.id})\n\n{error}"
        path = self.failed / f"{run.id}.txt"
        atomic_write(path, lambda f: f.write(text.encode()))
        return path

    def _write_prediction(self, p: Prediction) -> None:
        folder = self._prediction_folder(p.target.group, p.target.condition, p.target.dose)
        cells = folder / "cells.h5ad"
        if not cells.exists():  # control and truth cells: the same for every model and seed
            both = ad.concat({"control": p.control, "truth": p.truth}, label=ROLE_KEY, index_unique=None)
            _write_h5ad(both, cells)
        _write_h5ad(p.pred, folder / f"{p.model}_seed{p.seed}.h5ad")

    def _prediction_folder(self, group: str, condition: str, dose: float | None) -> Path:
        return self.root / "predictions" / safe_name(group) / safe_name(condition_label(condition, dose))

    # ------------------------------------------------------------------ reading
    def done(self, run: RunSpec) -> bool:
        """Whether ``run`` finished (in either table format)."""
        return any((self.runs / f"{run.id}{s}").is_file() for s in (".parquet", ".csv"))

    def config(self) -> BenchmarkConfig | None:
        """The directory's configuration; None for a new directory."""
        path = self.root / "config.json"
        return BenchmarkConfig.from_dict(_read_json(path, "config")) if path.is_file() else None

    def _environments(self) -> list[dict]:
        path = self.root / "environment.json"
        return _read_json(path, "provenance") if path.is_file() else []

    def _run_files(self) -> list[Path]:
        return sorted(self.runs.glob("*.parquet")) + sorted(self.runs.glob("*.csv"))

    def results(self) -> pd.DataFrame:
        """Every finished run's table, concatenated. A run file that does not read back whole is
        left out with a warning (the next ``mtpert benchmark`` on the directory redoes its run),
        and so are the values of a metric whose definition changed since they were scored (one
        warning per metric: ``mtpert benchmark --rescore`` scores them anew)."""
        tables = []
        for file in self._run_files():
            table, problem = _read_run(file)
            if table is not None:
                tables.append(table)
            else:
                log.warning("left out run file %s: it %s; rerun `mtpert benchmark --out %s` to redo it", file, problem, self.root)
        if not tables:
            raise FileNotFoundError(f"No finished runs in {self.runs}; run `mtpert benchmark --out {self.root}` first.")
        results = pd.concat(tables, ignore_index=True)
        outdated = _outdated(results)
        left_out = {}
        for metric, runs in results[outdated].groupby("metric")["run_id"]:
            left_out[metric] = sorted(set(results.loc[runs.index, "model"]))
            log.warning(
                "left out %s of %d runs (models: %s): scored before its definition changed (version %d); "
                "rerun `mtpert benchmark --out %s --rescore` (with the same config and --models) to score them anew",
                metric, runs.nunique(), ", ".join(left_out[metric]), METRICS[metric].version, self.root,
            )  # fmt: skip
        kept = results[~outdated].reset_index(drop=True)
        kept.attrs[LEFT_OUT] = left_out
        return kept

    def predictions(
        self, group: str, condition: str, dose: float | None = None
    ) -> tuple[ad.AnnData, ad.AnnData, dict[tuple[str, int], ad.AnnData]]:
        """Control cells, true cells and every kept prediction, by (model, seed), of one target."""
        folder = self._prediction_folder(group, condition, dose)
        if not (folder / "cells.h5ad").is_file():
            raise FileNotFoundError(f"No kept predictions for '{group}' -> '{condition_label(condition, dose)}' in {folder}.")
        cells = ad.read_h5ad(folder / "cells.h5ad")
        role = cells.obs.pop(ROLE_KEY).astype(str).to_numpy()
        preds = {}
        for file in sorted(folder.glob("*_seed*.h5ad")):
            model, seed = file.stem.rsplit("_seed", 1)
            preds[model, int(seed)] = ad.read_h5ad(file)
        return cells[role == "control"].copy(), cells[role == "truth"].copy(), preds


def environment(invocation: Invocation, data: str) -> dict[str, object]:
    """When and with what code, data and packages an invocation ran."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "invocation": invocation.id,
        "started": invocation.started,
        "mtpert": invocation.mtpert_version,
        "git_commit": invocation.git_commit,
        "git_changes": {"count": len(invocation.git_changes), "first": list(invocation.git_changes[:GIT_CHANGES_SHOWN])},
        "data": data,
        "data_sha256": invocation.data_sha256,
        "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.machine()}, {len(os.sched_getaffinity(0))} usable CPU cores",
        "packages": versions,
    }


def git_state(output: Path, source: Path | None = None) -> tuple[str | None, tuple[str, ...]]:
    """The commit of the git work tree holding ``source`` (default: mtpert's package), ``+dirty``
    if it has changes, and the changed paths relative to its top: tracked files that differ from
    the commit, and files git does not track in ``source`` (code that runs). Files under ``output``
    (the command's own results, maybe inside the work tree) are not changes. None and no paths
    outside git."""
    source = Path(mtpert.__file__).parent if source is None else source
    try:
        git = lambda *args: subprocess.run(["git", *args], cwd=source, capture_output=True, check=True).stdout.decode(errors="replace")
        commit = git("rev-parse", "HEAD").strip()
        top = Path(git("rev-parse", "--show-toplevel").strip()).resolve()
        status = iter(git("status", "--porcelain=v1", "-z", "--untracked-files=no").split("\0"))
        untracked = git("ls-files", "--others", "--exclude-standard", "-z", "--full-name", "--", ".").split("\0")
    except (OSError, subprocess.CalledProcessError):
        return None, ()
    tracked = []
    for entry in status:  # "XY path"; a rename or copy is followed by the path it was made from
        tracked.append(entry[3:])
        if {"R", "C"} & set(entry[:2]):
            next(status)
    output = output.resolve()
    changes = sorted({p for p in tracked + untracked if p and not (top / p == output or output in (top / p).parents)})
    return commit + ("+dirty" if changes else ""), tuple(changes)


def _setting(config: BenchmarkConfig, name: str) -> object:
    return config.dataset_spec() if name == "spec" else getattr(config, name)


def _warn_mixed_versions(root: Path, history: list[dict], invocation: Invocation) -> None:
    """Say so when this invocation's code differs from what made the directory's earlier runs."""
    earlier = {(e.get("mtpert"), e.get("git_commit")) for e in history}
    ours = (invocation.mtpert_version, invocation.git_commit)
    if earlier and earlier != {ours}:
        versions = ", ".join(f"{v} ({c or 'no git commit'})" for v, c in sorted(earlier, key=str))
        log.warning(
            "%s holds runs made by mtpert %s; this invocation is %s (%s). Each run records the code that made it "
            "(the report's provenance table counts them).", root, versions, ours[0], ours[1] or "no git commit",
        )  # fmt: skip


def _read_json(path: Path, what: str) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(
            f"The benchmark's {what} file {path} cannot be read ({error}); it was truncated or edited. Restore it "
            "(e.g. from version control) or start a new --out; the run files in runs/ are intact."
        ) from None


def _current_versions(metrics: pd.Series) -> pd.Series:
    """The version of each metric's definition today (1 for a name no metric has, such as an
    interval's rows or a metric of a plugin not installed here)."""
    return metrics.map(lambda m: METRICS[m].version if m in METRICS else 1)


def _outdated(table: pd.DataFrame) -> pd.Series:
    """Rows of a run table whose metric's definition changed since they were scored."""
    recorded = table[METRIC_VERSION] if METRIC_VERSION in table.columns else pd.Series(1, index=table.index)
    return recorded.fillna(1) < _current_versions(table["metric"])


def _read_table(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, dtype={c: str for c in ("run_id", *IDENTITY, *PROVENANCE)})  # ids such as '1e50...' stay text


def _read_run(path: Path) -> tuple[pd.DataFrame | None, str | None]:
    """Run file ``path`` and None if it reads back whole (every row, its own run id, and, for
    files written since tables record it, the row count it was written with); else None and
    what is wrong with it."""
    try:
        table = _read_table(path)
    except Exception as error:  # noqa: BLE001 (any reader error means a damaged file)
        return None, f"cannot be read ({type(error).__name__})"
    if "run_id" not in table.columns or not (table["run_id"].astype(str) == path.stem).all():
        return None, "does not hold its run's rows"
    if ROW_COUNT in table.columns and not (pd.to_numeric(table[ROW_COUNT], errors="coerce") == len(table)).all():
        return None, "was truncated"
    return table, None


def _write_h5ad(adata: ad.AnnData, target: Path) -> None:
    with atomic_path(target) as tmp:
        adata.write_h5ad(tmp, compression="gzip")


class MemoryStore:
    """The store interface of :func:`~mtpert.benchmark.run_benchmark` kept in memory, for a grid
    whose results are only returned (:func:`~mtpert.benchmark.run_holdout`): nothing is done
    before it starts, nothing is written to disk."""

    def __init__(self) -> None:
        self.quarantined: list[tuple[Path, str]] = []
        self._tables: list[pd.DataFrame] = []

    @contextmanager
    def open(self, config: BenchmarkConfig, data_sha256: str) -> Iterator[BenchmarkConfig]:
        yield config

    def done(self, run: RunSpec) -> bool:
        return False

    def retire_superseded(self, runs: Sequence[RunSpec], *, rescore: bool = False) -> None:
        """Nothing was recorded before: nothing is superseded."""

    def write(self, result: RunResult) -> None:
        self._tables.append(result.table)

    def write_skipped(self, skipped: pd.DataFrame, models: Iterable[str] = ()) -> None:
        """Nothing to keep: :func:`~mtpert.benchmark.run_benchmark` logs the skipped targets."""

    def write_failure(self, run: RunSpec, error: str) -> None:
        """Nothing to keep: the failure reaches the caller through ``on_failure``."""

    def results(self) -> pd.DataFrame:
        """Every run's table, in the order the runs finished."""
        if not self._tables:
            raise FileNotFoundError("No finished runs.")
        return pd.concat(self._tables, ignore_index=True)
