"""The one interface every mtpert model implements, and the files a saved model consists of.

A model is built from a :class:`~mtpert.data.DatasetSpec` and explicit hyperparameters,
``fit`` on training (and optionally validation) cells, and asked to ``predict`` how given control
cells would look under a condition. Inputs and outputs are AnnData with log-normalized ``X``.

A saved model is a directory holding ``config.json`` (model name, mtpert version,
hyperparameters, dataset spec, gene list, and what ``fit`` learned that is not a tensor) and
``weights.pt`` (a flat ``dict[str, torch.Tensor]`` read back with ``weights_only=True``, so
loading never unpickles arbitrary objects). The model's class is found among the registered ones
and the class ``load`` is called on, never imported by the name the file records, so loading runs
no code from the file or from beside it. Loading checks that the two files belong together:
each model's ``_restore`` builds its networks from the config and passes their tensor shapes to
:func:`check_weights` before reading the weights in.
"""

from __future__ import annotations

import inspect
import json
import os
import pickle
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Self, get_type_hints

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

import mtpert
from mtpert._array import dense  # noqa: F401  (re-exported for older imports)
from mtpert.data.labels import parse_label
from mtpert.data.pp import require_kind
from mtpert.data.spec import DatasetSpec
from mtpert.errors import CheckpointError, DataError, MtpertError
from mtpert.io import atomic_write_files
from mtpert.models.search import Distribution
from mtpert.train.loop import resolve_device

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.pt"
PREDICTION_KEY = "mtpert_prediction"
"""``uns`` key where :meth:`PerturbationModel.predict` records which model predicted what."""
PREDICT_BATCH = 4096
"""Cells a network encodes and decodes at once when predicting."""
CONFIG_KEYS: Mapping[str, type] = {
    "model": str,
    "mtpert_version": str,
    "hparams": dict,
    "spec": dict,
    "genes": list,
    "learned": dict,
}
"""What every saved ``config.json`` holds, and the JSON type of each value."""
RUNTIME_OPTIONS = ("device", "num_threads", "progress")
"""Options of ``fit`` and ``load`` that say where and how a model runs, not what it learns: never
saved, and dropped from the hyperparameters of models saved before they were set apart."""


class NotFittedError(MtpertError, RuntimeError):
    """``predict`` or ``save`` was called before ``fit``."""


