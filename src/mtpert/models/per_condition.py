"""Models that learn one control -> perturbed translation per perturbation.

Two-domain translators from the literature (scPreGAN, scButterfly) map control cells to the cells
of one perturbation. For data with several perturbations (or doses), :class:`PerConditionModel`
trains one such network per (condition, dose) on the control cells and that perturbation's cells,
and predicts with the network of the condition asked for. The network does the rest: it is an
``nn.Module`` trained by :func:`mtpert.train.train` (see :class:`mtpert.train.Trainable`) with a
``translate(x)`` method mapping control expression to perturbed expression.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import fields
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from torch import Tensor, nn

from mtpert.data.spec import DatasetSpec
from mtpert.data.split import condition_mask, condition_values
from mtpert.errors import DataError
from mtpert.models.base import (
    PREDICT_BATCH,
    NotFittedError,
    PerturbationModel,
    check_weights,
    history_summary,
)
from mtpert.train.data import CellData, cell_matrix
from mtpert.train.loop import TrainConfig, cpu_threads, resolve_device

ConditionKey = tuple[str, float | None]


class PerConditionModel(PerturbationModel):
    """Base class: one network per perturbation (condition, dose), each trained on its own.

    Subclasses pass ``hidden``, ``latent_dim``, the :class:`~mtpert.train.TrainConfig` settings,
    ``device``, ``num_threads`` and ``seed`` (read as :class:`MultiTaskModel` reads them) among
    their keyword arguments, and implement :meth:`_build` and :meth:`_fit_condition` (and
    :meth:`_prepare` for what their networks share).
    """

    def __init__(self, spec: DatasetSpec, **hparams: Any) -> None:
        hidden = tuple(int(h) for h in hparams["hidden"])
        if not hidden or min(hidden) < 1 or hparams["latent_dim"] < 1:
            raise ValueError(
                f"hidden needs at least one positive width and latent_dim >= 1; got {hidden}, "
                f"{hparams['latent_dim']}."
            )
        super().__init__(spec, **{**hparams, "hidden": list(hidden)})
        self.train_config = TrainConfig(
            **{f.name: hparams[f.name] for f in fields(TrainConfig) if f.name in hparams}
        )
        self.device = resolve_device(hparams["device"])
        self.keys: list[ConditionKey] = []
        self.nets: list[nn.Module] = []
        self._histories: list[dict[str, list[float]]] = []

    @property
    def history(self) -> pd.DataFrame:
        """Training history of every per-condition network, with ``condition`` and ``dose`` columns."""
        if not self._histories:
            raise NotFittedError(f"{self.name}: fit the model to get a training history.")
        return pd.concat(
            [
                pd.DataFrame(h).assign(condition=c, dose=np.nan if d is None else d)
                for (c, d), h in zip(self.keys, self._histories, strict=True)
            ],
            ignore_index=True,
        )

    def fit_summary(self) -> dict[str, float]:
        """Fitted values of every network, epochs summed over the networks (all training stages),
        and each loss term of their last epoch, averaged over the networks."""
        histories = [pd.DataFrame(h) for h in self._histories]
        return {**super().fit_summary(), **history_summary(histories)}

    # ------------------------------------------------------------------ subclass hooks
    @abstractmethod
    def _build(self) -> nn.Module:
        """A fresh network (from the fitted state that is not a tensor, e.g. the genes)."""

    @abstractmethod
    def _fit_condition(
        self, train: AnnData, val: AnnData | None, seed: int, generator: torch.Generator
    ) -> tuple[nn.Module, pd.DataFrame]:
        """Train one network on ``train``: control cells and the cells of one perturbation.

        ``val`` holds the validation cells of the same conditions (None if there are none).
        Returns the trained network and its history.
        """

    def _learned_extra(self) -> dict[str, Any]:
        """What else the subclass learned that is not a tensor; restored by :meth:`_restore_extra`."""
        return {}

    def _restore_extra(self, learned: dict[str, Any]) -> None:
        """Inverse of :meth:`_learned_extra`."""

    # ------------------------------------------------------------------ PerturbationModel hooks
    def _fit(self, train: AnnData, val: AnnData | None) -> None:
        spec = self.spec
        self.keys = condition_values(train, spec, np.ones(train.n_obs, dtype=bool))
        seed = self.hparams["seed"]
        seed = seed if seed is not None else int(torch.randint(2**31 - 1, (1,)).item())
        self.nets, self._histories = [], []
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with cpu_threads(self.hparams["num_threads"]):
            self._prepare(train)
            for i, key in enumerate(self.keys):
                cells = self._cells_of(train, key)
                val_cells = self._cells_of(val, key) if val is not None else None
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(seed + i)
                    generator = torch.Generator().manual_seed(seed + i)
                    net, history = self._fit_condition(cells, val_cells, seed + i, generator)
                self.nets.append(net.eval())
                self._histories.append({k: [float(v) for v in history[k]] for k in history.columns})

    def _prepare(self, train: AnnData) -> None:
        """Learn what every per-condition network shares (before any is built); none by default."""

    def _predict(self, control: AnnData, condition: str, dose: float | None) -> np.ndarray:
        if not self.nets:
            raise NotFittedError(f"{self.name}: call fit first.")
        if self.spec.dose_key is None and dose is not None:
            raise DataError(
                "This model was trained without doses (the spec has no dose_key); leave dose=None."
            )
        net = self.nets[self._key_index(condition, dose)]
        cells = CellData(cell_matrix(control), np.zeros(control.n_obs, dtype=np.int64))
        with torch.no_grad(), cpu_threads(self.hparams["num_threads"]):
            out = [
                net.translate(batch.x).clamp_min(0.0).cpu().numpy()  # type: ignore[operator]
                for batch in cells.batches(PREDICT_BATCH, device=self.device)
            ]
        return np.concatenate(out)

    def _learned(self) -> dict[str, Any]:
        return {
            "keys": [list(k) for k in self.keys],
            "history": self._histories,
            **self._learned_extra(),
        }

    def _tensors(self) -> dict[str, Tensor]:
        return {
            f"{i}.{k}": v for i, net in enumerate(self.nets) for k, v in net.state_dict().items()
        }

    def _restore(self, learned: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        self.keys = [(c, d) for c, d in learned["keys"]]
        self._histories = [{k: list(v) for k, v in h.items()} for h in learned["history"]]
        self._restore_extra(learned)
        self.nets = [self._build() for _ in self.keys]
        check_weights(tensors, {k: v.shape for k, v in self._tensors().items()})
        for i, net in enumerate(self.nets):
            prefix = f"{i}."
            net.load_state_dict(
                {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            )
            net.to(self.device).eval()

    # ------------------------------------------------------------------ helpers
    def _cells_of(self, adata: AnnData, key: ConditionKey) -> AnnData:
        """Control cells and the cells of perturbation ``key``."""
        return adata[self.spec.is_control(adata) | condition_mask(adata, self.spec, *key)]

    def _key_index(self, condition: str, dose: float | None) -> int:
        for i, (c, d) in enumerate(self.keys):
            if c == condition and (d is None or (dose is not None and np.isclose(d, dose))):
                return i
        known = [c if d is None else f"{c}@{d:g}" for c, d in self.keys]
        raise DataError(
            f"{self.name} trains one network per condition (and dose) and saw no "
            f"'{condition}'{'' if dose is None else f' @ {dose:g}'} cells in training, so it cannot "
            f"predict it; known: {known}."
        )


def gene_moments(adata: AnnData) -> tuple[Tensor, Tensor]:
    """Per-gene mean and standard deviation of ``adata``'s expression (float32 tensors).

    The originals' output layers end in a normalization whose affine parameters start at 0 shift
    and unit scale: right for the per-gene scaled data they were written for. On log data, the
    networks here start those parameters at the genes' mean and standard deviation instead, the
    same starting point in log space (otherwise the early epochs are spent learning the gene means).
    """
    X = cell_matrix(adata)
    mean = np.asarray(X.mean(axis=0)).ravel()
    square = X.multiply(X).mean(axis=0) if hasattr(X, "multiply") else (X**2).mean(axis=0)
    sd = np.sqrt(np.maximum(np.asarray(square).ravel() - mean**2, 0.0))
    return torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(
        np.maximum(sd, 1e-3), dtype=torch.float32
    )


def domain_mean(values: Tensor, domain: Tensor) -> Tensor:
    """Sum over the domains present in the batch of the mean of ``values`` within each domain.

    The originals draw equal-sized minibatches from each domain and add the per-domain mean
    losses; on a mixed minibatch this weighs each domain the same however many cells it has.
    """
    total = values.new_zeros(())
    for k in domain.unique():
        total = total + values[domain == k].mean()
    return total
