"""Models that fit and predict in their own Python environment: the field's originals (CPA, State,
CellFlow, pertpy's scGen), whose pins mtpert cannot share, or a runner of your own.

:class:`ExternalModel` is an ordinary :class:`~mtpert.models.PerturbationModel` to the rest of
mtpert (``mtpert benchmark --models cpa``): ``fit`` writes the training cells to a private folder
and starts the peer's runner under the peer's interpreter, which trains and then waits;
``predict_many`` hands it every request at once and reads the predicted cells back. The protocol
is files (h5ad and JSON, see ``mtpert/models/peers/mtpert_peer.py``), so nothing is pickled
across the boundary. What comes back is checked before it is scored: the cells and genes asked
for, finite, log-normalized. A peer that fails, hangs past ``time_limit`` or returns something
else raises :class:`~mtpert.errors.PeerError` with the end of what it printed.

The peer's process ends with :meth:`ExternalModel.close` (a benchmark closes it after each run),
when the model is garbage-collected, or when mtpert's process dies (the runner asks Linux for
that as it starts).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData, concat, read_h5ad

from mtpert.data.pp import COUNTS_LAYER, LOG_MAX
from mtpert.data.spec import DatasetSpec
from mtpert.errors import MtpertError, PeerError
from mtpert.lock import process_alive
from mtpert.models.base import PerturbationModel
from mtpert.models.peer_envs import RUNNERS, get_peer, last_lines, peer_python, setup_command
from mtpert.train.loop import resolve_device

POLL_SECONDS = 0.1
"""How often mtpert looks for the peer's answer (and whether the peer still runs)."""
LOG_TAIL_LINES = 40
"""Lines of the peer's output an error shows."""
FOLDER_PREFIX = "mtpert-peer-"
"""Name prefix of a peer's private folder (in the temporary folder)."""
OWNER_FILE = "owner.pid"
"""File of a peer's folder naming the mtpert process it belongs to."""


