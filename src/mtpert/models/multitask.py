"""The multi-task autoencoder family: one model trained on every condition at once.

An encoder maps a cell to a latent state; a decoder steered by a condition vector (see
:mod:`mtpert.models.film`) maps the state back to expression under any condition the model
knows. To predict a held-out cell type, its control cells are encoded and decoded under the
target condition. The thesis' eight variants are three independent options of one class:

==============  ==================  ===============  ==================
preset          latent              regularizer      objective
==============  ==================  ===============  ==================
mtae            deterministic       none             reconstruction
mtvae           variational         none             reconstruction
mtae_adv        deterministic       adversarial      reconstruction
mtae_advg       deterministic       gaussian         reconstruction
mtae_ot         deterministic       none             ot
mtvae_ot        variational         none             ot
mtae_plus_ot    deterministic       none             both
mtvae_plus_ot   variational         none             both
==============  ==================  ===============  ==================

plus the conditioning mechanism (``film`` by default). Other combinations work too and are named
from their options (e.g. ``mtvae_adv_ot_concat``).

A condition may combine perturbations (``"A+B"``, with the spec's ``combination_separator``): it is
encoded as the set of its parts (:class:`~mtpert.models.film.ConditionEncoder`), so a pair never
seen together is predicted from its parts (by every conditioning but ``multihead``).

By default a prediction is each control cell plus the decoded change (``prediction="residual"``),
and its mean change is bounded by the largest the model predicts for a training group that has the
condition (``bound_change``). Without them, on a screen of three cell lines with small effects
(McFaline 2023, a line held out), the decoder extrapolated to the new line's cells with changes
3-4 times any it was trained on, and decoded cells were far narrower than real ones: R² of the
mean expression 0.53 against 0.96 for predicting no change (``benchmarks/screens_defaults/screens_defaults.md``).

With ``anchor`` set (preset ``mtae_anchored``), the predicted change is a simple baseline's plus a
gated correction the network learns on top of it (:mod:`mtpert.models.anchor`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData
from sklearn.decomposition import PCA
from torch import Tensor, nn

from mtpert._array import dense
from mtpert.data.backed import OnDisk
from mtpert.data.spec import DatasetSpec
from mtpert.errors import DataError
from mtpert.models.anchor import (
    ANCHOR_MIN_CELLS,
    AnchorKind,
    Anchors,
    AnchorShrinkage,
    ControlReference,
    Evidence,
    LinearAnchor,
    anchor_per_cell,
    anchor_weights,
    gate,
    gene_gates_if_they_pay,
    mean_and_noise,
)
from mtpert.models.base import (
    PREDICT_BATCH,
    PREDICTION_KEY,
    NotFittedError,
    check_choice,
    check_weights,
)
from mtpert.models.film import CONDITIONINGS, ConditionedMLP, ConditionEncoder, Conditioning
from mtpert.models.linear import LinearModel
from mtpert.models.search import Choice, Distribution, FloatRange
from mtpert.models.simple import ConditionKey, MeanChanges, key_string, mean_changes
from mtpert.models.trained import Hyperparameters, TrainedModel
from mtpert.train.data import Batch, CellData, cell_matrix
from mtpert.train.loop import Schedule, cpu_threads
from mtpert.train.pairing import DEFAULT_BLOCK_SIZE, pair_within_groups

Latent = Literal["deterministic", "variational"]
Regularizer = Literal["none", "adversarial", "gaussian"]
Objective = Literal["reconstruction", "ot", "both"]
Prediction = Literal["decoded", "residual"]

DEFAULT_EPOCHS = 30
DEFAULT_MIN_STEPS = 300
"""The family's training budget when ``max_epochs`` is not given: 30 epochs, or more where 30
would be fewer than 300 minibatches (small data)."""
NEAR_NO_CHANGE = 0.1
"""An anchor weight below this predicts (nearly) no change: the gate note and fit summary count it."""
INSTANCE_NOISE = 1.0
"""Standard deviation of the noise added to prior draws and latents alike before the gaussian
regularizer's discriminator. Without it the discriminator separates them perfectly within a few
epochs, its gradient stops guiding the encoder, and the latent drifts and collapses instead of
matching N(0, I) (instance noise, Sønderby et al. 2017)."""


def rows_in_memory(adata: AnnData, rows: np.ndarray | None = None) -> np.ndarray | sp.csr_matrix:
    """Rows ``rows`` (default all) of ``adata.X`` as float32 CSR or dense, read from the file
    where ``adata`` is backed (or a view of a backed AnnData)."""
    X = cell_matrix(adata)
    if isinstance(X, OnDisk):
        return X.read(np.arange(adata.n_obs) if rows is None else rows)
    return X if rows is None else X[rows]


def mean_change(control: np.ndarray, pred: np.ndarray) -> float:
    """Size of the mean change from ``control`` cells to their predictions: the root mean square
    over genes of the difference of the mean expressions."""
    return float(np.sqrt(((pred.mean(0) - control.mean(0)) ** 2).mean()))


class Standardize(nn.Module):
    """Each dimension to zero mean and unit variance over the batch (no running statistics, so
    training and validation batches are treated alike, and a batch of one cell is no error)."""

    def forward(self, z: Tensor) -> Tensor:
        return (z - z.mean(0)) / (z.std(0, unbiased=False) + 1e-5)


class MinibatchSpread(nn.Module):
    """Appends the batch's average per-dimension standard deviation to every sample.

    A discriminator that sees one latent at a time cannot tell a collapsed batch (every cell at
    the same point) from a prior sample there, so the encoder could satisfy it by collapsing;
    seeing the spread of the batch, it can (the minibatch standard deviation of Karras et al. 2018).
    """

    def forward(self, z: Tensor) -> Tensor:
        spread = z.std(0, unbiased=False).mean().expand(z.shape[0], 1)
        return torch.cat([z, spread], dim=-1)


@dataclass(frozen=True)
class Conditions:
    """The condition of each cell in a batch, as the networks take it.

    Attributes:
        code: (n, n_perturbations) multi-hot code of each cell's set of perturbations.
        dose: (n,) scaled doses, or None without doses.
        index: (n,) index of each cell's training condition (which picks ``multihead``'s output
            layer), or None for a combination the model was not trained on.
    """

    code: Tensor
    dose: Tensor | None
    index: Tensor | None

    def select(self, rows: Tensor) -> Conditions:
        """The conditions of cells ``rows``."""
        return Conditions(
            self.code[rows],
            None if self.dose is None else self.dose[rows],
            None if self.index is None else self.index[rows],
        )


class MultiTaskNet(nn.Module):
    """Encoder, condition-steered decoder and, for the regularizers, a latent discriminator.

    Implements :class:`mtpert.train.Trainable`. ``codes`` holds the multi-hot code of each training
    condition over the known perturbations (rows: conditions, index 0 control; columns:
    perturbations, index 0 control); it is derived from the condition labels, so it is not saved.
    """

    def __init__(
        self,
        n_genes: int,
        codes: Tensor,
        *,
        hidden: tuple[int, ...],
        latent_dim: int,
        dose_dim: int,
        latent: Latent,
        regularizer: Regularizer,
        objective: Objective,
        conditioning: Conditioning,
        condition_encoder: bool,
        dropout: float,
        input_dropout: float,
        kl_weight: float,
        adv_weight: float,
        control_dose: float,
        class_weight: Tensor,
    ) -> None:
        super().__init__()
        n_conditions = codes.shape[0]
        self.variational = latent == "variational"
        self.regularizer = regularizer
        self.recon = objective in ("reconstruction", "both")
        self.ot = objective in ("ot", "both")
        self.multihead = conditioning == "multihead"
        self.kl_weight = kl_weight
        self.adv_weight = adv_weight
        self.control_dose = control_dose
        self.monitored = tuple(
            k for k, on in (("recon", self.recon), ("ot", self.ot), ("kl", self.variational)) if on
        )

        self.condition = ConditionEncoder(codes.shape[1], dose_dim)
        self.encoder = ConditionedMLP(
            n_genes,
            hidden,
            latent_dim * (2 if self.variational else 1),
            conditioning=conditioning if condition_encoder else None,
            cond_dim=self.condition.dim if condition_encoder else 0,
            dropout=dropout,
            input_dropout=input_dropout,
        )
        if self.multihead:  # hidden blocks see only the dose; one output layer per condition
            block_conditioning: Conditioning | None = "concat" if dose_dim else None
            cond_dim, n_heads = dose_dim, n_conditions
        else:
            block_conditioning, cond_dim, n_heads = conditioning, self.condition.dim, 1
        self.decoder = ConditionedMLP(
            latent_dim,
            hidden[::-1],
            n_genes,
            conditioning=block_conditioning,
            cond_dim=cond_dim,
            n_heads=n_heads,
            dropout=dropout,
        )
        self.discriminator: nn.Module | None = None
        if regularizer != "none":
            width = 128
            layers = [nn.Linear(latent_dim, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU()]
            if regularizer == "adversarial":
                # standardized input: otherwise the encoder "fools" it by shrinking the latent, which
                # flattens the discriminator's logits without removing any information
                layers = [Standardize(), *layers, nn.Linear(width, n_conditions)]
            else:  # the latent's scale and spread are part of what must match N(0, I)
                layers = [MinibatchSpread(), nn.Linear(latent_dim + 1, width), *layers[1:]]
                layers.append(nn.Linear(width, 1))
            self.discriminator = nn.Sequential(*layers)
        self.register_buffer("class_weight", class_weight.float())
        self.register_buffer("codes", codes.float(), persistent=False)

    @torch.no_grad()
    def start_at_mean(self, gene_mean: Tensor) -> None:
        """Set every output bias to the mean expression, so training starts from the average cell
        rather than from zero (faster, and no early epochs spent learning the gene means)."""
        for head in self.decoder.heads:
            head.bias.copy_(gene_mean)

    # ------------------------------------------------------------------ encode / decode
    def encode(self, x: Tensor, conditions: Conditions) -> tuple[Tensor, Tensor | None]:
        """Posterior mean and log-variance (None for a deterministic latent)."""
        c = (
            self.condition(conditions.code, conditions.dose)
            if self.encoder.conditioning is not None
            else None
        )
        out = self.encoder(x, c)
        if not self.variational:
            return out, None
        mean, logvar = out.chunk(2, dim=-1)
        return mean, logvar.clamp(-10.0, 10.0)

    def sample(self, mean: Tensor, logvar: Tensor | None) -> Tensor:
        """A reparameterized draw while training; the posterior mean otherwise."""
        if logvar is None or not self.training:
            return mean
        return mean + torch.randn_like(mean) * (0.5 * logvar).exp()

    def decode(self, z: Tensor, conditions: Conditions) -> Tensor:
        """Expression of latent states ``z`` under each row's condition (and dose)."""
        if self.multihead:
            if conditions.index is None:
                raise ValueError("multihead decodes training conditions only; pass their index.")
            dose = conditions.dose
            c = self.condition.embed_dose(dose) if self.condition.dose is not None else None  # type: ignore[arg-type]
            return self.decoder(z, c, head=conditions.index)
        return self.decoder(z, self.condition(conditions.code, conditions.dose))

    def trained(self, index: Tensor, dose: Tensor | None) -> Conditions:
        """The conditions of cells under training conditions ``index`` (at scaled ``dose``)."""
        return Conditions(self.codes[index], dose, index)

    def control(self, n: int, device: torch.device) -> Conditions:
        """The condition of ``n`` control cells (at the scaled control dose)."""
        dose = (
            None
            if self.condition.dose is None
            else torch.full((n,), self.control_dose, device=device)
        )
        return self.trained(torch.zeros(n, dtype=torch.long, device=device), dose)

    def encode_control(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Encode control cells (the control code and dose, where the encoder is conditioned)."""
        return self.encode(x, self.control(x.shape[0], x.device))

    # ------------------------------------------------------------------ training
    def losses(self, batch: Batch) -> dict[str, Tensor]:
        conditions = self.trained(batch.condition, batch.dose)
        mean, logvar = self.encode(batch.x, conditions)
        z = self.sample(mean, logvar)
        terms: dict[str, Tensor] = {}
        if self.recon:
            terms["recon"] = nn.functional.mse_loss(self.decode(z, conditions), batch.x)
        if self.ot:
            terms["ot"] = self._ot_loss(batch, conditions)
        if logvar is not None:
            kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1).mean()
            terms["kl"] = self.kl_weight * kl
        if self.discriminator is not None:
            terms["adv"] = self.adv_weight * self._fooling_loss(self._clean_latent(batch))
        return terms

    def _clean_latent(self, batch: Batch) -> Tensor:
        """The latent the regularizers act on: the posterior mean without dropout, as used when
        predicting. (Dropout noise would let the encoder hide the condition in directions the
        noise swamps during training but not at prediction.)"""
        training = self.encoder.training
        self.encoder.eval()
        try:
            return self.encode(batch.x, self.trained(batch.condition, batch.dose))[0]
        finally:
            self.encoder.train(training)

    def _ot_loss(self, batch: Batch, conditions: Conditions) -> Tensor:
        """MSE of each paired cell against its control partner decoded under the cell's condition."""
        if batch.source is None or batch.paired is None:
            return batch.x.new_zeros(())
        z = self.sample(*self.encode_control(batch.source))
        return nn.functional.mse_loss(
            self.decode(z, conditions.select(batch.paired)), batch.x[batch.paired]
        )

    def _fooling_loss(self, z: Tensor) -> Tensor:
        """The encoder's adversarial term: 0 when the discriminator is fooled.

        ``adversarial``: KL divergence from the uniform distribution over conditions to the
        discriminator's prediction (bounded, unlike maximizing its error). ``gaussian``: the
        non-saturating GAN loss for latents to be taken as draws from N(0, I).
        """
        if self.regularizer == "adversarial":
            logits = self.discriminator(z)  # type: ignore[misc]
            return -logits.log_softmax(-1).mean(-1).mean() - math.log(logits.shape[-1])
        logits = self._prior_logits(z)
        return nn.functional.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))

    def _prior_logits(self, z: Tensor) -> Tensor:
        """The gaussian discriminator's logits that ``z`` are N(0, I) draws, after instance noise."""
        return self.discriminator(z + INSTANCE_NOISE * torch.randn_like(z))  # type: ignore[misc]

    def discriminator_input(self, batch: Batch) -> Tensor:
        return self._clean_latent(batch)

    def discriminator_loss(self, z: Tensor, batch: Batch) -> Tensor:
        """``adversarial``: class-balanced cross-entropy of the condition read from the latent.
        ``gaussian``: telling N(0, I) draws (real) from encoded latents (fake)."""
        if self.regularizer == "adversarial":
            logits = self.discriminator(z)  # type: ignore[misc]
            return nn.functional.cross_entropy(logits, batch.condition, weight=self.class_weight)
        prior, logits = self._prior_logits(torch.randn_like(z)), self._prior_logits(z)
        bce = nn.functional.binary_cross_entropy_with_logits
        return 0.5 * (bce(prior, torch.ones_like(prior)) + bce(logits, torch.zeros_like(logits)))


