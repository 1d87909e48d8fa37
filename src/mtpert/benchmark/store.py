"""A benchmark directory: one result table per finished run, written atomically, and provenance.

Layout of ``DIR``::

    config.json          the benchmark's configuration (the union of resumed grids)
    environment.json     per invocation: time, mtpert version and git commit, packages, machine
    runs/<id>.parquet    one finished run: its scores (long table) and its costs (.csv without pyarrow)
    predictions/<group>/<condition>[@<dose>]/cells.h5ad, <model>_seed<seed>.h5ad   kept predictions
    models/<id>/         kept fitted models (see save_models)

A run's table is written last and atomically, so it exists only for a run that finished: a run
killed midway leaves nothing that resume would mistake for a result.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import json
import os
import platform
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.util import find_spec
from pathlib import Path

import anndata as ad
import pandas as pd

import mtpert
from mtpert.benchmark.grid import BenchmarkConfig, RunSpec, dataset_id
from mtpert.benchmark.holdout import Prediction
from mtpert.data.split import condition_label
from mtpert.errors import ConfigError
from mtpert.io import atomic_path, atomic_write, write_table
from mtpert.models.base import PerturbationModel

PACKAGES = ("numpy", "scipy", "pandas", "anndata", "scanpy", "scikit-learn", "torch", "pot", "matplotlib")
"""Packages whose versions decide results, recorded with every invocation."""

ROLE_KEY = "mtpert_role"
"""obs column of ``cells.h5ad`` saying whether a cell is a ``control`` or ``truth`` cell."""

_COMPARABLE = ("spec", "split", "group_key", "n_hvg", "hvg_on_all_cells", "min_cells", "noise_ceiling_repeats", "one_dose_at_a_time")
"""Settings every run of one directory must share for its results to be comparable."""


class BenchmarkLockedError(ConfigError):
    """Another process is writing to the same benchmark directory."""


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

    # ------------------------------------------------------------------ writing
    @contextmanager
    def open(self, config: BenchmarkConfig) -> Iterator[BenchmarkConfig]:
        """Hold the directory for one invocation: lock it, reconcile ``config`` with the one it
        holds, record the environment, and remove temporary files a killed run left behind.

        Yields the configuration to write back: models, seeds and groups of both invocations.
        """
        self.runs.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BenchmarkLockedError(f"Another mtpert benchmark is writing to {self.root}; wait for it or use another --out.") from None
            for stale in self.root.rglob(".*"):  # atomic_write's temporary files, never results
                if stale.is_file() and stale.name != ".lock":
                    stale.unlink()
            merged = self._merge(config)
            atomic_write(self.root / "config.json", lambda f: f.write(json.dumps(merged.to_dict(), indent=2).encode()))
            history = self._environments() + [environment()]
            atomic_write(self.root / "environment.json", lambda f: f.write(json.dumps(history, indent=2).encode()))
            yield merged

    def _merge(self, config: BenchmarkConfig) -> BenchmarkConfig:
        """``config`` extended by the models, seeds and groups already in the directory; refuses
        settings that would make old and new results incomparable."""
        old = self.config()
        if old is None:
            return config
        if dataset_id(old.data) != dataset_id(config.data):
            raise ConfigError(f"{self.root} holds results on '{old.data}', not '{config.data}'; use another --out.")
        changed = [k for k in _COMPARABLE if _setting(old, k) != _setting(config, k)]
        changed += [
            f"model_params of {m}"
            for m in set(old.models) & set(config.models)
            if dict(old.model_params.get(m, {})) != dict(config.model_params.get(m, {}))
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
            "holdout": holdout,
            "model_params": {**old.to_dict()["model_params"], **config.to_dict()["model_params"]},
        }
        return BenchmarkConfig.from_dict(values)

    def write(self, result: RunResult) -> Path:
        """Save what was kept of a run, then its table: the table's existence marks it done."""
        run = result.run
        for p in result.predictions:
            self._write_prediction(p)
        for dose, model in result.models.items():  # None: the run's one model; else one per dose
            model.save(self.root / "models" / run.id / ("" if dose is None else f"dose_{dose}"))
        path = write_table(result.table, self.runs / f"{run.id}{self.suffix}")
        (self.failed / f"{run.id}.txt").unlink(missing_ok=True)  # an earlier failure, now rerun
        return path

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
        return self.root / "predictions" / _safe(group) / _safe(condition_label(condition, dose))

    # ------------------------------------------------------------------ reading
    def done(self, run: RunSpec) -> bool:
        """Whether ``run`` finished (in either table format)."""
        return any((self.runs / f"{run.id}{s}").is_file() for s in (".parquet", ".csv"))

    def config(self) -> BenchmarkConfig | None:
        path = self.root / "config.json"
        return BenchmarkConfig.from_dict(json.loads(path.read_text())) if path.is_file() else None

    def _environments(self) -> list[dict]:
        path = self.root / "environment.json"
        return json.loads(path.read_text()) if path.is_file() else []

    def results(self) -> pd.DataFrame:
        """Every finished run's table, concatenated."""
        files = sorted(self.runs.glob("*.parquet")) + sorted(self.runs.glob("*.csv"))
        if not files:
            raise FileNotFoundError(f"No finished runs in {self.runs}; run `mtpert benchmark --out {self.root}` first.")
        return pd.concat([_read_table(f) for f in files], ignore_index=True)

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


def environment() -> dict[str, object]:
    """When and with what code and packages an invocation ran."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "mtpert": mtpert.__version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.machine()}, {len(os.sched_getaffinity(0))} usable CPU cores",
        "packages": versions,
    }


def git_commit() -> str | None:
    """Commit of the mtpert source tree (``+dirty`` with uncommitted changes); None outside git."""
    source = Path(mtpert.__file__).parent
    try:
        run = lambda *args: subprocess.run(["git", *args], cwd=source, capture_output=True, text=True, check=True).stdout.strip()
        commit = run("rev-parse", "HEAD")
        return commit + ("+dirty" if run("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def _setting(config: BenchmarkConfig, name: str) -> object:
    return config.dataset_spec() if name == "spec" else getattr(config, name)


def _read_table(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def _write_h5ad(adata: ad.AnnData, target: Path) -> None:
    with atomic_path(target) as tmp:
        adata.write_h5ad(tmp, compression="gzip")


def _safe(name: str) -> str:
    """``name`` usable as a file name (cell types contain spaces, slashes and plus signs)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))
