"""Runner for pertpy's scGen (``pertpy.tl.Scgen``, pertpy 1.0.3 on scvi-tools 1.4.2, JAX backend).

Run by the peer's own interpreter; mtpert talks to it through ``mtpert_peer.serve``.

Settings follow pertpy's tutorial "scGen - Perturbation response prediction"
(scverse/pertpy-tutorials, ``scgen_perturbation_prediction.ipynb``, Kang 2018 with one cell
type's stimulated cells held out):

- ``Scgen.setup_anndata(adata, batch_key=<condition>, labels_key=<cell type>)`` on X (scGen
  models log-normalized expression; ``layers["counts"]`` is not used);
- ``Scgen(adata)`` with the published architecture: ``n_hidden=800``, ``n_latent=100``,
  ``n_layers=2``, ``dropout_rate=0.2``;
- ``train(max_epochs=100, batch_size=32, early_stopping=True, early_stopping_patience=25)``;
  the tutorial lets scvi-tools draw a random 90/10 validation split, here the validation ELBO is
  computed on mtpert's own ``split == "val"`` cells (no validation cells: no early stopping);
- ``predict(ctrl_key=<control>, stim_key=<condition>, adata_to_predict=<control cells>)``: the
  latent mean of the condition's cells minus that of the control cells (both balanced over cell
  types, all training cells), added to each control cell's latent mean and decoded.

Every value above can be overridden through ``settings["params"]`` (keys: ``max_epochs``,
``batch_size``, ``early_stopping_patience``, ``n_hidden``, ``n_latent``, ``n_layers``,
``dropout_rate``, ``lr``; ``lr`` is scvi-tools' JAX training-plan default, 1e-3).

scGen learns one latent shift per trained condition: it predicts any condition it saw
(``stim_key``) for any cell type whose controls it saw, but neither an unseen condition nor an
unseen combination of seen parts, nor a dose (ValueError). The decoder's output layer is linear,
so predictions are on X's log1p scale but are not clipped at zero (returned as the model gives
them).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any
from unittest import mock

import anndata as ad
import numpy as np

DEFAULTS: dict[str, Any] = {
    "max_epochs": 100,
    "batch_size": 32,
    "early_stopping_patience": 25,
    "n_hidden": 800,
    "n_latent": 100,
    "n_layers": 2,
    "dropout_rate": 0.2,
    "lr": 1e-3,
}
_ARCHITECTURE = ("n_hidden", "n_latent", "n_layers", "dropout_rate")


def _limit_threads(threads: int) -> None:
    """Cap torch's threads (scvi-tools' data side) and, for one thread, XLA's (read when JAX starts).

    XLA has no flag for N > 1 CPU threads: there it keeps its default pool (all usable cores).
    With one thread, both multi-threaded XLA CPU paths (Eigen and XNNPACK) are turned off.
    """
    if threads == 1:
        flags = "--xla_cpu_multi_thread_eigen=false --xla_cpu_use_xnnpack=false"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()
    import torch

    torch.set_num_threads(threads)


def _model_input(cells: ad.AnnData, keys: dict[str, Any]) -> ad.AnnData:
    """X (log-normalized, float32) with the two obs columns scGen registers, as strings."""
    columns = [keys["condition"], keys["cell_type"]]
    obs = cells.obs[columns].astype(str).astype("category")
    return ad.AnnData(X=cells.X.astype(np.float32), obs=obs, var=cells.var[[]].copy())


@contextlib.contextmanager
def _seeded_default_rng(seed: int) -> Iterator[None]:
    """Seed the cell subsampling in ``Scgen.predict``, which calls ``np.random.default_rng()``."""
    make = np.random.default_rng
    shared = make(seed)
    with mock.patch.object(
        np.random, "default_rng", lambda s=None: shared if s is None else make(s)
    ):
        yield


def train(cells: ad.AnnData, settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    unknown = set(settings.get("params", {})) - set(DEFAULTS)
    if unknown:
        raise ValueError(
            f"pertpy_scgen: unknown params {sorted(unknown)}; known: {sorted(DEFAULTS)}"
        )
    params = {**DEFAULTS, **settings.get("params", {})}
    keys = settings["keys"]
    _limit_threads(int(settings["threads"]))

    import pertpy as pt
    import scvi

    scvi.settings.seed = int(settings["seed"])
    adata = _model_input(cells, keys)
    pt.tl.Scgen.setup_anndata(adata, batch_key=keys["condition"], labels_key=keys["cell_type"])
    model = pt.tl.Scgen(adata, **{name: params[name] for name in _ARCHITECTURE})

    split = cells.obs["split"].astype(str).to_numpy()
    val = np.flatnonzero(split == "val")
    early_stopping = val.size > 0
    model.train(
        max_epochs=int(params["max_epochs"]),
        batch_size=int(params["batch_size"]),
        accelerator="cpu",
        early_stopping=early_stopping,
        early_stopping_patience=int(params["early_stopping_patience"]),
        plan_kwargs={"lr": float(params["lr"])},
        datasplitter_kwargs={
            "external_indexing": [np.flatnonzero(split != "val"), val, np.array([], dtype=int)]
        },
        enable_progress_bar=False,
    )

    history = model.history
    curve = "elbo_validation" if early_stopping else "elbo_train"
    losses = np.asarray(history[curve]).ravel()
    info = {
        "epochs": int(losses.size),
        "best_epoch": int(np.argmin(losses)) + 1,
        "early_stopping": early_stopping,
        "settings": params,
    }
    control = str(keys["control"])
    trained = sorted(set(adata.obs[keys["condition"]]) - {control})
    state = {
        "model": model,
        "keys": keys,
        "control": control,
        "conditions": trained,
        "seed": int(settings["seed"]),
    }
    return state, info


def predict(
    state: dict[str, Any], control: ad.AnnData, condition: str, dose: float | None
) -> np.ndarray:
    if dose is not None:
        raise ValueError("pertpy_scgen: scGen has no dose; dose must be None")
    if condition not in state["conditions"]:
        raise ValueError(
            f"pertpy_scgen: scGen predicts only conditions it was trained on (one latent shift "
            f"each); {condition!r} was not among the {len(state['conditions'])} trained conditions "
            "(unseen conditions and unseen combinations of seen parts cannot be predicted)"
        )
    keys = state["keys"]
    cells = _model_input(control, keys)
    with _seeded_default_rng(state["seed"]):
        predicted, _ = state["model"].predict(
            ctrl_key=state["control"], stim_key=condition, adata_to_predict=cells
        )
    return np.asarray(predicted.X, dtype=np.float32)


if __name__ == "__main__":
    from mtpert_peer import serve

    serve(train, predict)
