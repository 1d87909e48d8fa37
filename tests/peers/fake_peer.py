"""A tiny peer for tests of mtpert's external-model protocol (tests/test_external.py).

It predicts the mean shift: a control cell plus the mean change of the condition over the
training cells. ``settings["params"]["behaviour"]`` makes it misbehave on purpose (fail, hang,
return the wrong cells), and ``settings["params"]["record"]`` names a folder where it writes what
it was given (``train.json``, one line per training in ``trainings.txt``, its pid).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import anndata as ad
import numpy as np


def train(cells: ad.AnnData, settings: dict) -> tuple[dict, dict]:
    params, keys = settings["params"], settings["keys"]
    behaviour = params.get("behaviour", "ok")
    record = Path(params["record"]) if params.get("record") else None
    if record is not None:
        record.mkdir(parents=True, exist_ok=True)
        (record / "pid").write_text(str(os.getpid()))
        with (record / "trainings.txt").open("a") as log:
            log.write("trained\n")
        condition, cell_type = (
            cells.obs[keys["condition"]].astype(str),
            cells.obs[keys["cell_type"]].astype(str),
        )
        summary = {
            "settings": settings,
            "n_obs": cells.n_obs,
            "genes": cells.var_names.tolist(),
            "split": sorted(set(cells.obs["split"].astype(str))),
            "pairs": sorted({f"{t}|{c}" for t, c in zip(cell_type, condition, strict=True)}),
            "has_counts": "counts" in cells.layers,
            "threads_env": os.environ.get("OMP_NUM_THREADS"),
        }
        (record / "train.json").write_text(json.dumps(summary))
    if behaviour == "crash_train":
        raise RuntimeError("fake peer: training blew up")
    if behaviour == "import_error":
        import a_package_this_environment_lacks  # noqa: F401
    if behaviour == "exit_train":
        os._exit(3)
    if behaviour == "hang_train":
        time.sleep(600)
    X = cells.X.toarray() if hasattr(cells.X, "toarray") else np.asarray(cells.X)
    labels = cells.obs[keys["condition"]].astype(str).to_numpy()
    control = X[labels == keys["control"]].mean(0)
    shifts = {c: X[labels == c].mean(0) - control for c in set(labels) - {keys["control"]}}
    print("fake peer: trained on", cells.n_obs, "cells")
    return {"shifts": shifts, "behaviour": behaviour}, {"epochs": 1, "conditions": len(shifts)}


def predict(
    state: dict, control: ad.AnnData, condition: str, dose: float | None
) -> np.ndarray | ad.AnnData:
    behaviour = state["behaviour"]
    if condition not in state["shifts"]:
        raise ValueError(f"fake peer: no shift for condition {condition!r}")
    if behaviour == "crash_predict":
        raise RuntimeError("fake peer: prediction blew up")
    if behaviour == "hang_predict":
        time.sleep(600)
    X = control.X.toarray() if hasattr(control.X, "toarray") else np.asarray(control.X)
    pred = np.clip(X + state["shifts"][condition], 0, None)
    if behaviour == "nan":
        pred[0, 0] = np.nan
    if behaviour == "counts":
        pred = np.round(np.expm1(pred) * 10)
    if behaviour == "too_few_cells":
        pred = pred[:-1]
    if behaviour in ("wrong_genes", "reordered_genes"):
        genes = control.var_names.tolist()
        genes = [f"{g}_renamed" for g in genes] if behaviour == "wrong_genes" else genes[::-1]
        pred = pred[:, ::-1] if behaviour == "reordered_genes" else pred
        out = ad.AnnData(pred.astype(np.float32))
        out.obs_names, out.var_names = control.obs_names, genes
        return out
    return pred


if __name__ == "__main__":
    from mtpert_peer import serve

    serve(train, predict)
