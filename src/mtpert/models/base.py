"""The one interface every mtpert model implements, and the files a saved model consists of.

A model is built from a :class:`~mtpert.data.DatasetSpec` and explicit hyperparameters,
``fit`` on training (and optionally validation) cells, and asked to ``predict`` how given control
cells would look under a condition. Inputs and outputs are AnnData with log-normalized ``X``.

A saved model is a directory holding ``config.json`` (model name, mtpert version,
hyperparameters, dataset spec, gene list, and what ``fit`` learned that is not a tensor) and
``weights.pt`` (a flat ``dict[str, torch.Tensor]`` read back with ``weights_only=True``, so
loading never unpickles arbitrary objects).
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData

import mtpert
from mtpert.data.pp import require_kind
from mtpert.data.spec import DatasetSpec
from mtpert.errors import DataError, MtpertError
from mtpert.io import atomic_write

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.pt"
PREDICTION_KEY = "mtpert_prediction"
"""``uns`` key where :meth:`PerturbationModel.predict` records which model predicted what."""
PREDICT_BATCH = 4096
"""Cells a network encodes and decodes at once when predicting."""


class NotFittedError(MtpertError, RuntimeError):
    """``predict`` or ``save`` was called before ``fit``."""


class PerturbationModel(ABC):
    """Base class: fit on AnnData, predict AnnData, save and load.

    Subclasses set ``name`` (their registry key; a class serving several presets may make it
    a property derived from its options), take their hyperparameters as keyword-only constructor
    arguments and pass them to ``super().__init__`` so they are saved explicitly, and implement
    :meth:`_fit`, :meth:`_predict`, :meth:`_learned` and :meth:`_restore`.

    ``predicts_unseen_doses`` says whether the model can be asked for a dose it was not trained
    on (a continuous dose encoding, or a dose scaling); a benchmark holding a dose out needs it.
    """

    name: str
    predicts_unseen_doses: bool = False

    def __init__(self, spec: DatasetSpec, **hparams: Any) -> None:
        self.spec = spec
        self.hparams = hparams
        self.genes: list[str] | None = None

    # ------------------------------------------------------------------ public API
    def fit(self, train: AnnData, val: AnnData | None = None) -> Self:
        """Learn from ``train`` (control and perturbed cells of the training cell types).

        ``val`` is used by models that stop early or tune on held-aside cells; others ignore it.
        """
        self._check_input(train, "train")
        self.spec.validate(train)
        if val is not None:
            self._check_input(val, "val")
            if list(val.var_names) != list(train.var_names):
                raise DataError("Validation cells must have the same genes, in the same order, as training cells.")
        self.genes = train.var_names.tolist()
        self._fit(train, val)
        return self

    def predict(self, control: AnnData, condition: str, dose: float | None = None) -> AnnData:
        """Predict ``control`` cells under ``condition`` (at ``dose``).

        Returns a new AnnData: one predicted cell per input cell, the model's genes, the input's
        obs with the condition (and dose) columns set to what was predicted.
        """
        control = self._aligned(control)
        if self.spec.dose_key is not None and dose is None:
            raise DataError(f"This dataset has doses (obs['{self.spec.dose_key}']); pass dose= to predict.")
        if condition == self.spec.control:
            raise DataError(f"'{condition}' is the control condition; ask for a perturbation to predict.")
        X = np.asarray(self._predict(control, condition, dose), dtype=np.float32)
        if X.shape != control.shape:
            raise RuntimeError(f"{self.name} predicted shape {X.shape}, expected {control.shape}.")
        obs = control.obs.copy()
        obs[self.spec.condition_key] = condition
        if self.spec.dose_key is not None:
            obs[self.spec.dose_key] = float(dose)  # type: ignore[arg-type]
        out = AnnData(X=X, obs=obs, var=control.var.copy())
        out.uns[PREDICTION_KEY] = {"model": self.name, "condition": condition, "dose": np.nan if dose is None else dose}
        return out

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the model to directory ``path`` (created; existing files replaced atomically)."""
        if self.genes is None:
            raise NotFittedError(f"{self.name}: fit the model before saving it.")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config = {
            "model": self.name,
            "class": type(self).__name__,
            "mtpert_version": mtpert.__version__,
            "hparams": self.hparams,
            "spec": self.spec.to_dict(),
            "genes": self.genes,
            "learned": self._learned(),
        }
        tensors = {k: torch.as_tensor(v).detach().cpu().contiguous() for k, v in self._tensors().items()}
        atomic_write(path / WEIGHTS_FILE, lambda f: torch.save(tensors, f))
        atomic_write(path / CONFIG_FILE, lambda f: f.write(json.dumps(config, indent=2).encode()))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PerturbationModel:
        """Read a model written by :meth:`save`; works on the base class or the right subclass."""
        path = Path(path)
        if not (path / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"No saved mtpert model at {path} (missing {CONFIG_FILE}).")
        config = json.loads((path / CONFIG_FILE).read_text())
        model_cls = _model_class(config)
        if not issubclass(model_cls, cls):
            raise MtpertError(f"{path} holds a '{config['model']}' model ({model_cls.__name__}), not a {cls.__name__}.")
        model = model_cls(DatasetSpec.from_dict(config["spec"]), **config["hparams"])
        model.genes = list(config["genes"])
        tensors = torch.load(path / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        model._restore(config["learned"], tensors)
        return model

    def fit_summary(self) -> dict[str, float]:
        """Numbers a benchmark records about the fitted model: ``n_params`` (fitted values) here;
        trained networks add ``epochs`` and their final losses."""
        if self.genes is None:
            raise NotFittedError(f"{self.name}: fit the model before asking what it learned.")
        return {"n_params": float(sum(torch.as_tensor(v).numel() for v in self._tensors().values()))}

    # ------------------------------------------------------------------ subclass hooks
    @abstractmethod
    def _fit(self, train: AnnData, val: AnnData | None) -> None:
        """Learn parameters; ``train`` is validated, log-normalized, genes fixed."""

    @abstractmethod
    def _predict(self, control: AnnData, condition: str, dose: float | None) -> np.ndarray:
        """Dense (n_cells, n_genes) predicted log-expression for ``control`` cells."""

    @abstractmethod
    def _learned(self) -> dict[str, Any]:
        """JSON-serializable results of ``fit`` that are not tensors (e.g. condition names)."""

    def _tensors(self) -> dict[str, torch.Tensor | np.ndarray]:
        """Fitted arrays to save; models without weights keep the default (none)."""
        return {}

    @abstractmethod
    def _restore(self, learned: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`_learned` and :meth:`_tensors`."""

    # ------------------------------------------------------------------ helpers
    def _check_input(self, adata: AnnData, what: str) -> None:
        if adata.n_obs == 0:
            raise DataError(f"The {what} AnnData has no cells.")
        require_kind(adata, "log", what=f"{self.name}.fit ({what} cells)")

    def _aligned(self, control: AnnData) -> AnnData:
        """``control`` checked as log data with the model's genes, in the model's order."""
        if self.genes is None:
            raise NotFittedError(f"{self.name}: call fit before predict.")
        if control.n_obs == 0:
            raise DataError("No control cells to predict from (the AnnData is empty).")
        require_kind(control, "log", what=f"{self.name}.predict")
        genes = pd.Index(self.genes)
        if control.var_names.equals(genes):
            return control
        missing = genes.difference(control.var_names)
        if len(missing):
            raise DataError(
                f"{len(missing)} of the model's {len(genes)} genes are missing from the control cells "
                f"(e.g. {missing[:5].tolist()}); subset the input to the genes the model was trained on "
                "(model.genes), preprocessed the same way."
            )
        return control[:, genes]


def _model_class(config: dict[str, Any]) -> type[PerturbationModel]:
    """The class of a saved model: by its registered name, else (for a combination of options
    without a preset, e.g. ``mtvae_adv_ot``) by its class name among the registered classes."""
    from mtpert.models.registry import MODELS, get_model

    if config["model"] not in MODELS:
        classes = {preset.cls.__name__: preset.cls for preset in MODELS.values()}
        if config.get("class") in classes:
            return classes[config["class"]]
    return get_model(config["model"]).cls


def history_summary(histories: list[pd.DataFrame]) -> dict[str, float]:
    """``epochs`` run (summed over the networks trained) and each loss term of the last epoch
    (``final_<term>``, averaged over the networks): what a trained model adds to
    :meth:`PerturbationModel.fit_summary`."""
    last = pd.DataFrame([h.iloc[-1] for h in histories])
    terms = [c for c in last.columns if c.startswith(("train_", "val_"))]
    return {"epochs": float(sum(len(h) for h in histories))} | {
        f"final_{c}": float(last[c].mean()) for c in terms
    }


def dense(X: np.ndarray | sp.spmatrix) -> np.ndarray:
    """``X`` as a dense float32 array (for the few cells a model handles at once)."""
    return np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float32)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Refuse an option value outside ``choices``, naming them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}.")
