"""What every model that trains a network shares: hyperparameters, seeding, device, threads, history.

A model family declares its hyperparameters once, as the fields of a :class:`Hyperparameters`
dataclass (which already holds the training settings of :class:`~mtpert.train.TrainConfig` and
the seed), names it as its ``Params``, and writes how it builds its networks, the cells they
train on and their losses. :class:`TrainedModel` does the rest the same way for every family:
the constructor takes each hyperparameter as a keyword argument, a network is trained by
:meth:`TrainedModel._train` inside :meth:`TrainedModel._seeded` (a forked, seeded random state,
so a fixed seed gives the same model, and torch's global generator is left as it was), on the
device and CPU threads of the runtime options, and the training history is kept, summarized by
``fit_summary`` and saved with the model.

Runtime options, ``device``, ``num_threads`` and ``progress``, say where and how a model runs,
not what it learns: they are given to ``fit`` (or as defaults to the constructor) and to
``load``, and never saved, as scvi-tools keeps ``train(accelerator=...)`` apart from the model.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import Field, asdict, dataclass, fields
from typing import Any, ClassVar, get_type_hints

import numpy as np
import pandas as pd
import torch
from torch import nn

from mtpert.data.spec import DatasetSpec
from mtpert.errors import ConfigError
from mtpert.models.base import PREDICT_BATCH, RUNTIME_OPTIONS, NotFittedError, PerturbationModel
from mtpert.models.search import Distribution, FloatRange
from mtpert.train.data import CellData
from mtpert.train.loop import TrainConfig, cpu_threads, resolve_device, train


@dataclass(frozen=True, kw_only=True)
class Hyperparameters(TrainConfig):
    """What every trained model's result depends on besides its data and network: the training
    settings of :class:`~mtpert.train.TrainConfig` and ``seed``. A family subclasses it to add its
    own fields (and to change a training default, redeclares the field with its default).

    Attributes:
        seed: seeds initialization, minibatch order, dropout and whatever else the family draws;
            None draws it from torch's global generator (so
            :func:`mtpert.data.seed_everything` governs it).
    """

    seed: int | None = None

    def train_config(self) -> TrainConfig:
        """The training settings alone, as :func:`mtpert.train.train` takes them."""
        return TrainConfig(**{f.name: getattr(self, f.name) for f in fields(TrainConfig)})

    def _widths(self, name: str) -> None:
        """Store field ``name`` as a tuple of layer widths (JSON and YAML give lists); refuse an
        empty or non-positive one."""
        widths = tuple(int(w) for w in getattr(self, name))
        if not widths or min(widths) < 1:
            raise ValueError(f"{name} needs at least one positive width; got {widths}.")
        object.__setattr__(self, name, widths)

    def _positive(self, *names: str) -> None:
        """Refuse fields ``names`` unless each is at least 1."""
        bad = [f"{n}={getattr(self, n)}" for n in names if getattr(self, n) < 1]
        if bad:
            raise ValueError(f"{', '.join(bad)}: must be >= 1.")


class NetworkModel:
    """What every model that trains networks shares, whatever it predicts (perturbation models
    through :class:`TrainedModel`, cross-modal ones directly): hyperparameters declared once as
    the fields of ``Params`` (a :class:`Hyperparameters` subclass, read as ``self.params``), the
    runtime options kept apart from them, and seeded training on the runtime's device and threads.
    """

    Params: ClassVar[type[Hyperparameters]] = Hyperparameters

    def _configure(
        self, hparams: dict[str, Any], *, device: str, num_threads: int | None, progress: bool
    ) -> None:
        """Set ``self.params`` from ``hparams`` (the fields of ``Params``) and the runtime options."""
        unknown = sorted(set(hparams) - {f.name for f in fields(self.Params)})
        if unknown:
            raise TypeError(
                f"{type(self).__name__} has no parameter {', '.join(unknown)}; its parameters: "
                f"{', '.join([*(f.name for f in self._ordered_fields()), *RUNTIME_OPTIONS])}."
            )
        try:
            self.params = self.Params(**hparams)
        except ValueError as error:  # a value out of its range: the caller's input, not a bug
            raise ConfigError(f"{type(self).__name__}: {error}") from None
        self.device = resolve_device(device)
        self.num_threads = num_threads
        self.progress = progress

    @classmethod
    def _ordered_fields(cls) -> list[Field[Any]]:
        """The fields of ``Params``: the family's own, then the training settings and seed."""
        shared = {f.name for f in fields(Hyperparameters)}
        return sorted(fields(cls.Params), key=lambda f: f.name in shared)

    def _seed(self) -> int:
        """The seed of this fit: ``params.seed``, or one drawn from torch's global generator."""
        if self.params.seed is not None:
            return self.params.seed
        return int(torch.randint(2**31 - 1, (1,)).item())

    @contextmanager
    def _seeded(self, seed: int) -> Iterator[torch.Generator]:
        """Run the block with torch's global generator (initialization, dropout, noise) seeded
        with ``seed`` and restored afterwards; yields the generator of the minibatch order."""
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield torch.Generator().manual_seed(seed)

    def _train(
        self,
        net: nn.Module,
        data: CellData,
        val: CellData | None,
        generator: torch.Generator,
        config: TrainConfig | None = None,
    ) -> pd.DataFrame:
        """Train ``net`` with :func:`mtpert.train.train` on the model's device under ``config``
        (default: the model's training settings); returns its history."""
        config = config or self.params.train_config()
        return train(
            net, data, val, config, device=self.device, generator=generator, progress=self.progress
        )

    @contextmanager
    def _running(
        self, device: str | None = None, num_threads: int | None = None, progress: bool | None = None
    ) -> Iterator[None]:
        """Keep the runtime options given (None: as set); run the block on ``num_threads`` threads."""
        self.device = self.device if device is None else resolve_device(device)
        self.num_threads = self.num_threads if num_threads is None else num_threads
        self.progress = self.progress if progress is None else progress
        with cpu_threads(self.num_threads):
            yield

    def _run_on(self, device: str) -> torch.device:
        self.device = resolve_device(device)
        return self.device