class PerturbationModel(ABC):
    """Base class: fit on AnnData, predict AnnData, save and load.

    Subclasses set ``name`` (their registry key; a class serving several presets may make it
    a property derived from its options), take their hyperparameters as keyword-only constructor
    arguments and pass them to ``super().__init__`` so they are saved explicitly, and implement
    :meth:`_fit`, :meth:`_predict`, :meth:`_learned` and :meth:`_restore`. Models that train
    networks derive from :class:`mtpert.models.trained.TrainedModel`, which does this for them.

    ``predicts_unseen_doses`` says whether the model can be asked for a dose it was not trained
    on (a continuous dose encoding, or a dose scaling); a benchmark holding a dose out needs it.
    """

    name: str
    predicts_unseen_doses: bool = False
    predicts_unseen_combinations: bool = False
    """Whether the model can be asked for a combination (``"A+B"``) never seen in training, from
    its parts; a benchmark holding combinations out needs it."""
    saveable: bool = True
    """Whether :meth:`save` can write the fitted model; a peer's fitted state lives in its own
    process (:class:`~mtpert.models.external.ExternalModel`) and is not saved."""

    def __init__(self, spec: DatasetSpec, **hparams: Any) -> None:
        self.spec = spec
        self.hparams = hparams
        self.genes: list[str] | None = None

    # ------------------------------------------------------------------ public API
    def fit(
        self,
        train: AnnData,
        val: AnnData | None = None,
        *,
        device: str | None = None,
        num_threads: int | None = None,
        progress: bool | None = None,
    ) -> Self:
        """Learn from ``train`` (control and perturbed cells of the training cell types).

        ``val`` is used by models that stop early or tune on held-aside cells; others ignore it.
        ``device``, ``num_threads`` and ``progress`` say where and how a network trains, and stay
        the model's settings (None: keep the setting; see
        :class:`~mtpert.models.trained.TrainedModel`); they are not saved, and models without a
        network ignore them.
        """
        self._check_input(train, "train")
        self.spec.validate(train)
        if val is not None:
            self._check_input(val, "val")
            if list(val.var_names) != list(train.var_names):
                raise DataError("Validation cells must have the same genes, in the same order, as training cells.")
        self.genes = train.var_names.tolist()
        with self._running(device=device, num_threads=num_threads, progress=progress):
            self._fit(train, val)
        return self

    def predict(self, control: AnnData, condition: str, dose: float | None = None) -> AnnData:
        """Predict ``control`` cells under ``condition`` (at ``dose``).

        ``condition`` is read as labels in the data are (:func:`mtpert.data.labels.parse_label`):
        ``' A + B '`` asks for ``'A+B'``, ``'A+'`` is refused; a combination is known by its set
        of parts, whatever their order.

        Returns a new AnnData: one predicted cell per input cell, the model's genes, the input's
        obs with the condition (and dose) columns set to what was predicted.
        """
        return self.predict_many([(control, condition, dose)])[0]

    def predict_many(self, requests: Sequence[tuple[AnnData, str, float | None]]) -> list[AnnData]:
        """:meth:`predict` for each ``(control, condition, dose)`` of ``requests``, asked at once:
        a model that pays a fixed cost per call (a peer in its own process) answers them together."""
        asked = [self._request(control, condition, dose) for control, condition, dose in requests]
        with self._running():
            arrays = self._predict_many(asked)
        return [self._predicted(control, condition, dose, X) for (control, condition, dose), X in zip(asked, arrays, strict=True)]

    def _request(self, control: AnnData, condition: str, dose: float | None) -> tuple[AnnData, str, float | None]:
        """A prediction request checked and put in canonical form: the control cells on the model's
        genes, the condition as its label (``' A + B '`` is ``'A+B'``)."""
        control = self._aligned(control)
        if self.spec.dose_key is not None and dose is None:
            raise DataError(f"This dataset has doses (obs['{self.spec.dose_key}']); pass dose= to predict.")
        parts = parse_label(condition, self.spec)  # refuses a label that cannot be read
        if not parts:
            raise DataError(f"'{condition}' is the control condition; ask for a perturbation to predict.")
        return control, (self.spec.combination_separator or "").join(parts), dose

    def _predicted(self, control: AnnData, condition: str, dose: float | None, X: np.ndarray) -> AnnData:
        """The predicted cells ``X`` of a request as an AnnData labelled with what was predicted."""
        X = np.asarray(X, dtype=np.float32)
        if X.shape != control.shape:
            raise RuntimeError(f"{self.name} predicted shape {X.shape}, expected {control.shape}.")
        obs = control.obs.copy()
        obs[self.spec.condition_key] = condition
        if self.spec.dose_key is not None:
            obs[self.spec.dose_key] = float(dose)  # type: ignore[arg-type]
        out = AnnData(X=X, obs=obs, var=control.var.copy())
        out.uns[PREDICTION_KEY] = {"model": self.name, "condition": condition, "dose": np.nan if dose is None else dose}
        return out

    def close(self) -> None:
        """Free what the fitted model holds outside this process (a peer's process and its files);
        nothing to do for mtpert's own models. A closed peer model must be fitted again."""

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the model to directory ``path`` (created if missing). Its files are replaced
        together or not at all: a failed save (a full disk) leaves a model saved there before
        whole, and no new folder behind."""
        if self.genes is None:
            raise NotFittedError(f"{self.name}: fit the model before saving it.")
        config = {
            "model": self.name,
            "class": f"{type(self).__module__}:{type(self).__qualname__}",  # how load finds it
            "mtpert_version": mtpert.__version__,
            "hparams": self.hparams,
            "spec": self.spec.to_dict(),
            "genes": self.genes,
            "learned": self._learned(),
        }
        tensors = {k: torch.as_tensor(v).detach().cpu().contiguous() for k, v in self._tensors().items()}
        return atomic_write_files(
            path,
            {
                WEIGHTS_FILE: lambda f: torch.save(tensors, f),
                CONFIG_FILE: lambda f: f.write(json.dumps(config, indent=2).encode()),
            },
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | None = None) -> PerturbationModel:
        """Read a model written by :meth:`save`; works on the base class or the right subclass.

        Only a registered model class (mtpert's, or one added with
        :func:`~mtpert.models.register_model` or an entry point) or the class this is called on
        is built: nothing a saved file names is imported, since importing runs code. A model of
        your own unregistered class is loaded with ``YourModel.load(path)``.

        ``device`` is where a network runs, whatever device it was saved from: ``auto`` (the
        default: CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; models without a
        network ignore it. A model saved by another mtpert version loads with a warning.

        Raises :class:`~mtpert.errors.CheckpointError`, naming the file, when ``config.json`` or
        ``weights.pt`` cannot be read or the weights do not fit the config.
        """
        path = Path(path)
        device = device or "auto"
        resolve_device(device)  # refuse a device this machine lacks before reading anything
        config = _read_config(path / CONFIG_FILE)
        saved = config["mtpert_version"]
        if saved != mtpert.__version__:
            warnings.warn(
                f"{path} was saved by mtpert {saved}; this is mtpert {mtpert.__version__}.",
                UserWarning,
                stacklevel=2,
            )
        try:
            model_cls = _model_class(config, path / CONFIG_FILE, cls)
            if not issubclass(model_cls, cls):
                raise MtpertError(
                    f"{path} holds a '{config['model']}' model ({model_cls.__name__}), "
                    f"not a {cls.__name__}."
                )
            return _from_files(model_cls, path, config, device)
        except CheckpointError as error:
            if saved == mtpert.__version__:
                raise
            raise CheckpointError(
                f"{error} (The model was saved by mtpert {saved}; this is mtpert "
                f"{mtpert.__version__}: load it with mtpert {saved}, or fit and save it again with "
                "this version.)"
            ) from error

    @classmethod
    def parameters(cls) -> dict[str, inspect.Parameter]:
        """The constructor's keyword-only parameters (what a config may set) with their types:
        ``Any`` where there is no hint, or one that cannot be resolved (a plugin's hint naming a
        type imported only for type checkers); a ``**kwargs`` parameter is included as such."""
        try:
            hints = get_type_hints(cls.__init__)
        except NameError:
            hints = {}
        return {
            name: p.replace(annotation=hints.get(name, Any))
            for name, p in inspect.signature(cls.__init__).parameters.items()
            if p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD)
        }

    def search_space(self) -> dict[str, Distribution]:
        """The hyperparameters worth tuning for this model as configured, with their ranges (see
        :mod:`mtpert.models.search`); empty for a model with nothing to tune. A family declares
        only what its options use (no KL weight for a deterministic latent)."""
        return {}

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

    def _predict_many(self, requests: Sequence[tuple[AnnData, str, float | None]]) -> list[np.ndarray]:
        """:meth:`_predict` of each checked request; override to answer them together."""
        return [self._predict(control, condition, dose) for control, condition, dose in requests]

    @abstractmethod
    def _learned(self) -> dict[str, Any]:
        """JSON-serializable results of ``fit`` that are not tensors (e.g. condition names)."""

    def _tensors(self) -> dict[str, torch.Tensor | np.ndarray]:
        """Fitted arrays to save; models without weights keep the default (none)."""
        return {}

    @abstractmethod
    def _restore(self, learned: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`_learned` and :meth:`_tensors`: build the fitted state from
        ``learned`` (and ``self.genes``), pass the shapes it needs to :func:`check_weights`, then
        take the values from ``tensors``."""

    def _running(self, **runtime: Any) -> AbstractContextManager[None]:
        """The context ``fit`` runs in, given its runtime options, and ``predict``, given none;
        models without a network need none."""
        return nullcontext()

    def _run_on(self, device: str) -> torch.device:
        """Run the model on ``device`` from now on; returns where its saved tensors are read to
        (models without a network keep them on the CPU)."""
        return torch.device("cpu")

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


def check_weights(saved: Mapping[str, torch.Tensor], expected: Mapping[str, Sequence[int]]) -> None:
    """Refuse ``saved`` tensors unless their names and shapes are ``expected`` (those of the model
    built from ``config.json``), saying what differs; :meth:`PerturbationModel.load` adds the
    paths."""
    missing = [repr(k) for k in expected if k not in saved]
    unexpected = [repr(k) for k in saved if k not in expected]
    wrong = [
        f"{k!r} of shape {tuple(saved[k].shape)} where {CONFIG_FILE} needs {tuple(shape)}"
        for k, shape in expected.items()
        if k in saved and tuple(saved[k].shape) != tuple(shape)
    ]
    problems = []
    if missing:
        problems.append(f"{WEIGHTS_FILE} lacks {_some(missing)}")
    if unexpected:
        problems.append(f"{WEIGHTS_FILE} has {_some(unexpected)}, which the model has no place for")
    if wrong:
        problems.append(f"{WEIGHTS_FILE} has {_some(wrong)}")
    if problems:
        raise CheckpointError("; ".join(problems))


def _some(items: list[str], shown: int = 3) -> str:
    """The first ``shown`` of ``items`` and how many more there are."""
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def _read_config(file: Path) -> dict[str, Any]:
    """``config.json`` of a saved model, with every key of :data:`CONFIG_KEYS`."""
    if not file.is_file():
        raise FileNotFoundError(f"No saved mtpert model at {file.parent} (missing {CONFIG_FILE}).")
    try:
        config = json.loads(file.read_bytes())
    except ValueError as error:  # invalid JSON or text
        raise CheckpointError(
            f"{file} is not valid JSON ({error}); the save was cut short or the file was edited. "
            "Re-save the model."
        ) from error
    bad = [
        k
        for k, kind in CONFIG_KEYS.items()
        if not isinstance(config, dict) or not isinstance(config.get(k), kind)
    ]
    if bad:
        raise CheckpointError(
            f"{file} lacks {bad} (or has values of the wrong type), which every saved mtpert model "
            "has; it was not written by PerturbationModel.save, or was edited. Re-save the model."
        )
    return config


def _read_weights(file: Path, device: torch.device) -> dict[str, torch.Tensor]:
    """The tensors of ``weights.pt``, on ``device``, read without unpickling arbitrary objects."""
    try:
        tensors = torch.load(file, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(
            f"{file} is missing; a saved model is {CONFIG_FILE} and {WEIGHTS_FILE} together. "
            "Re-save the model."
        ) from None
    except PermissionError:
        raise
    except (OSError, RuntimeError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as error:
        # which of these torch.load raises on a damaged file depends on where the damage is
        raise CheckpointError(
            f"{file} is not a tensor file mtpert can read ({type(error).__name__}); the save was "
            "cut short or the file was replaced. Re-save the model."
        ) from error
    if not isinstance(tensors, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()
    ):
        raise CheckpointError(
            f"{file} does not hold a flat dict of named tensors, as PerturbationModel.save writes. "
            "Re-save the model."
        )
    return tensors


def _model_class(
    config: dict[str, Any], file: Path, requested: type[PerturbationModel]
) -> type[PerturbationModel]:
    """The class of the model ``config`` (read from ``file``) describes, among the classes mtpert
    may build: the registered ones (mtpert's, :func:`~mtpert.models.register_model`'s and the
    plugins') and ``requested``, the class ``load`` was called on. Nothing the file names is
    imported: a saved model is data, and importing a module runs its code, found wherever the
    module search path leads (the current folder included).

    Found by the ``module:qualname`` that :meth:`PerturbationModel.save` records. Models saved by
    mtpert 0.1 recorded the class name alone, and a class may have moved to another module of its
    package since: these are found by the class name (within the package recorded), preferring
    ``requested`` and then the preset the file names (this also finds a combination of options
    without a preset, e.g. ``mtvae_adv_ot``, of a class moved since); a file that names no class,
    by its preset's name.
    """
    from mtpert.models.registry import MODELS

    saved = config.get("class") if isinstance(config.get("class"), str) else ""
    module, _, qualname = saved.rpartition(":")
    preset = MODELS.get(config["model"])
    own = [] if inspect.isabstract(requested) else [requested]
    known = [*own, *([preset.cls] if preset else []), *(p.cls for p in MODELS.values())]
    for cls in known:
        if f"{cls.__module__}:{cls.__qualname__}" == saved:
            return cls
    if not saved and preset is not None:
        return preset.cls
    for cls in known:
        same_package = not module or module.partition(".")[0] == cls.__module__.partition(".")[0]
        if qualname and cls.__qualname__ == qualname and same_package:
            return cls
    named = f"names the model class '{saved}'" if saved else "names no model class"
    caller = "" if own == [] else f", nor {requested.__qualname__}, the class load was called on"
    raise CheckpointError(
        f"{file} {named} for its '{config['model']}' model, which is neither one of mtpert's "
        f"models nor registered{caller}. mtpert does not import the classes a saved model names, "
        "as importing runs code. If it is your own model class, import it and load the model "
        f"through it ({qualname or 'YourModel'}.load(path)), or register it "
        "(mtpert.models.register_model, or an entry point in the group 'mtpert.models')."
    )


SAVED_BEFORE_THEY_EXISTED = {
    "schedule": "plateau",
    "anchor_shrinkage": "lower_bound",
    "denoise_control": False,
}
"""Settings a model saved before they existed was trained with: its file lacks them, and the
current default (the multi-task family's ``cosine`` schedule, ``expected`` anchor shrinkage,
denoised controls) would misstate how it was trained."""


def _from_files(
    model_cls: type[PerturbationModel], path: Path, config: dict[str, Any], device: str
) -> PerturbationModel:
    """The ``model_cls`` that ``config`` describes, built on ``device``, with the weights of
    ``path`` restored into it."""
    config_file, weights_file = path / CONFIG_FILE, path / WEIGHTS_FILE
    hparams = {k: v for k, v in config["hparams"].items() if k not in RUNTIME_OPTIONS}
    accepted = model_cls.parameters()
    hparams = {k: v for k, v in SAVED_BEFORE_THEY_EXISTED.items() if k in accepted} | hparams
    try:
        model = model_cls(DatasetSpec.from_dict(config["spec"]), **hparams)
    except (TypeError, ValueError) as error:  # hyperparameters or spec this mtpert does not take
        raise CheckpointError(
            f"{config_file} does not describe a '{config['model']}' model this mtpert can build "
            f"({error}). Re-save the model."
        ) from error
    model.genes = [str(g) for g in config["genes"]]
    tensors = _read_weights(weights_file, model._run_on(device))
    try:
        model._restore(config["learned"], tensors)
    except CheckpointError as error:
        raise CheckpointError(
            f"{weights_file} does not fit the '{config['model']}' model of {config_file} "
            f"({len(model.genes)} genes): {error}. Put back the {WEIGHTS_FILE} saved with this "
            f"{CONFIG_FILE}, or re-save the model."
        ) from None
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(
            f"{config_file} has 'learned' values a '{config['model']}' model cannot restore "
            f"({type(error).__name__}: {error}). Re-save the model."
        ) from error
    return model


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Refuse an option value outside ``choices``, naming them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}.")
