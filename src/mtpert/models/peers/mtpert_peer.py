"""The peer side of mtpert's external-model protocol; runs under a peer's own Python, never mtpert's.

mtpert starts ``PYTHON RUNNER WORKDIR`` with this folder on ``PYTHONPATH``, where ``RUNNER`` is a
script that defines ``train`` and ``predict`` and ends with ``serve(train, predict)``. It needs
nothing beyond numpy and anndata, which every peer has. Files, all in ``WORKDIR``:

- ``settings.json`` (mtpert writes): ``keys`` (the obs columns and labels: ``condition``,
  ``cell_type``, ``dose``, ``control``, ``separator``), ``seed``, ``threads`` and ``params`` (the
  user's settings for the peer).
- ``train.h5ad`` (mtpert writes): every cell the peer may learn from; ``X`` log-normalized,
  ``layers["counts"]`` where the data had counts, ``obs["split"]`` ``train`` or ``val``.
- ``fitted.json`` (this writes, once trained): ``info`` (what ``train`` returned),
  ``train_seconds``, ``peak_rss_mb``, ``python``; or ``error`` (the traceback) if training raised.
- Then, for each line ``REQUEST`` read from stdin, a folder ``WORKDIR/REQUEST`` holding
  ``request.json`` (``items``: ``control`` file, ``condition``, ``dose``, ``out`` file): this
  writes one h5ad of predicted cells per item, then ``answer.json`` (``predict_seconds``,
  ``peak_rss_mb``; or ``error``). End of stdin ends the process.

Every JSON file appears whole (written aside, then renamed), so mtpert never reads half of one.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np

Train = Callable[[ad.AnnData, dict[str, Any]], tuple[Any, dict[str, Any]]]
Predict = Callable[[Any, ad.AnnData, str, "float | None"], "np.ndarray | ad.AnnData"]


def serve(train: Train, predict: Predict) -> None:
    """Train on ``WORKDIR/train.h5ad`` (``WORKDIR`` is the first argument), then answer
    prediction requests until stdin ends."""
    die_with_parent()
    workdir = Path(sys.argv[1])
    settings = json.loads((workdir / "settings.json").read_text())
    _seed(settings["seed"])
    start = time.perf_counter()
    try:
        state, info = train(ad.read_h5ad(workdir / "train.h5ad"), settings)
    except BaseException:  # every failure goes back to mtpert, then the process ends
        _answer(workdir / "fitted.json", {"error": traceback.format_exc()})
        raise
    _answer(
        workdir / "fitted.json",
        {
            "info": info,
            "train_seconds": time.perf_counter() - start,
            "peak_rss_mb": _peak_rss_mb(),
            "python": sys.version.split()[0],
        },
    )
    for line in sys.stdin:
        folder = workdir / line.strip()
        try:
            start = time.perf_counter()
            for item in json.loads((folder / "request.json").read_text())["items"]:
                control = ad.read_h5ad(folder / item["control"])
                _write_prediction(
                    predict(state, control, item["condition"], item["dose"]),
                    control,
                    folder / item["out"],
                )
            answer = {"predict_seconds": time.perf_counter() - start, "peak_rss_mb": _peak_rss_mb()}
        except Exception:  # noqa: BLE001 (a failed request is answered; the next may succeed)
            answer = {"error": traceback.format_exc()}
        _answer(folder / "answer.json", answer)


def _write_prediction(pred: np.ndarray | ad.AnnData, control: ad.AnnData, path: Path) -> None:
    """An array is read as one row per control cell over the control's genes; an AnnData is
    written as it is (mtpert checks its cells and genes)."""
    if not isinstance(pred, ad.AnnData):
        X = np.asarray(pred, dtype=np.float32)
        if X.ndim != 2:
            raise ValueError(
                f"predict returned an array of shape {X.shape}; expected (cells, genes)."
            )
        pred = ad.AnnData(X=X)
        if X.shape == control.shape:
            pred.obs_names, pred.var_names = control.obs_names, control.var_names
    partial = path.with_name(path.name + ".partial")
    pred.write_h5ad(partial)
    os.replace(partial, path)


def _answer(path: Path, content: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(content, default=str))
    os.replace(partial, path)


def die_with_parent() -> None:
    """Ask Linux to end this process when its parent ends: the runner with mtpert (a killed
    benchmark leaves no peer training on; elsewhere it ends at the end of stdin, once trained),
    and, as a subprocess's ``preexec_fn``, a program a runner starts with the runner."""
    parent = os.getppid()
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # mtpert ended before the request took effect
        os._exit(1)


def _seed(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
