"""scGen and scVIDR: a VAE trained on every cell, and a perturbation as a shift in its latent space.

Both literature models encode the control cells of the target cell type, add a latent shift
``delta`` and decode. They share the network and the training; they differ only in how ``delta``
is estimated from the training cells' latent means, so they are one class with two options:

==============  ==============  =============  ==================================================
preset          shift           dose_scaling   delta for the target's control cells
==============  ==============  =============  ==================================================
scgen           mean            none           mean perturbed minus mean control latent, each a
                                               cell-type-balanced average (Lotfollahi et al. 2019)
scvidr          regression      none           a linear regression, fit across training cell
                                               types, from a type's control centroid to its
                                               delta, evaluated at the target's control centroid
                                               (Kana et al. 2023)
scvidr_multi    regression      log            the highest dose's regressed delta, scaled by
                                               ``log1p(dose) / log1p(highest dose)`` (Kana et al.)
==============  ==============  =============  ==================================================

Without ``dose_scaling`` a delta is estimated for every (condition, dose) of the training cells
(scVIDR's "one dose at a time"); with it, one per condition, from its highest dose.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from sklearn.linear_model import LinearRegression
from torch import Tensor, nn

from mtpert.errors import DataError
from mtpert.models.base import PREDICT_BATCH, NotFittedError, check_choice, check_weights
from mtpert.models.search import Choice, Distribution, FloatRange
from mtpert.models.trained import Hyperparameters, TrainedModel
from mtpert.train.data import Batch, CellData, cell_matrix
from mtpert.train.loop import cpu_threads

Shift = Literal["mean", "regression"]
DoseScaling = Literal["none", "log"]
ConditionKey = tuple[str, float | None]

VAR_EPS = 1e-4
"""Added to the posterior variance, as in scvi-tools' encoder that scGen and scVIDR use."""


def _blocks(n_in: int, widths: tuple[int, ...], dropout: float) -> nn.Sequential:
    """Linear -> BatchNorm -> LeakyReLU -> dropout per width: the originals' fully connected layers
    (BatchNorm momentum 0.01 and eps 1e-3 in torch's convention, as scvi-tools sets them)."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [
            nn.Linear(n_in, width),
            nn.BatchNorm1d(width, momentum=0.01, eps=1e-3),
            nn.LeakyReLU(),
            nn.Dropout(dropout),
        ]
        n_in = width
    return nn.Sequential(*layers)


class ScGenVAE(nn.Module):
    """The scGen/scVIDR VAE: Gaussian encoder, decoder to expression, no condition anywhere.

    Loss per cell, averaged over the batch: ``0.5 * sum of squared errors + 0.5 * kl_weight *
    KL(q(z|x) || N(0, I))``. Implements :class:`mtpert.train.Trainable`.
    """

    monitored = ("recon", "kl")
    discriminator = None

    def __init__(
        self,
        n_genes: int,
        *,
        hidden: tuple[int, ...],
        latent_dim: int,
        dropout: float,
        kl_weight: float,
    ) -> None:
        super().__init__()
        self.kl_weight = kl_weight
        self.encoder = _blocks(n_genes, hidden, dropout)
        self.mean = nn.Linear(hidden[-1], latent_dim)
        self.logvar = nn.Linear(hidden[-1], latent_dim)
        self.decoder = nn.Sequential(
            _blocks(latent_dim, hidden[::-1], dropout), nn.Linear(hidden[0], n_genes)
        )

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean and variance."""
        h = self.encoder(x)
        return self.mean(h), self.logvar(h).exp() + VAR_EPS

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def losses(self, batch: Batch) -> dict[str, Tensor]:
        if self.training and len(batch) < 2:  # batch normalization needs two cells: skip the step
            zero = batch.x.new_zeros(())
            return {"recon": zero, "kl": zero}
        mean, var = self.encode(batch.x)
        z = mean + torch.randn_like(mean) * var.sqrt() if self.training else mean
        sse = (self.decode(z) - batch.x).pow(2).sum(-1)
        kl = 0.5 * (mean.pow(2) + var - 1.0 - var.log()).sum(-1)
        return {"recon": 0.5 * sse.mean(), "kl": 0.5 * self.kl_weight * kl.mean()}