class TrainedModel(NetworkModel, PerturbationModel):
    """Base class of models that train networks: the constructor takes the hyperparameters of
    ``Params`` as keyword arguments, plus the runtime options as defaults for ``fit``.

    Subclasses set ``Params`` (a :class:`Hyperparameters` subclass; read as ``self.params``),
    implement ``_fit`` with :meth:`_seed`, :meth:`_seeded` and :meth:`_train`, store each trained
    network's history in ``self._histories``, and extend :meth:`_learned` and :meth:`_restore`
    (calling ``super()``) with what else they learn.

    Args:
        spec: obs keys of the dataset.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        num_threads: torch CPU threads while fitting and predicting; None keeps torch's setting
            (one per core). Use 1 when other processes busy the cores: threads that wait on each
            other then slow training down many times over.
        progress: report each epoch while training (a progress bar on a terminal, an INFO record
            of the ``mtpert.train`` logger otherwise).
        **hparams: the fields of ``Params``.
    """

    def __init__(
        self,
        spec: DatasetSpec,
        *,
        device: str = "auto",
        num_threads: int | None = None,
        progress: bool = True,
        **hparams: Any,
    ) -> None:
        self._configure(hparams, device=device, num_threads=num_threads, progress=progress)
        super().__init__(spec, **asdict(self.params))
        self._histories: list[pd.DataFrame] = []

    @classmethod
    def parameters(cls) -> dict[str, inspect.Parameter]:
        """The family's own hyperparameters, then the training settings and seed, then the
        runtime options."""
        hints = get_type_hints(cls.Params)
        hyper = {
            f.name: inspect.Parameter(
                f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name]
            )
            for f in cls._ordered_fields()
        }
        runtime = {n: p for n, p in super().parameters().items() if p.kind is p.KEYWORD_ONLY}
        return hyper | runtime

    # ------------------------------------------------------------------ public API
    @property
    def history(self) -> pd.DataFrame:
        """Per-epoch training history: ``epoch``, ``lr``, ``train_<term>`` and ``val_<term>``
        losses (several networks: one block of rows each)."""
        return pd.concat(self._fitted_histories(), ignore_index=True)

    def fit_summary(self) -> dict[str, float]:
        """Fitted values (``n_params``), ``epochs`` run (summed over the networks trained), and
        each loss term of the last epoch (``final_<term>``, averaged over the networks)."""
        histories = self._fitted_histories()
        last = pd.DataFrame([h.iloc[-1] for h in histories])
        terms = [c for c in last.columns if c.startswith(("train_", "val_"))]
        return {
            **super().fit_summary(),
            "epochs": float(sum(len(h) for h in histories)),
            **{f"final_{c}": float(last[c].mean()) for c in terms},
        }

    # ------------------------------------------------------------------ for subclasses
    def _predict_cells(self, predict: Callable[[torch.Tensor], torch.Tensor], cells: CellData) -> np.ndarray:
        """``predict`` (a model's ``prediction_function``) applied to ``cells`` batch by batch on the
        model's device, without gradients, clipped at 0 (expression is never negative)."""
        with torch.no_grad():
            out = [predict(b.x).clamp_min(0.0).cpu().numpy() for b in cells.batches(PREDICT_BATCH, device=self.device)]
        return np.concatenate(out)

    @contextmanager
    def sampling_dropout(self, seed: int = 0) -> Iterator[None]:
        """Predict with dropout on (Monte Carlo dropout, Gal & Ghahramani 2016): within the block,
        each prediction is one random draw of the network's dropout masks, from ``seed`` on.

        Raises:
            ConfigError: the fitted networks have no dropout (or its rate is 0).
        """
        layers = [
            m for net in vars(self).values() if isinstance(net, nn.Module)
            for m in net.modules() if isinstance(m, nn.Dropout) and m.p > 0
        ]  # fmt: skip
        if not layers:
            raise ConfigError(f"{self.name} has no dropout to sample (fit it with dropout > 0, or use an ensemble over seeds).")
        state = torch.get_rng_state()
        torch.manual_seed(seed)
        for layer in layers:
            layer.train()
        try:
            yield
        finally:
            for layer in layers:
                layer.eval()
            torch.set_rng_state(state)

    def search_space(self) -> dict[str, Distribution]:
        """The learning rate, a decade either side of the family's default; families add their own."""
        return {"lr": FloatRange(self.params.lr / 10, self.params.lr * 10, log=True)}

    def _learned(self) -> dict[str, Any]:
        """The training histories; subclasses add what else they learned."""
        return {"history": [h.to_dict(orient="list") for h in self._histories]}

    def _restore(self, learned: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """The training histories; subclasses restore the rest (a model with one network saved
        before histories were kept in a list stored its history alone)."""
        saved = learned["history"]
        self._histories = [pd.DataFrame(h) for h in ([saved] if isinstance(saved, dict) else saved)]

    def _fitted_histories(self) -> list[pd.DataFrame]:
        if not self._histories:
            raise NotFittedError(f"{self.name}: fit the model to get a training history.")
        return self._histories
