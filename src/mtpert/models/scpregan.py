"""scPreGAN: a shared encoder, a generator and a discriminator per domain, trained adversarially.

Wei, Dong et al. (2022), "scPreGAN, a deep generative model for predicting the response of
single-cell expression to perturbation", Bioinformatics 38(13):3377-3384.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from mtpert.models.per_condition import (
    PerConditionModel,
    PerConditionParams,
    domain_mean,
    gene_moments,
)
from mtpert.train.data import Batch, CellData, cell_matrix

CONTROL, PERTURBED = 0, 1
"""Domain indices: the original's domain A (control) and domain B (perturbed)."""


def _mlp(widths: Sequence[int], *, last_activated: bool) -> nn.Sequential:
    """Linear -> LayerNorm -> ReLU blocks; the last layer is plain unless ``last_activated``."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2 or last_activated:
            layers += [nn.LayerNorm(b), nn.ReLU()]
    return nn.Sequential(*layers)


class AuxiliaryClassifierDiscriminator(nn.Module):
    """Spectrally normalized hidden layers, then two heads: real-vs-generated and the cell type.

    ``forward`` returns one tensor: column 0 is the real-vs-generated logit, the rest the
    cell-type logits.
    """

    def __init__(self, n_genes: int, hidden: Sequence[int], n_types: int) -> None:
        super().__init__()
        widths = [n_genes, *hidden]
        self.body = nn.Sequential(
            *(
                module
                for a, b in itertools.pairwise(widths)
                for module in (spectral_norm(nn.Linear(a, b)), nn.ReLU())
            )
        )
        self.heads = nn.Linear(widths[-1], 1 + n_types)

    def forward(self, x: Tensor) -> Tensor:
        return self.heads(self.body(x))


class ScPreGANNet(nn.Module):
    """Encoder E, generators G_control and G_perturbed, discriminators D_control and D_perturbed.

    Implements :class:`mtpert.train.Trainable`: ``batch.condition`` is each cell's domain
    (0 control, 1 perturbed) and ``batch.group`` its cell-type index.
    """

    monitored = ("recon", "encoding")

    def __init__(
        self,
        n_genes: int,
        n_types: int,
        *,
        hidden: Sequence[int],
        latent_dim: int,
        adv_weight: float,
        recon_weight: float,
        encoding_weight: float,
    ) -> None:
        super().__init__()
        self.adv_weight = adv_weight
        self.recon_weight = recon_weight
        self.encoding_weight = encoding_weight
        self.encoder = _mlp([n_genes, *hidden, latent_dim], last_activated=False)
        self.generators = nn.ModuleList(
            _mlp([latent_dim, *hidden[::-1], n_genes], last_activated=True) for _ in range(2)
        )
        self.discriminator = nn.ModuleList(
            AuxiliaryClassifierDiscriminator(n_genes, hidden, n_types) for _ in range(2)
        )

    @torch.no_grad()
    def start_at(self, mean: Tensor, sd: Tensor) -> None:
        """Start the generators' output normalization at the genes' ``mean`` and ``sd`` (see
        :func:`mtpert.models.per_condition.gene_moments`)."""
        for generator in self.generators:
            generator[-2].bias.copy_(mean)
            generator[-2].weight.copy_(sd)

    def translate(self, x: Tensor) -> Tensor:
        """Control cells -> the perturbed generator's output for their latent states."""
        return self.generators[PERTURBED](self.encoder(x))

    # ------------------------------------------------------------------ training
    def losses(self, batch: Batch) -> dict[str, Tensor]:
        """The generators' and encoder's objective (the original's G step).

        For cells ``x`` of domain ``d``: ``same = G_d(E(x))`` is reconstructed, ``cross =
        G_other(E(x))`` is the translation, ``cycle = G_d(E(cross))`` its way back. All three must
        pass as real cells of their cell type before the discriminator of the domain they claim;
        ``same`` must equal ``x``; re-encoding ``same`` and ``cross`` must give back ``E(x)``.
        """
        x, d, t = batch.x, batch.condition, batch.group
        other = 1 - d
        z = self.encoder(x)
        same = _route(self.generators, z, d)
        cross = _route(self.generators, z, other)
        z_cross = self.encoder(cross)
        cycle = _route(self.generators, z_cross, d)
        target = z.detach()
        encoding = ((self.encoder(same) - target) ** 2).mean(-1) + ((z_cross - target) ** 2).mean(
            -1
        )
        adversarial = sum(
            domain_mean(self._judged(fake, claimed, t, real=True), d)
            for fake, claimed in ((same, d), (cross, other), (cycle, d))
        )
        return {
            "recon": self.recon_weight * domain_mean(((same - x) ** 2).mean(-1), d),
            "encoding": self.encoding_weight * domain_mean(encoding, d),
            "adv": self.adv_weight * adversarial,  # type: ignore[operator]
        }

    def discriminator_input(self, batch: Batch) -> Tensor:
        """Each cell translated to the other domain (the generated cells the discriminators see)."""
        return _route(self.generators, self.encoder(batch.x), 1 - batch.condition)

    def discriminator_loss(self, cross: Tensor, batch: Batch) -> Tensor:
        """Each discriminator: its domain's real cells as real, the cells translated into its domain
        as generated, and the cell type of both."""
        d, t = batch.condition, batch.group
        real = self._judged(batch.x, d, t, real=True)
        fake = self._judged(cross, 1 - d, t, real=False)
        return domain_mean(real, d) + domain_mean(fake, 1 - d)

    def _judged(self, x: Tensor, domain: Tensor, cell_type: Tensor | None, *, real: bool) -> Tensor:
        """Per-cell loss of domain ``domain``'s discriminator: binary cross-entropy against the
        real/generated label plus cross-entropy of the cell type."""
        if cell_type is None:
            raise ValueError(
                "scPreGAN's discriminators classify cell types; the batch has no group labels."
            )
        out = _route(self.discriminator, x, domain)
        label = torch.full_like(out[:, 0], 1.0 if real else 0.0)
        return nn.functional.binary_cross_entropy_with_logits(
            out[:, 0], label, reduction="none"
        ) + nn.functional.cross_entropy(out[:, 1:], cell_type, reduction="none")