@dataclass(frozen=True, kw_only=True)
class LatentShiftParams(Hyperparameters):
    """Hyperparameters of :class:`LatentShiftModel`, besides the seed and the training settings of
    :class:`~mtpert.train.TrainConfig`, whose defaults here are the originals': minibatches of 32,
    patience 25, weight decay 1e-6, no warm-up and no gradient clipping.

    Attributes:
        shift: ``mean`` (scGen) or ``regression`` (scVIDR).
        dose_scaling: ``none`` or ``log`` (needs a dose key in the spec).
        hidden: widths of the encoder's hidden layers (the decoder mirrors them).
        latent_dim: latent size.
        dropout: dropout after each hidden layer.
        kl_weight: weight of the KL term (the original's ``alpha``).
    """

    shift: Shift = "mean"
    dose_scaling: DoseScaling = "none"
    hidden: tuple[int, ...] = (800, 800)
    latent_dim: int = 100
    dropout: float = 0.2
    kl_weight: float = 5e-5
    batch_size: int = 32
    patience: int = 25
    weight_decay: float = 1e-6
    warmup_epochs: int = 0
    grad_clip: float = math.inf

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("shift", self.shift, get_args(Shift))
        check_choice("dose_scaling", self.dose_scaling, get_args(DoseScaling))
        self._widths("hidden")
        self._positive("latent_dim")