@dataclass(frozen=True, kw_only=True)
class MultiTaskParams(Hyperparameters):
    """Hyperparameters of :class:`MultiTaskModel`, besides the training settings of
    :class:`~mtpert.train.TrainConfig` and the seed (see :class:`Hyperparameters`).

    Attributes:
        latent: ``deterministic`` (autoencoder) or ``variational`` (VAE, KL weight ``kl_weight``).
        regularizer: ``none``; ``adversarial`` (a discriminator reads the condition from the
            latent and the encoder learns to fool it, so the latent keeps cell state and drops the
            perturbation; it tells the training conditions apart, a combination being a class of
            its own, so no part of the latent tells which set of perturbations a cell had);
            ``gaussian`` (adversarial autoencoder: latents indistinguishable from N(0, I) draws).
        objective: ``reconstruction`` (each cell decoded under its own condition), ``ot`` (a
            control cell's latent decoded under a perturbation must give the perturbed cell it is
            paired with by optimal transport, within its cell type, in a PCA space fit on the
            training cells), or ``both`` (the sum).
        conditioning: ``film``, ``additive``, ``concat`` or ``multihead`` (see
            :mod:`mtpert.models.film`).
        condition_encoder: condition the encoder too (not with ``multihead``); control cells are
            then encoded under the control code when predicting.
        prediction: ``decoded`` (the decoder's output under the target condition) or ``residual``
            (each control cell plus the decoded change, decoding under the target minus decoding
            under control). Decoded cells are denoised averages, narrower than real cells, which
            distribution distances (E-distance, MMD) penalize; residual keeps each cell's own
            variation and adds the model's cell-specific change. Default (None): ``residual``,
            except with objective ``ot``, which never trains the decoding under control.
        bound_change: scale a prediction's mean change from its control cells down, where it is
            larger, to the largest mean change the model predicts for the control cells of a
            training group that has the condition (for a combination not trained on, the sum of
            its parts' bounds). A model trained on few groups can extrapolate to a new group's
            cells far beyond any response it has seen; the bound keeps it from inventing one.
        anchor: ``none`` (the network predicts the whole change), or the baseline the change
            starts from, ``mean_shift``, ``additive`` or ``auto`` (see :mod:`mtpert.models.anchor`):
            the network is trained on each training group's cells minus the anchor computed
            without that group, and predicts ``anchor + gate * correction``. Needs
            ``prediction='residual'``.
        gate_folds: with an anchor, the training groups are split into this many inner folds
            (at most one per group); a network fit without each fold predicts its groups, and
            each condition's gate is the weight in [0, 1] of the correction that minimizes the
            squared error of the fold's mean change, less what its agreement owes to sampling
            noise (:func:`~mtpert.models.anchor.gate`), so no group judges a correction it was
            trained on. The training combinations anchored on their parts are likewise split
            into inner folds, each held out from an inner fit, for one gate of every combination
            those folds judged (a pair never trained together). A condition no fold judged (one
            training group; fewer than 2 such combinations) gets gate 0: the anchor alone.
            0: no gate (the whole correction). Inner refits rather than one fit's agreement
            between groups: a network reproduces every group it was trained on, so only a
            held-out group tells whether its correction carries over. Costs up to twice
            ``gate_folds`` extra fits.
        anchor_groups: the obs column whose groups the anchor's weights and the gates are judged
            over (left out one at a time, held out in inner folds); default (None) the spec's
            cell-type key. Name the held-out unit where it is not the cell type, e.g.
            ``replicate`` when replicates are held out of one cell line: a knock-out whose change
            does not repeat between replicates is then predicted as no change.
        anchor_shrinkage: how a condition's anchor weight reads the agreement of its training
            groups (:func:`~mtpert.models.anchor.anchor_weights`): ``expected`` (the expected
            shared change given the measured agreement: a change that does not repeat gets a
            small weight that keeps its direction) or ``lower_bound`` (the agreement less one
            sd of its noise: such a change is predicted as exactly none).
        denoise_control: with an anchor and at least two anchor groups, remove from each
            prediction the part of its control cells' mean deviation from the groups' average
            control that their sampling noise explains, per gene
            (:class:`~mtpert.models.anchor.ControlReference`): the perturbed cells to predict
            share their group's true control mean, not the noise of the control cells measured
            beside them. Kept only where it predicts held-out training groups better (replicates
            of one cell line, not cell lines that differ in biology their perturbed cells share).
        hidden: encoder hidden widths (the decoder mirrors them).
        latent_dim: latent size.
        dose_dim: width of the dose embedding, used when the spec has a dose key.
        dropout, input_dropout: dropout after hidden blocks and on the encoder input (denoising).
        kl_weight: weight of the KL term (``variational``) against the per-gene MSE.
        adv_weight: weight of the encoder's adversarial term.
        ot_pcs: principal components of the OT pairing space.
        ot_block_size: groups larger than this are paired by minibatch OT in blocks of this size.

    Training defaults: a cosine schedule over 30 epochs from ``lr`` 3e-3, or 1e-3 with a
    regularizer (None chooses; at 3e-3 the adversarial game no longer pulled the latent towards
    N(0, I) on simulated cells). Against the generic schedule (1e-3 held until plateaus, 85-100
    epochs on Kang) it fits in a third to a half of the time, as accurate on three screens and
    0.006 lower in R² top-100 DEGs on Kang (``benchmarks/perf_grid_schedule/perf_grid_schedule.md``);
    ``schedule="plateau", lr=1e-3, max_epochs=100`` trains as before. ``max_epochs`` None (the
    default) plans 30 epochs, raised on small data to reach 300 minibatches (``min_steps``): 30
    epochs of 320 cells are 90 steps, too few for ``mtvae_ot`` to reproduce its training
    conditions (``tests/test_fit_check.py``), while every real-data study here trains 330 steps or
    more in 30 epochs and is unchanged by it. A ``max_epochs`` given is trained as given.
    """

    lr: float | None = None  # type: ignore[assignment]
    max_epochs: int | None = None  # type: ignore[assignment]
    schedule: Schedule = "cosine"
    latent: Latent = "deterministic"
    regularizer: Regularizer = "none"
    objective: Objective = "reconstruction"
    conditioning: Conditioning = "film"
    condition_encoder: bool = False
    prediction: Prediction | None = None
    bound_change: bool = True
    anchor: AnchorKind = "none"
    gate_folds: int = 3
    anchor_groups: str | None = None
    anchor_shrinkage: AnchorShrinkage = "expected"
    denoise_control: bool = True
    hidden: tuple[int, ...] = (256, 128)
    latent_dim: int = 64
    dose_dim: int = 16
    dropout: float = 0.1
    input_dropout: float = 0.1
    kl_weight: float = 1e-3
    adv_weight: float = 0.1
    ot_pcs: int = 50
    ot_block_size: int = DEFAULT_BLOCK_SIZE

    def __post_init__(self) -> None:
        check_choice("regularizer", self.regularizer, get_args(Regularizer))
        if self.lr is None:
            object.__setattr__(self, "lr", 3e-3 if self.regularizer == "none" else 1e-3)
        if self.max_epochs is None:
            object.__setattr__(self, "max_epochs", DEFAULT_EPOCHS)
            object.__setattr__(self, "min_steps", self.min_steps or DEFAULT_MIN_STEPS)
        super().__post_init__()
        check_choice("latent", self.latent, get_args(Latent))
        check_choice("objective", self.objective, get_args(Objective))
        check_choice("conditioning", self.conditioning, CONDITIONINGS)
        if self.prediction is None:
            object.__setattr__(
                self, "prediction", "decoded" if self.objective == "ot" else "residual"
            )
        check_choice("prediction", self.prediction, get_args(Prediction))  # type: ignore[arg-type]
        if self.prediction == "residual" and self.objective == "ot":
            raise ValueError(
                "prediction='residual' subtracts the decoding under the control condition, which "
                "objective='ot' never trains; use objective='both' or prediction='decoded'."
            )
        check_choice("anchor", self.anchor, get_args(AnchorKind))
        check_choice("anchor_shrinkage", self.anchor_shrinkage, get_args(AnchorShrinkage))
        if self.anchor != "none" and self.prediction != "residual":
            raise ValueError(
                f"anchor='{self.anchor}' adds the network's change to the anchor's, which needs "
                "prediction='residual' (and an objective other than 'ot'); or use anchor='none'."
            )
        if self.anchor_groups is not None and self.anchor == "none":
            raise ValueError(
                f"anchor_groups='{self.anchor_groups}' names the groups an anchor is judged over; "
                "set anchor='auto' (or another anchor), or leave anchor_groups unset."
            )
        if self.gate_folds < 0:
            raise ValueError(f"gate_folds must be >= 0, got {self.gate_folds}.")
        if self.condition_encoder and self.conditioning == "multihead":
            raise ValueError(
                "multihead gives the decoder one output layer per condition and has no encoder form; "
                "use condition_encoder=False or another conditioning."
            )
        self._widths("hidden")
        self._positive("latent_dim")