def _route(modules: nn.ModuleList, x: Tensor, index: Tensor) -> Tensor:
    """Each row of ``x`` through ``modules[index[row]]``."""
    out: Tensor | None = None
    for k in index.unique().tolist():
        rows = index == k
        y = modules[k](x[rows])
        if out is None:
            out = y.new_empty(x.shape[0], y.shape[1])
        out[rows] = y
    if out is None:
        raise ValueError("Cannot route an empty batch.")
    return out


@dataclass(frozen=True, kw_only=True)
class ScPreGANParams(PerConditionParams):
    """Hyperparameters of :class:`ScPreGAN`, besides the seed and the training settings of
    :class:`~mtpert.train.TrainConfig` (``batch_size`` counts both domains; defaults: see
    :class:`~mtpert.models.per_condition.PerConditionParams`, and patience 30).

    Attributes:
        hidden: encoder hidden widths (the original's ``2 * min_hidden_size, min_hidden_size``);
            generators mirror them and discriminators reuse them.
        latent_dim: latent size (the original's ``z_dim``).
        adv_weight, recon_weight, encoding_weight: loss weights (``lambda_adv``,
            ``lambda_recon``, ``lambda_encoding``).
    """

    hidden: tuple[int, ...] = (512, 256)
    latent_dim: int = 16
    adv_weight: float = 1e-3
    recon_weight: float = 1.0
    encoding_weight: float = 0.1
    patience: int = 30

    def __post_init__(self) -> None:
        super().__post_init__()
        self._widths("hidden")
        self._positive("latent_dim")