class LatentShiftModel(TrainedModel):
    """scGen / scVIDR: decode the target's control latents plus a shift learned from other types.

    scGen (Lotfollahi, Wolf & Theis, Nature Methods 16, 715-721, 2019) and scVIDR (Kana, Chen,
    Bhattacharya et al., Patterns 4(12), 100817, 2023; github BhattacharyaLab/scVIDR) as their code
    defines them (theislab/scgen 2.x on scvi-tools; scVIDR's ``vidr``): the defaults are theirs:
    two hidden layers of 800 units, latent 100, dropout 0.2, KL weight 5e-5, learning rate 1e-3,
    minibatches of 32, up to 100 epochs with early stopping after 25 without improvement (scGen's
    tutorial; scVIDR's scripts use batches of 128).

    The network is theirs, not mtpert's FiLM blocks: fully connected layers with batch
    normalization, leaky ReLU and dropout, a Gaussian latent, a linear output layer. It is trained
    on every training cell, control and perturbed alike, without any condition input. Latents
    are posterior means. The cells used for latent arithmetic are all cells
    given to ``fit`` (training and validation), as the originals use every cell given to the model.

    * ``shift="mean"`` (scGen): ``delta`` = mean perturbed latent - mean control latent, each
      averaged with equal weight over the cell types present (the original resamples every type
      to the size of the largest and then subsamples both sides to equal size; we take the
      expectation of that resampling, which removes its sampling noise). As in the original, the
      control side includes the target's own control cells when they are among the fit cells.
    * ``shift="regression"`` (scVIDR): over the cell types with control and perturbed cells, an
      ordinary least-squares regression (scikit-learn ``LinearRegression``, minimum-norm when the
      latent has more dimensions than there are types, as in the original) maps a type's mean
      control latent to its delta; the target's delta is its prediction at the mean latent of
      the control cells passed to ``predict``.
    * ``dose_scaling="log"`` (scVIDR multi-dose): the delta of each condition's highest training
      dose ``D`` is scaled to dose ``d`` by ``(log1p(d) - log1p(c)) / (log1p(D) - log1p(c))``,
      with ``c`` the control dose; the original writes ``log1p(d) / log1p(D)``, the same for
      ``c = 0``. Any dose can then be predicted. ``none``: one delta per (condition, dose) seen.

    Deviations from the originals, and why:

    * Training runs in mtpert's loop (:func:`mtpert.train.train`), so every model is trained
      alike: AdamW with weight decay 1e-6 (scvi-tools: Adam, L2 1e-6, eps 0.01), learning rate
      halved after 8 epochs without validation improvement (none in the original), early stopping
      on the validation loss (the training objective, where scvi-tools watches the unweighted
      ELBO) on the validation cells of the split (scvi-tools holds out 10% of the cells it is
      given), and the best epoch's weights restored (scvi-tools keeps the last).
    * A final minibatch of a single cell is skipped (batch normalization needs two cells).
    * Predictions are clipped at 0, the floor of log1p data (the originals return the decoder's
      raw output).
    * scVIDR single-dose trains one VAE per dose; here one VAE learns every condition and dose,
      and the deltas are estimated per (condition, dose).
    * The originals predict one condition at a time from a named control and treated label; here
      ``fit`` estimates every condition's delta at once.

    Keyword arguments: the fields of :class:`LatentShiftParams` and the runtime options of
    :class:`~mtpert.models.trained.TrainedModel`.
    """

    Params = LatentShiftParams
    params: LatentShiftParams
    net: ScGenVAE | None = None
    conditions: list[ConditionKey]
    """The (condition, dose) of each shift."""
    coef: np.ndarray
    """(n_conditions, latent_dim, latent_dim): each shift's slope on the target's control centroid."""
    intercept: np.ndarray
    """(n_conditions, latent_dim): each shift's intercept."""

    @property
    def name(self) -> str:  # type: ignore[override]
        """``scgen`` or ``scvidr``, with ``_multi`` for log-dose scaling."""
        base = {"mean": "scgen", "regression": "scvidr"}[self.params.shift]
        return base + ("_multi" if self.params.dose_scaling == "log" else "")

    @property
    def predicts_unseen_doses(self) -> bool:  # type: ignore[override]
        """With log-dose scaling; otherwise a delta exists only for each dose seen."""
        return self.params.dose_scaling == "log"

    # ------------------------------------------------------------------ fit
    def search_space(self) -> dict[str, Distribution]:
        """Learning rate, latent size, dropout and the KL weight (scGen's and scVIDR's own knobs)."""
        return super().search_space() | {
            "latent_dim": Choice((25, 50, 100, 200)),
            "dropout": FloatRange(0.0, 0.3),
            "kl_weight": FloatRange(1e-6, 1e-3, log=True),
        }

    def _fit(self, train_data: AnnData, val: AnnData | None) -> None:
        if self.params.dose_scaling == "log" and self.spec.dose_key is None:
            raise DataError(
                f"{self.name} scales the shift by dose, but the spec has no dose_key; set "
                "DatasetSpec(dose_key=...) or use dose_scaling='none' (scgen, scvidr)."
            )
        seed = self._seed()
        data = _cells(train_data)
        val_data = _cells(val) if val is not None and val.n_obs else None
        with self._seeded(seed) as generator:
            self.net = self._build(train_data.n_vars)
            self._histories = [self._train(self.net, data, val_data, generator)]
        parts = [train_data] if val is None or not val.n_obs else [train_data, val]
        z = np.concatenate([self.encode(part) for part in parts])
        # the shifts need only the latents and the labels: X (maybe on disk) is not concatenated
        self._estimate_shifts(z, AnnData(obs=pd.concat([part.obs for part in parts])))

    def _estimate_shifts(self, z: np.ndarray, adata: AnnData) -> None:
        """One (coef, intercept) per condition key: ``delta(z) = intercept + coef @ z`` for a
        target whose control cells have mean latent ``z``; ``z`` holds the latents of the cells
        labelled in ``adata.obs`` (``coef`` is zero for ``mean``)."""
        spec = self.spec
        cell_type = adata.obs[spec.cell_type_key].astype(str).to_numpy()
        is_control = spec.is_control(adata)
        control_means = _group_means(z, cell_type, is_control)
        self.conditions, coefs, intercepts = [], [], []
        for key in self._targets(adata, ~is_control):
            key_means = _group_means(z, cell_type, self._in_key(adata, key) & ~is_control)
            paired = sorted(set(key_means) & set(control_means))
            if self.params.shift == "mean":
                coef = np.zeros((z.shape[1], z.shape[1]))
                intercept = np.mean(list(key_means.values()), 0) - np.mean(
                    list(control_means.values()), 0
                )
            elif paired:
                centroids = np.stack([control_means[t] for t in paired])
                deltas = np.stack([key_means[t] - control_means[t] for t in paired])
                regression = LinearRegression().fit(centroids, deltas)
                coef, intercept = regression.coef_, regression.intercept_
            else:
                warnings.warn(
                    f"{self.name}: no training cell type has both control and '{_label(*key)}' cells; "
                    "that condition cannot be predicted.",
                    stacklevel=4,
                )
                continue
            self.conditions.append(key)
            coefs.append(coef)
            intercepts.append(intercept)
        if not self.conditions:
            raise DataError(
                f"{self.name}: no perturbed condition has a training cell type with control cells too; "
                "scVIDR regresses each type's shift on its control latent and needs both."
            )
        self.coef = np.asarray(coefs, dtype=np.float32)
        self.intercept = np.asarray(intercepts, dtype=np.float32)

    def _targets(self, adata: AnnData, perturbed: np.ndarray) -> list[ConditionKey]:
        """Condition keys to estimate a delta for: every one seen, or each condition's highest dose."""
        obs = adata.obs.loc[perturbed]
        conditions = obs[self.spec.condition_key].astype(str)
        if self.spec.dose_key is None:
            return [(c, None) for c in sorted(conditions.unique())]
        doses = obs[self.spec.dose_key].astype(float)
        if self.params.dose_scaling == "none":
            return sorted({(c, float(d)) for c, d in zip(conditions, doses, strict=True)})
        highest = doses.groupby(conditions.to_numpy()).max()
        if (highest <= self.spec.control_dose).any():
            raise DataError(
                f"Log-dose scaling needs perturbed doses above the control dose ({self.spec.control_dose}); "
                f"highest doses: {highest.to_dict()}."
            )
        return [(str(c), float(d)) for c, d in highest.items()]

    def _in_key(self, adata: AnnData, key: ConditionKey) -> np.ndarray:
        """Cells of condition ``key`` (at its dose, when the spec has doses)."""
        mask = (adata.obs[self.spec.condition_key].astype(str) == key[0]).to_numpy()
        if self.spec.dose_key is not None:
            mask &= np.isclose(adata.obs[self.spec.dose_key].to_numpy(dtype=float), key[1])
        return mask

    # ------------------------------------------------------------------ predict
    def _predict(self, control: AnnData, condition: str, dose: float | None) -> np.ndarray:
        if self.spec.dose_key is None and dose is not None:
            raise DataError(
                "This model was trained without doses (the spec has no dose_key); leave dose=None."
            )
        index, scale = self._shift_index(condition, dose)
        net = self._fitted_net()
        z = self.encode(control)
        delta = scale * (self.intercept[index] + self.coef[index] @ z.mean(0))
        with torch.no_grad():
            latent = torch.as_tensor(z + delta, dtype=torch.float32)
            out = [
                net.decode(part.to(self.device)).clamp_min(0.0).cpu().numpy()
                for part in latent.split(PREDICT_BATCH)
            ]
        return np.concatenate(out)

    def _shift_index(self, condition: str, dose: float | None) -> tuple[int, float]:
        """Row of the delta to use for ``condition`` at ``dose``, and its dose scale factor."""
        if self.params.dose_scaling == "none":
            key = (condition, None if dose is None else float(dose))
            if key not in self.conditions:
                raise DataError(
                    f"{self.name} saw no '{_label(*key)}' cells in training and cannot predict it; known: "
                    f"{[_label(*k) for k in self.conditions]}"
                    + (" (dose_scaling='log' interpolates doses)." if dose is not None else ".")
                )
            return self.conditions.index(key), 1.0
        names = [c for c, _ in self.conditions]
        if condition not in names:
            raise DataError(
                f"{self.name} was not trained on condition '{condition}'; known: {names}."
            )
        if dose is None or dose < 0:
            raise DataError(f"dose must be >= 0, got {dose}.")
        index = names.index(condition)
        base = np.log1p(self.spec.control_dose)
        highest = self.conditions[index][1]
        return index, float((np.log1p(dose) - base) / (np.log1p(highest) - base))

    def encode(self, adata: AnnData) -> np.ndarray:
        """Latent states (posterior means) of ``adata``'s cells, e.g. for a UMAP of the latent."""
        net = self._fitted_net()
        cells = _cells(self._aligned(adata))
        with torch.no_grad(), cpu_threads(self.num_threads):
            return np.concatenate(
                [
                    net.encode(b.x)[0].cpu().numpy()
                    for b in cells.batches(PREDICT_BATCH, device=self.device)
                ]
            )

    # ------------------------------------------------------------------ save / load
    def _learned(self) -> dict[str, Any]:
        return {**super()._learned(), "conditions": [list(k) for k in self.conditions]}

    def _tensors(self) -> dict[str, Tensor | np.ndarray]:
        return {
            **{f"net.{k}": v for k, v in self._fitted_net().state_dict().items()},
            "coef": self.coef,
            "intercept": self.intercept,
        }

    def _restore(self, learned: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        super()._restore(learned, tensors)
        self.conditions = [(c, d) for c, d in learned["conditions"]]
        self.net = self._build(len(self.genes))  # type: ignore[arg-type]
        n, d = len(self.conditions), self.params.latent_dim
        check_weights(
            tensors,
            {
                **{f"net.{k}": v.shape for k, v in self.net.state_dict().items()},
                "coef": (n, d, d),
                "intercept": (n, d),
            },
        )
        self.coef = tensors["coef"].cpu().numpy()
        self.intercept = tensors["intercept"].cpu().numpy()
        self.net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        self.net.to(self.device).eval()

    # ------------------------------------------------------------------ helpers
    def _build(self, n_genes: int) -> ScGenVAE:
        p = self.params
        return ScGenVAE(
            n_genes, hidden=p.hidden, latent_dim=p.latent_dim, dropout=p.dropout, kl_weight=p.kl_weight
        )

    def _fitted_net(self) -> ScGenVAE:
        if self.net is None:
            raise NotFittedError(f"{self.name}: call fit first.")
        return self.net


def _cells(adata: AnnData) -> CellData:
    """``adata``'s cells for the VAE, which takes no condition (every index is 0)."""
    return CellData(cell_matrix(adata), np.zeros(adata.n_obs, dtype=np.int64))


def _group_means(z: np.ndarray, group: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """Mean latent of the cells in ``mask``, per group."""
    return {g: z[mask & (group == g)].mean(0) for g in np.unique(group[mask])}


def _label(condition: str, dose: float | None) -> str:
    return condition if dose is None else f"{condition}@{float(dose)}"