class ExternalModel(PerturbationModel):
    """The field's own models (`mtpert peers`), or a runner of yours, run by their own Python as a child process.

    Args:
        spec: obs keys of the dataset.
        peer: one of :data:`mtpert.models.peer_envs.PEERS` (its runner, environment and what it
            can predict), or empty with ``runner``.
        runner: a runner script of your own (defines ``train`` and ``predict`` and calls
            ``mtpert_peer.serve``); default: the peer's.
        python: the interpreter that runs it; default: the peer's environment
            (:func:`~mtpert.models.peer_envs.peer_python`), or mtpert's own for a runner without a peer.
        peer_params: settings handed to the runner (``settings["params"]``), e.g. ``{"max_epochs": 50}``.
        time_limit: seconds the peer may take to train, and again to answer the predictions.
        predicts_combinations: whether it predicts a pair never trained together from its parts;
            default: what the peer's design allows (False for a runner of your own).
    """

    saveable = False

    def __init__(
        self,
        spec: DatasetSpec,
        *,
        peer: str = "",
        runner: str | None = None,
        python: str | None = None,
        peer_params: dict[str, Any] | None = None,
        time_limit: float = 7200.0,
        predicts_combinations: bool | None = None,
    ) -> None:
        if not peer and not runner:
            raise ValueError(
                "ExternalModel needs a peer (e.g. peer='cpa') or a runner script (runner='my_runner.py')."
            )
        if peer:
            get_peer(peer)  # an unknown name fails now, naming the known ones
        if not time_limit > 0:
            raise ValueError(
                f"time_limit must be a positive number of seconds, got {time_limit!r}."
            )
        super().__init__(
            spec, peer=peer, runner=runner, python=python, peer_params=dict(peer_params or {}),
            time_limit=float(time_limit), predicts_combinations=predicts_combinations,
        )  # fmt: skip
        self._process: _PeerProcess | None = None
        self._threads: int | None = None
        self._device = "auto"
        self._answers: list[dict[str, Any]] = []

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.hparams["peer"] or Path(self.hparams["runner"]).stem

    @property
    def predicts_unseen_combinations(self) -> bool:  # type: ignore[override]
        given = self.hparams["predicts_combinations"]
        if given is not None:
            return bool(given)
        return (
            bool(self.hparams["peer"])
            and get_peer(self.hparams["peer"]).predicts_unseen_combinations
        )

    # ------------------------------------------------------------------ the protocol
    def _fit(self, train: AnnData, val: AnnData | None) -> None:
        self.close()
        cells = [self._handed_over(train, "train")]
        if val is not None and val.n_obs:
            cells.append(self._handed_over(val, "val"))
        keys = self.spec
        settings = {
            "keys": {
                "condition": keys.condition_key, "cell_type": keys.cell_type_key, "dose": keys.dose_key,
                "control": keys.control, "separator": keys.combination_separator,
            },
            "seed": int(torch.initial_seed() % 2**31),
            "threads": self._threads or torch.get_num_threads(),
            "device": self._device_name(),
            "params": self.hparams["peer_params"],
        }  # fmt: skip
        self._answers = []
        python, runner = self._python(), self._runner()
        self._process = _PeerProcess.start(
            self.name,
            python,
            runner,
            settings,
            cells,
            self.hparams["time_limit"],
            setup=self._setup(),
        )

    def _predict(self, control: AnnData, condition: str, dose: float | None) -> np.ndarray:
        return self._predict_many([(control, condition, dose)])[0]

    def _predict_many(
        self, requests: Sequence[tuple[AnnData, str, float | None]]
    ) -> list[np.ndarray]:
        if self._process is None:
            raise PeerError(f"{self.name}: its process was closed; fit the model again to predict.")
        controls = [self._handed_over(control) for control, _, _ in requests]
        items = [
            (c, condition, dose) for c, (_, condition, dose) in zip(controls, requests, strict=True)
        ]
        predictions, answer = self._process.ask(items, self.hparams["time_limit"])
        self._answers.append(answer)
        return [
            self._checked(pred, control)
            for pred, (control, _, _) in zip(predictions, requests, strict=True)
        ]

    def _checked(self, pred: AnnData, control: AnnData) -> np.ndarray:
        """The peer's predicted cells as an array over the model's genes, once they are what was
        asked for: one cell per control cell, the same genes, finite, log-normalized; negative
        values (a linear decoder's) are clipped at 0."""
        where = f"{self.name} predicted"
        if pred.n_obs != control.n_obs:
            raise PeerError(
                f"{where} {pred.n_obs} cells for {control.n_obs} control cells; it must return one cell per control cell, in their order."
            )
        genes = pd.Index(self.genes)
        if not pred.var_names.equals(genes):
            missing, extra = genes.difference(pred.var_names), pred.var_names.difference(genes)
            if len(missing) or len(extra) or pred.var_names.has_duplicates:
                raise PeerError(
                    f"{where} other genes than it was given: {len(missing)} missing (e.g. {missing[:3].tolist()}), "
                    f"{len(extra)} unknown (e.g. {extra[:3].tolist()}); it must return the control cells' genes."
                )
            pred = pred[:, genes]  # the same genes in another order
        X = pred.X.toarray() if sp.issparse(pred.X) else np.asarray(pred.X)
        X = X.astype(np.float32, copy=False)
        bad = ~np.isfinite(X)
        if bad.any():
            raise PeerError(
                f"{where} {int(bad.any(axis=1).sum())} of {X.shape[0]} cells with NaN or infinite values."
            )
        if X.size and np.all(X == np.round(X)) and X.max() > 1:
            raise PeerError(
                f"{where} whole numbers up to {X.max():g}: raw counts, not log-normalized expression; normalize them (total 1e4, then log1p) in its runner."
            )
        if X.size and X.max() > LOG_MAX:
            raise PeerError(
                f"{where} values up to {X.max():g}, beyond log-normalized expression (at most {LOG_MAX:g}); return normalized (total 1e4), log1p values."
            )
        return np.clip(
            X, 0, None, out=X
        )  # a linear decoder's negative values are no expression (as mtpert's own models)

    def _handed_over(self, adata: AnnData, split: str | None = None) -> AnnData:
        """The cells to hand over: X, the counts where there are, and only the obs columns the
        peer reads, as plain strings (readable by the older anndata of a peer's environment);
        ``split`` (``train``/``val``) marks training cells."""
        spec = self.spec
        columns = [k for k in (spec.condition_key, spec.cell_type_key) if k in adata.obs]
        obs = pd.DataFrame(
            {k: adata.obs[k].astype(str).astype("category") for k in columns},
            index=adata.obs_names.astype(str),
        )
        if spec.dose_key is not None and spec.dose_key in adata.obs:
            obs[spec.dose_key] = adata.obs[spec.dose_key].astype(float).to_numpy()
        out = AnnData(
            X=adata.X.copy(), obs=obs, var=pd.DataFrame(index=adata.var_names.astype(str))
        )
        if COUNTS_LAYER in adata.layers:
            out.layers[COUNTS_LAYER] = adata.layers[COUNTS_LAYER].copy()
        if split is not None:
            out.obs["split"] = pd.Categorical([split] * out.n_obs)
        return out

    def _python(self) -> Path:
        peer, python = self.hparams["peer"], self.hparams["python"]
        if peer:
            return peer_python(peer, python)
        return Path(
            python or sys.executable
        )  # a runner of your own runs under mtpert's Python by default

    def _runner(self) -> Path:
        runner = self.hparams["runner"]
        path = Path(runner).expanduser() if runner else get_peer(self.hparams["peer"]).runner
        if not path.is_file():
            raise PeerError(f"{self.name}: its runner {path} does not exist.")
        return path.resolve()

    def _setup(self) -> str | None:
        """The command that rebuilds the environment, where mtpert made it."""
        peer = self.hparams["peer"]
        return setup_command(peer) + " --force" if peer and not self.hparams["python"] else None

    def _device_name(self) -> str:
        device = resolve_device(self._device)
        return "cpu" if device.type == "cpu" else str(device)

    @contextmanager
    def _running(
        self,
        device: str | None = None,
        num_threads: int | None = None,
        progress: bool | None = None,
    ) -> Iterator[None]:
        self._device = device or self._device
        self._threads = num_threads or self._threads
        yield

    # ------------------------------------------------------------------ what it learned
    def fit_summary(self) -> dict[str, float]:
        """The peer's own training time, epochs and peak memory (its process, not mtpert's), and
        its prediction time so far."""
        if self._process is None:
            return super().fit_summary()
        fitted = self._process.fitted
        info = fitted.get("info") or {}
        summary = {
            "peer_train_seconds": float(fitted["train_seconds"]),
            "peer_peak_rss_mb": max(
                [float(fitted["peak_rss_mb"])] + [float(a["peak_rss_mb"]) for a in self._answers]
            ),
        }
        if self._answers:
            summary["peer_predict_seconds"] = sum(
                float(a["predict_seconds"]) for a in self._answers
            )
        for key, value in info.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                summary[key] = float(value)
        return summary

    def _learned(self) -> dict[str, Any]:
        return {} if self._process is None else {"peer": self._process.fitted.get("info") or {}}

    def _restore(self, learned: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        raise MtpertError(
            f"{self.name} runs in its own environment; mtpert does not save or load it."
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        raise MtpertError(
            f"{self.name} runs in its own environment, and its fitted state ends with its process: mtpert does not save it. "
            "Fit it again where you need it (a benchmark keeps its scores and, with --save-predictions, its predictions)."
        )

    def close(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None


class _PeerProcess:
    """A peer's runner process, trained and waiting for requests, and its private folder."""

    def __init__(
        self,
        name: str,
        process: subprocess.Popen[bytes],
        folder: Path,
        fitted: dict[str, Any],
        setup: str | None,
    ) -> None:
        self.name, self.process, self.folder, self.fitted, self.setup = (
            name,
            process,
            folder,
            fitted,
            setup,
        )
        self._requests = 0
        self._finalizer = weakref.finalize(self, _stop, process, folder)

    @classmethod
    def start(
        cls,
        name: str,
        python: Path,
        runner: Path,
        settings: Mapping[str, Any],
        cells: Sequence[AnnData],
        time_limit: float,
        *,
        setup: str | None,
    ) -> _PeerProcess:
        """Write the training cells and settings, start the runner, and wait until it trained.
        ``setup``: the command that rebuilds the peer's environment, for failures that need it."""
        _remove_abandoned()
        folder = Path(tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{name}-"))
        try:
            (folder / OWNER_FILE).write_text(str(os.getpid()))
            (folder / "settings.json").write_text(json.dumps(settings))
            _concat(cells).write_h5ad(folder / "train.h5ad")
            env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join(
                    [str(RUNNERS), *filter(None, [os.environ.get("PYTHONPATH")])]
                ),
                "PYTHONUNBUFFERED": "1",
                "MPLBACKEND": "Agg",
                **_thread_env(int(settings["threads"])),
                **(
                    {"CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu"}
                    if settings["device"] == "cpu"
                    else {}
                ),
            }
            with (folder / "peer.log").open("wb") as log:
                process = subprocess.Popen(
                    [str(python), str(runner), str(folder)], stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                    cwd=folder, env=env, start_new_session=True,
                )  # fmt: skip
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        try:
            fitted = _await(
                name,
                folder / "fitted.json",
                process,
                folder,
                time_limit,
                "did not finish training",
                setup,
            )
            if "error" in fitted:
                raise PeerError(
                    _failure(name, "failed while training", folder, fitted["error"], setup)
                )
        except BaseException:
            _stop(process, folder)
            raise
        return cls(name, process, folder, fitted, setup)

    def ask(
        self, items: Sequence[tuple[AnnData, str, float | None]], time_limit: float
    ) -> tuple[list[AnnData], dict[str, Any]]:
        """The predicted cells of each (control cells, condition, dose), asked in one request."""
        self._requests += 1
        request = f"request-{self._requests:04d}"
        folder = self.folder / request
        folder.mkdir()
        entries = []
        for k, (control, condition, dose) in enumerate(items):
            control.write_h5ad(folder / f"control-{k}.h5ad")
            entries.append(
                {
                    "control": f"control-{k}.h5ad",
                    "condition": condition,
                    "dose": dose,
                    "out": f"prediction-{k}.h5ad",
                }
            )
        (folder / "request.json").write_text(json.dumps({"items": entries}))
        try:
            assert self.process.stdin is not None
            self.process.stdin.write(f"{request}\n".encode())
            self.process.stdin.flush()
        except OSError:  # the pipe is closed: the peer ended
            pass  # _await says how it ended
        answer = _await(
            self.name,
            folder / "answer.json",
            self.process,
            self.folder,
            time_limit,
            "did not answer its predictions",
            self.setup,
        )
        if "error" in answer:
            raise PeerError(
                _failure(
                    self.name, "failed while predicting", self.folder, answer["error"], self.setup
                )
            )
        try:
            predictions = [read_h5ad(folder / e["out"]) for e in entries]
        except OSError as error:
            raise PeerError(
                f"{self.name} answered, but its predicted cells cannot be read ({error})."
            ) from error
        shutil.rmtree(folder, ignore_errors=True)
        return predictions, answer

    def stop(self) -> None:
        self._finalizer()


def _remove_abandoned() -> None:
    """Remove the folders of peers whose mtpert process was killed (no clean-up ran; the peer
    died with it), so that killed benchmarks do not fill the temporary folder."""
    for folder in Path(tempfile.gettempdir()).glob(f"{FOLDER_PREFIX}*"):
        try:
            owner = int((folder / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not one of ours, or being created
        if not process_alive(owner):
            shutil.rmtree(folder, ignore_errors=True)


def _concat(cells: Sequence[AnnData]) -> AnnData:
    return cells[0] if len(cells) == 1 else concat(cells, merge="first")


def _await(
    name: str,
    path: Path,
    process: subprocess.Popen[bytes],
    folder: Path,
    time_limit: float,
    late: str,
    setup: str | None,
) -> dict[str, Any]:
    """The JSON peer ``name`` writes at ``path``; a :class:`PeerError` if it ends first or does
    not write it within ``time_limit`` seconds (it is then stopped)."""
    deadline = time.monotonic() + time_limit
    while not path.is_file():
        code = process.poll()
        if code is not None and not path.is_file():
            raise PeerError(_failure(name, f"ended (exit code {code})", folder, None, setup))
        if time.monotonic() > deadline:
            _kill(process)
            raise PeerError(
                f"Peer '{name}' {late} within its time limit of {time_limit:g} s, and was stopped.\n{_log_tail(folder)}"
            )
        time.sleep(POLL_SECONDS)
    return json.loads(path.read_text())


def _failure(name: str, what: str, folder: Path, trace: str | None, setup: str | None) -> str:
    """The message of a failed peer: the end of its traceback or output, and the fix where the
    cause is its environment."""
    text = trace if trace else _log_tail(folder)
    tail = "\n".join(text.strip().splitlines()[-LOG_TAIL_LINES:])
    advice = ""
    if "ModuleNotFoundError" in text or "ImportError" in text:
        advice = "\nIts environment lacks a package it imports" + (
            f": rebuild it with `{setup}`." if setup else "."
        )
    return f"Peer '{name}' {what}:\n{tail}{advice}"


def _log_tail(folder: Path) -> str:
    return last_lines(folder / "peer.log", LOG_TAIL_LINES) or "(it printed nothing)"


def _thread_env(threads: int) -> dict[str, str]:
    """Environment variables that hold the peer's numeric libraries to ``threads`` CPU threads."""
    n = str(max(1, threads))
    return {
        **dict.fromkeys(
            ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"), n
        ),
        "XLA_FLAGS": f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'} intra_op_parallelism_threads={n}",
    }


def _kill(process: subprocess.Popen[bytes]) -> None:
    """Kill the peer and every process it started (its own session, which may outlive it)."""
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _stop(process: subprocess.Popen[bytes], folder: Path) -> None:
    """End the peer (end of stdin; killed if it does not end within 10 s) and remove its folder."""
    if process.poll() is None:
        try:
            if process.stdin is not None:
                process.stdin.close()
            process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass
    _kill(process)
    shutil.rmtree(folder, ignore_errors=True)