class ScPreGAN(PerConditionModel):
    """scPreGAN (Wei et al. 2022): shared encoder, a generator and an auxiliary-classifier
    discriminator per domain (control, perturbed), trained adversarially.

    The encoder maps cells of both domains to one latent space; the control generator must
    reconstruct control cells and the perturbed generator perturbed cells. Translations (a control
    cell's latent through the perturbed generator, and back) must fool the discriminator of their
    target domain, which also classifies cell types (auxiliary classifier GAN), and re-encode to
    the same latent state. Prediction: encode the target's control cells, decode with the
    perturbed generator. Training cells are all control cells (the target's included, as in the
    original's out-of-sample setting) and the perturbed cells of the training cell types.

    Architecture and defaults follow the authors' code (github.com/JaneJiayiDong/scPreGAN, the
    ``Model`` class): encoder ``n_genes -> 2h -> h -> 16`` and generators ``16 -> h -> 2h ->
    n_genes`` with LayerNorm and ReLU (also on the generators' output); discriminators with two
    spectrally normalized ReLU layers; PyTorch's default initialization; loss weights
    adversarial 0.001, reconstruction 1, encoding 0.1; learning rate 1e-3, minibatches of 64
    cells per domain. The original's ``init_weights`` (Xavier-uniform, gain 0.01, bias 0.01) is
    called on whole networks (``init_weights(E)``, not ``E.apply(init_weights)``) and only acts
    on a bare ``nn.Linear``, so it changes nothing (github.com/XiajieWei/scPreGAN). Applied to
    every layer, that initialization leaves the latent code nearly constant: the reconstruction
    error stays at the cells' variance, and on the fit check (``tests/test_fit_check.py``) the
    predicted changes correlate with the true ones at 0.41 (0.86 with the default).

    Deviations from the original, and why:

    * Several perturbations: one scPreGAN per (condition, dose) (the original translates one
      control domain to one perturbed domain); see :class:`PerConditionModel`.
    * Training runs in mtpert's shared loop (:func:`mtpert.train.train`): epochs of mixed
      minibatches of ``batch_size`` cells, the smaller domain resampled to the size of the larger
      so both are equally represented (the original draws 64 cells per domain per step), with
      per-domain mean losses as in the original. The discriminator and generator steps use the
      same minibatch (the original draws a fresh pair for the generator step).
    * One AdamW optimizer (weight decay 0) for encoder and generators, one for the
      discriminators, at learning rate ``lr``; the original uses Adam with betas (0.5, 0.9) at
      1e-3 for generators and discriminators and 1e-4 for the encoder. The loop clips gradient
      norms at ``grad_clip`` and halves the learning rate on validation plateaus.
    * Length: at most ``max_epochs`` epochs, stopped early on the validation reconstruction and
      encoding losses (best epoch restored); the original runs a fixed 20,000 steps without
      validation and decays learning rates by 0.9 every 10,000 steps.
    * The auxiliary cell-type loss is the cross-entropy of the classifier's logits; the original
      applies ``NLLLoss`` to softmax probabilities, i.e. minimizes minus the probability rather
      than minus its logarithm.
    * Input is mtpert's log-normalized expression; the original's README suggests scaled data,
      which its ReLU output layer cannot produce where values are negative.
    * Predictions are clipped at 0, the floor of log data (the ReLU output already is >= 0).

    Keyword arguments: the fields of :class:`ScPreGANParams` and the runtime options of
    :class:`~mtpert.models.trained.TrainedModel`.
    """

    name = "scpregan"
    Params = ScPreGANParams
    params: ScPreGANParams
    cell_types: list[str]
    """Cell types of the training cells, in the order of the discriminators' classes."""

    def _prepare(self, train: AnnData) -> None:
        self.cell_types = self.spec.cell_types(train)

    def _build(self) -> ScPreGANNet:
        p = self.params
        return ScPreGANNet(
            len(self.genes),  # type: ignore[arg-type]
            len(self.cell_types),
            hidden=p.hidden, latent_dim=p.latent_dim, adv_weight=p.adv_weight,
            recon_weight=p.recon_weight, encoding_weight=p.encoding_weight,
        )  # fmt: skip

    def _fit_condition(
        self, train_cells: AnnData, val: AnnData | None, seed: int, generator: torch.Generator
    ) -> tuple[nn.Module, pd.DataFrame]:
        data = self._cell_data(train_cells, np.random.default_rng(seed))
        val_data = self._cell_data(val) if val is not None and val.n_obs else None
        net = self._build()
        net.start_at(*gene_moments(train_cells))
        return net, self._train(net, data, val_data, generator)

    def _cell_data(self, adata: AnnData, rng: np.random.Generator | None = None) -> CellData:
        """Cells with their domain and cell-type index; with ``rng``, the smaller domain is
        resampled (with replacement) up to the size of the larger."""
        domain = (~self.spec.is_control(adata)).astype(np.int64)
        cell_type = pd.Index(self.cell_types).get_indexer(
            adata.obs[self.spec.cell_type_key].astype(str)
        )
        rows = np.flatnonzero(
            cell_type >= 0
        )  # validation cells of a type unseen in training: skipped
        if rng is not None:
            sides = sorted((rows[domain[rows] == k] for k in (CONTROL, PERTURBED)), key=len)
            if len(sides[0]):
                rows = np.concatenate([rows, rng.choice(sides[0], len(sides[1]) - len(sides[0]))])
        return CellData(
            cell_matrix(adata)[rows], domain[rows], group=cell_type[rows].astype(np.int64)
        )

    def _learned(self) -> dict[str, Any]:
        return {**super()._learned(), "cell_types": self.cell_types}

    def _restore(self, learned: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        self.cell_types = list(learned["cell_types"])  # before the networks are built
        super()._restore(learned, tensors)
