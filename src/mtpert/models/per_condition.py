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
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from torch import Tensor, nn

from mtpert.data.split import condition_mask, condition_values
from mtpert.errors import DataError
from mtpert.models.base import PREDICT_BATCH, NotFittedError, check_weights
from mtpert.models.trained import Hyperparameters, TrainedModel
from mtpert.train.data import CellData, cell_matrix

ConditionKey = tuple[str, float | None]


@dataclass(frozen=True, kw_only=True)
class PerConditionParams(Hyperparameters):
    """Training defaults of the two-domain translators from the literature, as their authors
    train them: no weight decay and no warm-up, one discriminator step per generator step, and
    up to 200 epochs."""

    weight_decay: float = 0.0
    max_epochs: int = 200
    warmup_epochs: int = 0
    disc_steps: int = 1


class PerConditionModel(TrainedModel):
    """Base class: one network per perturbation (condition, dose), each trained on its own.

    Subclasses set ``Params`` (a :class:`PerConditionParams`; see
    :class:`~mtpert.models.trained.TrainedModel`) and implement
    :meth:`_build` and :meth:`_fit_condition` (and :meth:`_prepare` for what their networks
    share). The network of the ``i``-th perturbation is trained with seed ``seed + i``.
    """

    keys: list[ConditionKey]
    """The (condition, dose) of each network."""
    nets: list[nn.Module]
    """The trained network of each key."""

    @property
    def history(self) -> pd.DataFrame:
        """Training history of every per-condition network, with ``condition`` and ``dose`` columns."""
        return pd.concat(
            [
                h.assign(condition=c, dose=np.nan if d is None else d)
                for (c, d), h in zip(self.keys, self._fitted_histories(), strict=True)
            ],
            ignore_index=True,
        )

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
        Called inside :meth:`~mtpert.models.trained.TrainedModel._seeded` with ``seed``;
        ``generator`` orders the minibatches. Returns the trained network and its history.
        """

    def _prepare(self, train: AnnData) -> None:
        """Learn what every per-condition network shares (before any is built); none by default."""

    # ------------------------------------------------------------------ PerturbationModel hooks
    def _fit(self, train: AnnData, val: AnnData | None) -> None:
        self.keys = condition_values(train, self.spec, np.ones(train.n_obs, dtype=bool))
        seed = self._seed()
        self.nets, self._histories = [], []
        self._prepare(train)
        for i, key in enumerate(self.keys):
            cells = self._cells_of(train, key)
            val_cells = self._cells_of(val, key) if val is not None else None
            with self._seeded(seed + i) as generator:
                net, history = self._fit_condition(cells, val_cells, seed + i, generator)
            self.nets.append(net.eval())
            self._histories.append(history)

    def _predict(self, control: AnnData, condition: str, dose: float | None) -> np.ndarray:
        if not self.nets:
            raise NotFittedError(f"{self.name}: call fit first.")
        if self.spec.dose_key is None and dose is not None:
            raise DataError(
                "This model was trained without doses (the spec has no dose_key); leave dose=None."
            )
        net = self.nets[self._key_index(condition, dose)]
        cells = CellData(cell_matrix(control), np.zeros(control.n_obs, dtype=np.int64))
        with torch.no_grad():
            out = [
                net.translate(batch.x).clamp_min(0.0).cpu().numpy()  # type: ignore[operator]
                for batch in cells.batches(PREDICT_BATCH, device=self.device)
            ]
        return np.concatenate(out)

    def _learned(self) -> dict[str, Any]:
        return {**super()._learned(), "keys": [list(k) for k in self.keys]}

    def _tensors(self) -> dict[str, Tensor]:
        return {
            f"{i}.{k}": v for i, net in enumerate(self.nets) for k, v in net.state_dict().items()
        }

    def _restore(self, learned: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        super()._restore(learned, tensors)
        self.keys = [(c, d) for c, d in learned["keys"]]
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