class MultiTaskModel(TrainedModel):
    """Multi-task autoencoder: one encoder, one condition-steered decoder, every condition at once.

    Keyword arguments: the fields of :class:`MultiTaskParams` and the runtime options of
    :class:`~mtpert.models.trained.TrainedModel`.
    """

    Params = MultiTaskParams
    params: MultiTaskParams
    net: MultiTaskNet | None = None
    conditions: list[str]
    """Control, then the conditions of the training cells (condition index order)."""
    dose_scale: float | None
    """log1p of the largest training dose (None without doses)."""
    change_bounds: dict[str, float] | None = None
    """Per training condition, the largest mean change the model predicts for a training group
    that has it (root mean square over genes; see ``bound_change``); None: predictions unbounded."""
    anchors: Anchors | None = None
    """With an anchor: each training condition's mean change over the training groups."""
    anchor_weights: dict[str, float] | None = None
    """With an anchor: each training (condition, dose)'s weight between no change (0) and its mean
    change (1), by :func:`~mtpert.models.anchor.anchor_weights`."""
    gates: dict[str, float] | None = None
    """With an anchor: the weight of the network's correction per training condition that an inner
    fold of held-out groups judged (None with ``gate_folds=0``: the whole correction)."""
    combination_gate: float | None = None
    """With an anchor: the weight of the correction on a combination anchored on its parts, judged
    on inner held-out training combinations (None: no such evidence, gate 0)."""
    gene_gates: np.ndarray | None = None
    """With an anchor and inner evidence: each gene's weight of the correction (genes,), from every
    held-out (group, condition) at once, applied under the conditions' gates: genes whose
    correction does not carry over get none of it (None: 1 for every gene)."""
    gate_note: str = ""
    """How the anchors' weights and the gates were chosen (or why gates are 0)."""
    control_reference: ControlReference | None = None
    """With an anchor and ``denoise_control``, where denoising paid on held-out training groups:
    the anchor groups' average control, towards which a prediction's control cells are denoised."""
    correction_reach: np.ndarray | None = None
    """With an anchor: per gene, the largest mean change from control of any training (condition,
    group), which bounds the correction of each cell on that gene: the network may not move a gene
    further than any training condition moved it (a gene no training cell expresses differently is
    left to the anchor, so a tiny decoded change cannot make a silent gene a top DEG)."""
    _given_combination: bool | None = None
    """Set on an inner fit: whether the outer model anchors combinations on the linear model."""
    _given_weights: dict[str, float] | None = None
    """Set on an inner fit of :meth:`_held_out_evidence`: the outer model's anchor weights, so that
    the inner network learns the correction of the anchor the outer model predicts with (weights
    of fewer groups would judge another anchor's correction)."""

    @property
    def name(self) -> str:  # type: ignore[override]
        """Preset name derived from the options, e.g. ``mtvae_plus_ot`` or ``mtae_adv_concat``;
        options other than the defaults are appended (``mtae_decoded_unbounded``)."""
        p = self.params
        parts = ["mtvae" if p.latent == "variational" else "mtae"]
        parts += {"none": [], "adversarial": ["adv"], "gaussian": ["advg"]}[p.regularizer]
        parts += {"reconstruction": [], "ot": ["ot"], "both": ["plus", "ot"]}[p.objective]
        parts += [] if p.conditioning == "film" else [p.conditioning]
        parts += ["condenc"] if p.condition_encoder else []
        parts += ["decoded"] if p.prediction == "decoded" and p.objective != "ot" else []
        parts += [] if p.bound_change else ["unbounded"]
        parts += (
            [] if p.anchor == "none" else ["anchored"] + ([] if p.anchor == "auto" else [p.anchor])
        )
        return "_".join(parts)

    @property
    def _anchor_spec(self) -> DatasetSpec:
        """The spec whose cell-type key holds the groups of the anchor (``anchor_groups``)."""
        key = self.params.anchor_groups
        return self.spec if key is None else replace(self.spec, cell_type_key=key)

    @property
    def predicts_unseen_doses(self) -> bool:  # type: ignore[override]
        """The dose is encoded continuously, but an anchor is a mean change at a training dose."""
        return self.params.anchor == "none"

    @property
    def predicts_unseen_combinations(self) -> bool:  # type: ignore[override]
        """A combination is encoded from its parts, except by ``multihead``, which has one output
        layer per training condition."""
        return self.params.conditioning != "multihead"

    @property
    def perturbations(self) -> list[str]:
        """Control, then the single perturbations of the training conditions (combinations split
        by the spec's ``combination_separator``): the columns of the condition code."""
        parts = {p for c in self.conditions[1:] for p in self.spec.parts(c)}
        return [self.spec.control, *sorted(parts - {self.spec.control})]

    def search_space(self) -> dict[str, Distribution]:
        """Learning rate, width and depth, latent size and dropout; the KL weight of a variational
        latent and the adversary's weight where they are used."""
        space: dict[str, Distribution] = super().search_space() | {
            "hidden": Choice(((128,), (256, 128), (512, 256))),
            "latent_dim": Choice((16, 32, 64, 128)),
            "dropout": FloatRange(0.0, 0.3),
        }
        if self.params.latent == "variational":
            space["kl_weight"] = FloatRange(1e-5, 1e-1, log=True)
        if self.params.regularizer != "none":
            space["adv_weight"] = FloatRange(1e-3, 1.0, log=True)
        return space

    # ------------------------------------------------------------------ fit / predict
    def _fit(self, train_data: AnnData, val: AnnData | None) -> None:
        spec, objective = self.spec, self.params.objective
        self.conditions = [spec.control, *spec.conditions(train_data)]
        self.dose_scale = None
        if spec.dose_key is not None:
            doses = train_data.obs[spec.dose_key].to_numpy(dtype=float)
            if doses.min() < 0 or spec.control_dose < 0:
                raise DataError(
                    f"obs['{spec.dose_key}'] has negative doses; the dose encoding takes log1p(dose) of doses >= 0."
                )
            self.dose_scale = float(np.log1p(doses).max()) or 1.0
        seed = self._seed()
        if objective != "reconstruction" and train_data.isbacked:
            raise DataError(
                f"objective='{objective}' pairs cells across the whole training set, "
                "which needs X in memory; load it (adata.to_memory()) or use objective='reconstruction' "
                "to train from the backed file."
            )
        table, net_train, net_val = None, train_data, val if val is not None and val.n_obs else None
        if self.params.anchor != "none":
            key = self._anchor_spec.cell_type_key
            if key not in train_data.obs:
                raise DataError(
                    f"{self.name}: anchor_groups='{key}' is not a column of obs (columns: "
                    f"{list(train_data.obs.columns)}); name the column of the held-out groups."
                )
            table = mean_changes(
                train_data, self._anchor_spec, ANCHOR_MIN_CELLS, model=self.name, noise=True
            )
            weights = anchor_weights(table, self.params.anchor_shrinkage)
            if self._given_weights is not None:  # an inner fit: the outer model's weights
                given = [self._given_weights.get(key_string(*k)) for k in table.keys]
                weights = np.array(
                    [w if g is None else g for w, g in zip(weights, given, strict=True)]
                )
            base = Anchors.of(table, weights)
            # the training combinations anchored on their parts: the inner folds of the
            # combination gate (a single is its own part: holding it out would leave the pairs
            # it is in without an anchor)
            combinations = [
                k
                for k in table.keys
                if len(spec.parts(k[0])) > 1
                and base.kind(self._anchor_spec, self.params.anchor, *k) == "additive"
            ]
            linear, combination_note = self._combination_anchor(
                train_data, table, base, combinations
            )
            self.anchors = Anchors.of(table, weights, linear=linear)
            self.correction_reach = np.nan_to_num(np.nanmax(np.abs(table.changes), axis=(0, 1)))
            self.anchor_weights = {
                key_string(*k): float(w) for k, w in zip(table.keys, weights, strict=True)
            }
            self.control_reference, control_note = (
                ControlReference.of(table, weights)
                if self.params.denoise_control
                else (None, "denoise_control=False: control cells as given")
            )
            net_train = self._minus_anchor(train_data, table, weights)
            net_val = None if net_val is None else self._minus_anchor(net_val, table, weights)
        pca = self._pairing_space(net_train, seed) if objective != "reconstruction" else None
        data = self._cell_data(net_train, pca, seed)
        if data.partner is not None and not (data.partner >= 0).any():
            raise DataError(
                f"objective='{objective}' pairs control and perturbed cells of the same cell "
                "type, but no training cell type has both; use objective='reconstruction'."
            )
        val_data = None if net_val is None else self._cell_data(net_val, pca, seed)
        counts = np.bincount(data.condition, minlength=len(self.conditions)).astype(np.float64)
        class_weight = torch.as_tensor(len(data) / (len(counts) * np.maximum(counts, 1.0)))
        with self._seeded(seed) as generator:
            self.net = self._build(class_weight)
            self.net.start_at_mean(torch.as_tensor(data.column_means(), dtype=torch.float32))
            self._histories = [self._train(self.net, data, val_data, generator)]
        if table is not None:
            self._choose_gates(
                train_data, table, seed, combinations, [combination_note, control_note]
            )
        self.change_bounds = self._change_bounds(train_data) if self.params.bound_change else None

    def _predict(self, control: AnnData, condition: str, dose: float | None) -> np.ndarray:
        cells = rows_in_memory(control)
        shift = None
        if self.control_reference is not None:
            cells = dense(cells)
            shift = self.control_reference.shift(cells)
        pred = self._unbounded(cells, condition, dose, shift)
        bound = self.change_bound(condition)
        if bound is None:
            return pred
        cells = dense(cells)
        change = mean_change(cells, pred)
        if change <= bound:
            return pred
        return cells + (bound / change) * (pred - cells)  # between the two: still >= 0

    def _unbounded(
        self,
        X: np.ndarray | sp.csr_matrix,
        condition: str,
        dose: float | None,
        control_shift: np.ndarray | None = None,
    ) -> np.ndarray:
        """The prediction for control cells ``X`` before ``bound_change``."""
        cells = CellData(X, np.zeros(X.shape[0], dtype=np.int64))
        return self._predict_cells(
            self.prediction_function(condition, dose, control_shift=control_shift), cells
        )

    def prediction_function(
        self,
        condition: str,
        dose: float | None = None,
        *,
        control_shift: np.ndarray | None = None,
    ) -> Callable[[Tensor], Tensor]:
        """The prediction under ``condition`` as a differentiable function of control cells'
        expression, (n, genes) -> (n, genes) on the model's device, before the clipping at 0 and
        ``bound_change`` (one factor on the whole change): what
        :func:`mtpert.models.attribution.attribute` takes gradients of. ``control_shift``
        (genes,): a constant added to every cell, the denoising of the control cells' mean
        (``denoise_control``), which depends on all the cells predicted from, not on one."""
        code, index = self._target(condition)
        if self.spec.dose_key is None and dose is not None:
            raise DataError(
                "This model was trained without doses (the spec has no dose_key); leave dose=None."
            )
        if dose is not None and dose < 0:
            raise DataError(f"dose must be >= 0, got {dose}.")
        net, device = self._fitted_net(), self.device
        code = code.to(device)
        shift, weight = self._anchoring(condition, dose, index)
        reach = (
            None
            if self.correction_reach is None
            else torch.as_tensor(self.correction_reach, dtype=torch.float32, device=device)
        )
        constant = (
            None
            if control_shift is None
            else torch.as_tensor(control_shift, dtype=torch.float32, device=device)
        )

        def predict(x: Tensor) -> Tensor:
            n = x.shape[0]
            z, _ = net.encode_control(x)
            target = Conditions(
                code.expand(n, -1),
                None if dose is None else torch.full((n,), self._scale_dose(dose), device=device),
                None if index is None else torch.full((n,), index, device=device),
            )
            pred = net.decode(z, target)
            if self.params.prediction == "residual":  # the cell itself plus the decoded change
                change = pred - net.decode(z, net.control(n, device))
                if reach is not None:
                    change = torch.minimum(torch.maximum(change, -reach), reach)
                pred = x + (change if shift is None else shift + weight * change)
            return pred if constant is None else pred + constant

        return predict

    def _predicted(
        self, control: AnnData, condition: str, dose: float | None, X: np.ndarray
    ) -> AnnData:
        """See :meth:`PerturbationModel._predicted`; with an anchor, ``uns['mtpert_prediction']``
        of every prediction (:meth:`predict` and :meth:`predict_many`) also records the anchor it
        started from, the gate of the correction and the weight of the control cells' denoising
        (``denoise_control``; 0 where it is off). ``control``: the request's cells, on the
        model's genes."""
        out = super()._predicted(control, condition, dose, X)
        if self.anchors is not None:
            record = out.uns[PREDICTION_KEY]
            record["anchor"], record["gate"] = self.anchor_of(condition, dose)
            reference = self.control_reference
            record["control_denoising"] = (
                0.0 if reference is None else reference.weight(dense(rows_in_memory(control)))
            )
        return out

    def anchor_of(self, condition: str, dose: float | None = None) -> tuple[str, float]:
        """Which anchor a prediction of ``condition`` (at ``dose``) starts from (``none``,
        ``mean_shift`` or ``additive``) and the weight of the network's correction on it."""
        _, index = self._target(condition)
        if self.anchors is None:
            return "none", 1.0
        kind, _ = self.anchors.change(
            self.spec, self.params.anchor, condition, dose, model=self.name
        )
        return kind, self._gate(condition, index, kind)

    def _anchoring(
        self, condition: str, dose: float | None, index: int | None
    ) -> tuple[Tensor | None, Tensor | float]:
        """The anchor's change on the model's device (None without an anchor) and the weight of
        the correction: the condition's gate times the genes' gates."""
        if self.anchors is None:
            return None, 1.0
        kind, change = self.anchors.change(
            self.spec, self.params.anchor, condition, dose, model=self.name
        )
        weight: Tensor | float = self._gate(condition, index, kind)
        if self.gene_gates is not None:
            weight = weight * torch.as_tensor(
                self.gene_gates, dtype=torch.float32, device=self.device
            )
        return torch.as_tensor(change, dtype=torch.float32, device=self.device), weight

    def _gate(self, condition: str, index: int | None, kind: str) -> float:
        """The gate of ``condition`` (training condition ``index``, None if not trained on), whose
        anchor is ``kind``: its own where an inner fold of groups judged it, else the combinations'
        gate for a combination anchored on its parts, else 0; 1 without gates (``gate_folds=0``)."""
        if self.gates is None:
            return 1.0
        trained = None if index is None else self.conditions[index]
        if trained in self.gates:
            return self.gates[trained]
        if kind in ("additive", "linear") and self.combination_gate is not None:
            return self.combination_gate
        return 0.0

    def _minus_anchor(self, adata: AnnData, table: MeanChanges, weights: np.ndarray) -> AnnData:
        """``adata``'s cells minus the anchor of their condition computed without their group: the
        network's training targets (in memory, dense)."""
        linear = None if self.anchors is None else self.anchors.linear
        shift = anchor_per_cell(
            adata.obs,
            self._anchor_spec,
            table,
            weights,
            self.params.anchor,
            model=self.name,
            linear=linear,
        )
        return AnnData(
            dense(rows_in_memory(adata)) - shift, obs=adata.obs.copy(), var=adata.var.copy()
        )

    def _combination_anchor(
        self,
        train_data: AnnData,
        table: MeanChanges,
        base: Anchors,
        combinations: list[ConditionKey],
    ) -> tuple[LinearAnchor | None, str]:
        """With ``anchor='auto'``, the linear model of the parts as the anchor of combinations
        where it predicted held-out training combinations better than their sum, and a note.

        The training combinations anchored on their parts are split into ``max(gate_folds, 2)``
        folds; each is held out of a :class:`~mtpert.models.linear.LinearModel` fit (closed
        form, no network), whose changes and the parts' sums are scored against the fold's
        observed mean changes (squared error over genes, summed). An inner fit of the gates
        takes its outer model's choice. ``base``: the anchors with the parts' sums;
        ``combinations``: the training combinations whose parts were each trained alone.
        """
        if self.params.anchor != "auto":
            return None, ""
        spec = self._anchor_spec
        if self._given_combination is not None:
            linear = self._given_combination
            note = ""
        elif len(combinations) < 2:
            return None, ""
        else:
            _, conditions, doses = self._cell_keys(train_data)
            observed, row = table.averaged(), {k: i for i, k in enumerate(table.keys)}
            k = min(max(self.params.gate_folds, 2), len(combinations))
            errors = {"linear": 0.0, "additive": 0.0}
            for fold in (combinations[i::k] for i in range(k)):
                out = np.zeros(len(conditions), dtype=bool)
                for key in fold:
                    out |= _cells_of(conditions, doses, key)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # pairs of parts never seen alone: left out
                    inner = LinearModel(spec, min_cells=ANCHOR_MIN_CELLS).fit(train_data[~out])
                for condition, dose in fold:
                    truth = observed[row[(condition, dose)]]
                    summed = base.change(spec, "additive", condition, dose, model=self.name)[1]
                    errors["linear"] += float(np.sum((inner.change(condition, dose) - truth) ** 2))
                    errors["additive"] += float(np.sum((summed - truth) ** 2))
            linear = errors["linear"] < errors["additive"]
            note = (
                f"combinations anchored on the {'linear model of' if linear else 'sum of'} their "
                f"parts (squared error on {len(combinations)} held-out training combinations: "
                f"linear {errors['linear']:.3g}, sum {errors['additive']:.3g})"
            )
        if not linear:
            return None, note
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = LinearModel(spec, min_cells=ANCHOR_MIN_CELLS).fit(train_data)
        return LinearAnchor.of(model, table.keys), note

    def _choose_gates(
        self,
        train_data: AnnData,
        table: MeanChanges,
        seed: int,
        combinations: list[ConditionKey],
        anchor_notes: list[str],
    ) -> None:
        """Set the gates, chosen on inner folds of the training groups and of the training
        ``combinations`` anchored on their parts (see ``gate_folds``), and a note saying how,
        after ``anchor_notes`` (how the combinations' anchor was chosen, whether the control
        cells are denoised; empty ones are left out)."""
        weights = list((self.anchor_weights or {}).values())
        muted = sum(w < NEAR_NO_CHANGE for w in weights)
        notes = [
            f"{muted} of {len(weights)} training conditions carry (almost) no change from group "
            f"to group (anchor weight below {NEAR_NO_CHANGE}: predicted as (nearly) no change)"
            if muted
            else f"every anchor weight at least {NEAR_NO_CHANGE}",
            *[note for note in anchor_notes if note],
        ]
        self.gates, self.combination_gate, self.gene_gates = None, None, None
        if self.params.gate_folds == 0:
            self.gate_note = "; ".join([*notes, "gate_folds=0: the whole correction is added"])
            return
        # groups with a perturbed condition: a held-out group's control cells judge nothing
        groups = [g for j, g in enumerate(table.groups) if not np.isnan(table.changes[:, j]).all()]
        labels, conditions, doses = self._cell_keys(train_data)
        by_group: dict[str, list[Evidence]] = {}
        if len(groups) < 2:
            notes.append(f"{len(groups)} training group: no group to hold out, group gates 0")
        else:
            k = min(self.params.gate_folds, len(groups))
            by_group = self._held_out_evidence(
                train_data, labels, conditions, doses, table.keys,
                [(list(groups[i::k]), None) for i in range(k)], seed,
            )  # fmt: skip
            notes.append(f"gates chosen on {k} inner folds of the {len(groups)} training groups")
        by_combination: list[Evidence] = []
        if len(combinations) == 1:
            notes.append("1 training combination anchored on its parts: combination gate 0")
        elif combinations:
            k = min(self.params.gate_folds, len(combinations))
            evidence = self._held_out_evidence(
                train_data, labels, conditions, doses, combinations,
                [(None, combinations[i::k]) for i in range(k)], seed,
            )  # fmt: skip
            by_combination = [e for per_condition in evidence.values() for e in per_condition]
        every = [e for per_condition in by_group.values() for e in per_condition] + by_combination
        self.gene_gates = gene_gates_if_they_pay(every)
        # each gate judges the whole correction (not the genes kept after seeing their agreement)

        def gated(evidence: list[Evidence]) -> float:
            """The gate of the corrections of ``evidence``."""
            return gate(*zip(*evidence, strict=True))

        self.gates = {c: gated(e) for c, e in by_group.items() if e}
        if by_combination:
            self.combination_gate = gated(by_combination)
            notes.append(
                f"combination gate {self.combination_gate:.2f}, chosen on inner folds of the "
                f"{len(combinations)} training combinations"
            )
        if self.gene_gates is not None:
            notes.append(
                f"gene gates (they paid on cross-fitted halves of the inner evidence): "
                f"{int((self.gene_gates == 0).sum())} of {len(self.gene_gates)} genes' corrections "
                "did not carry over to held-out data (gene gate 0)"
            )
        elif every:
            notes.append(
                "no gene gates (they did not pay on cross-fitted halves of the inner evidence)"
            )
        self.gate_note = "; ".join(notes) + "."

    def _held_out_evidence(
        self,
        train_data: AnnData,
        labels: np.ndarray,
        conditions: np.ndarray,
        doses: np.ndarray,
        keys: list[tuple[str, float | None]],
        folds: list[tuple[list[str] | None, list[tuple[str, float | None]] | None]],
        seed: int,
    ) -> dict[str, list[Evidence]]:
        """For each inner fold (groups held out, or (condition, dose) keys held out), a network fit
        without it predicts what it held out from its groups' control cells; per condition, each
        held-out (group, key)'s mean correction, miss (observed change minus anchor) and the miss's
        sampling variance, as :func:`~mtpert.models.anchor.gate` takes them."""
        spec = self.spec
        # the gates judge the network's correction alone: the inner fits do not denoise controls
        inner_params = asdict(
            replace(self.params, gate_folds=0, bound_change=False, denoise_control=False, seed=seed)
        )
        is_key = {key: _cells_of(conditions, doses, key) for key in keys}
        evidence: dict[str, list[Evidence]] = {c: [] for c, _ in keys}
        for held_groups, held_keys in folds:
            out = (
                np.isin(labels, held_groups)
                if held_groups is not None
                else np.zeros(len(labels), bool)
            )
            for key in held_keys or []:
                out |= is_key[key]
            inner = MultiTaskModel(
                spec, device=str(self.device), num_threads=self.num_threads, progress=False,
                **inner_params,
            )  # fmt: skip
            inner._given_weights = self.anchor_weights
            inner._given_combination = self.anchors is not None and self.anchors.linear is not None
            inner.fit(train_data[~out])
            for group in held_groups if held_groups is not None else sorted(set(labels)):
                rows = np.flatnonzero((labels == group) & (conditions == spec.control))
                if len(rows) < ANCHOR_MIN_CELLS:
                    continue
                cells = rows_in_memory(train_data, rows)
                start, start_noise = mean_and_noise(dense(cells))
                for condition, dose in held_keys if held_keys is not None else keys:
                    at = (labels == group) & is_key[(condition, dose)]
                    if at.sum() < ANCHOR_MIN_CELLS or not inner.can_predict(condition, dose):
                        continue
                    end, noise = mean_and_noise(
                        dense(rows_in_memory(train_data, np.flatnonzero(at)))
                    )
                    anchor = inner._anchoring(condition, dose, None)[0].cpu().numpy()  # type: ignore[union-attr]
                    predicted = inner._unbounded(cells, condition, dose).mean(0) - start
                    evidence[condition].append(
                        (predicted - anchor, end - start - anchor, noise + start_noise)
                    )
        return evidence

    def _cell_keys(self, adata: AnnData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each cell's anchor group, condition and dose (NaN without a dose key), as arrays."""
        obs, spec = adata.obs, self._anchor_spec
        labels = obs[spec.cell_type_key].astype(str).to_numpy()
        conditions = obs[spec.condition_key].astype(str).to_numpy()
        doses = (
            obs[spec.dose_key].to_numpy(dtype=float) if spec.dose_key else np.full(len(obs), np.nan)
        )
        return labels, conditions, doses

    def can_predict(self, condition: str, dose: float | None = None) -> bool:
        """Whether ``condition`` at ``dose`` can be predicted (its perturbations and, with an
        anchor, the anchor are known)."""
        try:
            self._target(condition)
            if self.anchors is not None:
                self.anchors.change(self.spec, self.params.anchor, condition, dose, model=self.name)
        except DataError:
            return False
        return True

    def change_bound(self, condition: str) -> float | None:
        """The largest mean change (RMS over genes) a prediction of ``condition`` may have: the
        condition's own bound, or for a combination not trained on the sum of its parts' (None
        where a part has none, or with ``bound_change=False``)."""
        if self.change_bounds is None:
            return None
        _, index = self._target(condition)
        if index is not None:
            return self.change_bounds.get(self.conditions[index])
        parts = [self.change_bounds.get(p) for p in self.spec.parts(condition)]
        return None if None in parts else sum(parts)  # type: ignore[arg-type]

    def encode(self, adata: AnnData) -> np.ndarray:
        """Latent states (posterior means) of ``adata``'s cells, each encoded under its own condition
        where the encoder is conditioned; e.g. for a UMAP, or to probe what the latent keeps."""
        net = self._fitted_net()
        cells = self._cell_data(self._aligned(adata), None, 0)
        with torch.no_grad(), cpu_threads(self.num_threads):
            return np.concatenate(
                [
                    net.encode(b.x, net.trained(b.condition, b.dose))[0].cpu().numpy()
                    for b in cells.batches(PREDICT_BATCH, device=self.device)
                ]
            )

    # ------------------------------------------------------------------ save / load
    def _learned(self) -> dict[str, Any]:
        return {
            **super()._learned(),
            "conditions": self.conditions,
            "dose_scale": self.dose_scale,
            "change_bounds": self.change_bounds,
            **(
                {}
                if self.anchors is None
                else {
                    "anchor_keys": [list(k) for k in self.anchors.keys],
                    "anchor_weights": self.anchor_weights,
                    "gates": self.gates,
                    "combination_gate": self.combination_gate,
                    "gene_gated": self.gene_gates is not None,
                    "linear_anchor": self.anchors.linear is not None,
                    "gate_note": self.gate_note,
                    "control_denoised": self.control_reference is not None,
                }
            ),
        }

    def _tensors(self) -> dict[str, Tensor]:
        anchor = (
            {} if self.anchors is None else {"anchor_shifts": torch.as_tensor(self.anchors.shifts)}
        )
        if self.gene_gates is not None:
            anchor["gene_gates"] = torch.as_tensor(self.gene_gates)
        if self.correction_reach is not None:
            anchor["correction_reach"] = torch.as_tensor(self.correction_reach)
        if self.control_reference is not None:
            anchor["control_average"] = torch.as_tensor(self.control_reference.average)
        if self.anchors is not None and self.anchors.linear is not None:
            anchor["linear_intercept"] = torch.as_tensor(self.anchors.linear.intercept)
            anchor["linear_parts"] = torch.as_tensor(self.anchors.linear.parts)
        return {**self._fitted_net().state_dict(), **anchor}

    def fit_summary(self) -> dict[str, float]:
        """The trained model's summary; with an anchor, also the mean and largest gate, the
        combinations' gate and whether their anchor is the linear model (1) or the sum of the parts
        (0), whether the control cells are denoised (1) or not (0), the mean anchor weight and how
        many anchors were set to no change."""
        summary = super().fit_summary()
        if self.gates is not None:
            gates = list(self.gates.values()) or [0.0]
            summary |= {"gate_mean": float(np.mean(gates)), "gate_max": float(np.max(gates))}
            summary["combination_gate"] = self.combination_gate or 0.0
        if self.anchors is not None:
            summary["linear_combination_anchor"] = float(self.anchors.linear is not None)
            summary["controls_denoised"] = float(self.control_reference is not None)
        if self.gene_gates is not None:
            summary |= {
                "gene_gate_mean": float(self.gene_gates.mean()),
                "genes_gated_off": float((self.gene_gates == 0).sum()),
            }
        if self.anchor_weights:
            weights = list(self.anchor_weights.values())
            summary |= {
                "anchor_weight_mean": float(np.mean(weights)),
                "anchors_at_no_change": float(sum(w == 0.0 for w in weights)),
                "anchors_near_no_change": float(sum(w < NEAR_NO_CHANGE for w in weights)),
            }
        return summary

    def _restore(self, learned: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        super()._restore(learned, tensors)
        self.conditions = list(learned["conditions"])
        self.dose_scale = learned["dose_scale"]
        self.change_bounds = learned.get("change_bounds")
        if "change_bounds" not in learned:  # saved before bound_change existed: predicts unbounded
            self.params = replace(self.params, bound_change=False)
            self.hparams["bound_change"] = False
        self.net = self._build(torch.ones(len(self.conditions)))  # saved class weights load below
        expected = {k: tuple(v.shape) for k, v in self.net.state_dict().items()}
        keys = [(c, d) for c, d in learned.get("anchor_keys", [])]
        if self.params.anchor != "none":
            expected["anchor_shifts"] = (len(keys), len(self.genes))  # type: ignore[arg-type]
            expected["correction_reach"] = (len(self.genes),)  # type: ignore[arg-type]
            if learned.get("gene_gated"):
                expected["gene_gates"] = (len(self.genes),)  # type: ignore[arg-type]
            if learned.get("control_denoised"):
                expected["control_average"] = (len(self.genes),)  # type: ignore[arg-type]
            if learned.get("linear_anchor"):
                expected["linear_intercept"] = (len(self.genes),)  # type: ignore[arg-type]
                expected["linear_parts"] = (len(keys), len(self.genes))  # type: ignore[arg-type]
        check_weights(tensors, expected)
        if self.params.anchor != "none":
            linear = (
                LinearAnchor(
                    tensors.pop("linear_intercept").cpu().numpy(),
                    tensors.pop("linear_parts").cpu().numpy(),
                )
                if learned.get("linear_anchor")
                else None
            )
            self.anchors = Anchors(keys, tensors.pop("anchor_shifts").cpu().numpy(), linear)
            self.gates, self.gate_note = learned["gates"], learned["gate_note"]
            self.anchor_weights = learned.get("anchor_weights")
            self.combination_gate = learned.get("combination_gate")
            gated = tensors.pop("gene_gates", None)
            self.gene_gates = None if gated is None else gated.cpu().numpy()
            self.correction_reach = tensors.pop("correction_reach").cpu().numpy()
            self.control_reference = (
                ControlReference(tensors.pop("control_average").cpu().numpy())
                if learned.get("control_denoised")
                else None
            )
        self.net.load_state_dict(tensors)
        self.net.to(self.device).eval()

    # ------------------------------------------------------------------ helpers
    def _build(self, class_weight: Tensor) -> MultiTaskNet:
        p, dosed = self.params, self.spec.dose_key is not None
        return MultiTaskNet(
            len(self.genes),  # type: ignore[arg-type]
            self._codes(),
            hidden=p.hidden, latent_dim=p.latent_dim, dose_dim=p.dose_dim if dosed else 0,
            latent=p.latent, regularizer=p.regularizer, objective=p.objective,
            conditioning=p.conditioning, condition_encoder=p.condition_encoder,
            dropout=p.dropout, input_dropout=p.input_dropout,
            kl_weight=p.kl_weight, adv_weight=p.adv_weight,
            control_dose=self._scale_dose(self.spec.control_dose) if dosed else 0.0,
            class_weight=class_weight,
        )  # fmt: skip

    def _fitted_net(self) -> MultiTaskNet:
        if self.net is None:
            raise NotFittedError(f"{self.name}: call fit first.")
        return self.net

    def _change_bounds(self, train_data: AnnData) -> dict[str, float]:
        """Per training condition, the largest mean change predicted for the control cells of a
        training group that has the condition (at any of its doses)."""
        spec = self.spec
        keys = [spec.cell_type_key, spec.condition_key, *([spec.dose_key] if spec.dose_key else [])]
        obs = train_data.obs[keys].astype({spec.cell_type_key: str, spec.condition_key: str})
        control = spec.is_control(train_data)
        bounds: dict[str, float] = {}
        for group, seen in obs[~control].drop_duplicates().groupby(spec.cell_type_key):
            rows = np.flatnonzero(control & (obs[spec.cell_type_key] == group).to_numpy())
            if not len(rows):
                continue
            cells = rows_in_memory(train_data, rows)
            expression = dense(cells)
            for row in seen.itertuples(index=False):
                dose = float(row[2]) if spec.dose_key else None
                change = mean_change(expression, self._unbounded(cells, row[1], dose))
                bounds[row[1]] = max(bounds.get(row[1], 0.0), change)
        return bounds

    def _codes(self) -> Tensor:
        """(conditions, perturbations) multi-hot code of each training condition."""
        return torch.stack([self._code(self.spec.parts(c)) for c in self.conditions])

    def _code(self, parts: tuple[str, ...]) -> Tensor:
        """Multi-hot code of a set of known perturbations (each counted as often as it occurs)."""
        columns = pd.Index(self.perturbations).get_indexer(parts)
        return torch.bincount(torch.as_tensor(columns), minlength=len(self.perturbations)).float()

    def _target(self, condition: str) -> tuple[Tensor, int | None]:
        """The code of ``condition``, and the index of the training condition with that set of
        perturbations (None for a combination of known perturbations never trained on together)."""
        parts = self.spec.parts(condition)
        unknown = [p for p in parts if p not in self.perturbations[1:]]
        if unknown:
            what = (
                f"condition '{condition}'"
                if len(parts) == 1
                else f"perturbations {unknown} of '{condition}'"
            )
            also = (
                f"; known perturbations: {self.perturbations[1:]}"
                if self.spec.combination_separator
                else ""
            )
            raise DataError(
                f"{self.name} was not trained on {what} and cannot predict it; "
                f"known conditions: {self.conditions[1:]}{also}."
            )
        code = self._code(parts)
        if condition in self.conditions:
            return code, self.conditions.index(condition)
        same = (self._fitted_net().codes.cpu() == code).all(dim=1).nonzero().flatten().tolist()
        if same:  # the same set written in another order, e.g. 'B+A' for the trained 'A+B'
            return code, same[0]
        if self.params.conditioning == "multihead":
            raise DataError(
                f"{self.name} has one output layer per training condition and was not trained on "
                f"'{condition}', so it cannot predict it from its parts {list(parts)}; use "
                "conditioning 'film', 'additive' or 'concat', which encode a combination from its parts."
            )
        return code, None

    def _scale_dose(self, dose: np.ndarray | float) -> np.ndarray | float:
        """log1p(dose) scaled so the largest training dose is 1."""
        return np.log1p(dose) / self.dose_scale  # type: ignore[operator]

    def _pairing_space(self, adata: AnnData, seed: int) -> PCA:
        n_pcs = min(self.params.ot_pcs, adata.n_obs - 1, adata.n_vars)
        return PCA(n_components=n_pcs, svd_solver="covariance_eigh", random_state=seed).fit(
            cell_matrix(adata)
        )

    def _cell_data(self, adata: AnnData, pca: PCA | None, seed: int) -> CellData:
        """Cells as a :class:`CellData`; with a pairing space, perturbed cells get OT partners."""
        spec = self.spec
        labels = adata.obs[spec.condition_key].astype(str).to_numpy()
        index = pd.Index(self.conditions).get_indexer(labels)
        if (index < 0).any():
            unknown = sorted(set(labels[index < 0]))
            raise DataError(
                f"Cells with conditions {unknown} that the training cells do not have; known: {self.conditions}. "
                "Drop them, or include them in the training cells."
            )
        X = cell_matrix(adata)
        dose = None
        if spec.dose_key is not None:
            dose = np.asarray(
                self._scale_dose(adata.obs[spec.dose_key].to_numpy(dtype=float)), dtype=np.float32
            )
        partner = None
        if pca is not None:
            groups = adata.obs[spec.condition_key].astype(str)
            if spec.dose_key is not None:
                groups = groups + "@" + adata.obs[spec.dose_key].astype(str)
            partner = pair_within_groups(
                pca.transform(X).astype(np.float64),
                adata.obs[spec.cell_type_key].astype(str).to_numpy(),
                groups.to_numpy(),
                index == 0,
                block_size=self.params.ot_block_size,
                seed=seed,
            )
        return CellData(X, index.astype(np.int64), dose, partner)


def _cells_of(conditions: np.ndarray, doses: np.ndarray, key: ConditionKey) -> np.ndarray:
    """Which cells (their ``conditions`` and ``doses``, NaN without a dose key) are of ``key``."""
    condition, dose = key
    return (conditions == condition) & (np.isnan(doses) if dose is None else doses == dose)
