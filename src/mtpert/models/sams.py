"""SAMS-VAE and GPO-VAE: latent perturbation effects that are explicit, sparse and additive.

SAMS-VAE (sparse additive mechanism shift VAE; Bereket & Karaletsos, NeurIPS 2023) writes a cell's
latent state as its basal state plus, for each perturbation it received, a learned effect vector
``e_p`` masked by a learned sparse binary mask ``m_p``::

    z = z_basal + sum_p d_p * (e_p ⊙ m_p),      x ~ NegativeBinomial(library * softmax(decoder(z)), θ)

``d_p`` is 1 for a perturbation the cell received (its scaled dose where the data have doses), so
a combination ``A+B`` shifts the latent by the sum of its parts' masked effects, and a pair never
seen together is predicted. The encoder infers ``z_basal`` from the cell's log expression and its
perturbations (so that it can take the perturbation out); a standard normal prior on ``z_basal``
makes the effects, not the encoder, carry what perturbations share. The mask has a Bernoulli
prior of small probability (sparsity), and is trained through its relaxed (concrete / Gumbel-
sigmoid) form: one mask drawn per minibatch, as a global variable; its expectation (the mask
probabilities) when predicting. Being one variable for the whole data set, the mask's KL
divergence from its prior enters the per-cell loss divided by the number of training cells, as
in the ELBO.

GPO-VAE (Baek et al., Bioinformatics 2025) ties the latent to the perturbed genes: latent dimension
``j`` stands for perturbed gene ``j`` (plus ``basal_dim`` free dimensions that perturbations do not
shift), so that the mask probability ``π[a, b]`` reads as an edge "perturbing ``a`` acts on ``b``"
of a perturbed-gene regulatory graph (:meth:`SamsVAE.regulatory_graph`). A GRN-alignment loss,
the mean absolute difference between ``π`` and a target graph, makes that reading hold:

* ``alignment='data'``: an edge ``a -> b`` where perturbing ``a`` alone changes the measured
  expression of gene ``b`` by at least ``fc_threshold`` (mean log-normalized change from control,
  averaged over the training groups; the paper's fold-change criterion); entries whose gene ``b``
  is not measured are left out;
* ``alignment='prior'``: the edges of a TF -> target table (:func:`mtpert.data.priors.read_prior`)
  between perturbed genes; for a regulator with a known regulon, the perturbed genes it does not
  regulate are non-edges; regulators absent from the table are left out (no evidence either way).

``sams_vae`` is this model with ``alignment='none'``. Effects and mask are point estimates and a
mean-field Bernoulli respectively (SAMS-VAE's variational posterior over the effects is replaced by
AdamW's weight decay, a Gaussian prior); the paper's counterfactual term and multi-hop graph
powers are left out.

The likelihood is a negative binomial on raw counts (``adata.layers['counts']``, where
:func:`mtpert.data.prepare` keeps them), with the cell's observed library size over the model's
genes and one dispersion per gene. Predictions are log-normalized like the input: the decoded mean
fractions are scaled by each control cell's normalized total over the model's genes (known from its
log expression alone, so no counts are needed to predict) and ``prediction='residual'`` adds the
decoded change to each control cell, as the multi-task family does.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData
from torch import Tensor, nn

from mtpert.data.pp import COUNTS_LAYER
from mtpert.data.priors import read_prior
from mtpert.errors import DataError
from mtpert.models.base import NotFittedError, check_choice, check_weights
from mtpert.models.search import Choice, Distribution, FloatRange
from mtpert.models.simple import mean_changes
from mtpert.models.trained import Hyperparameters, TrainedModel
from mtpert.train.data import Batch, CellData

Alignment = Literal["none", "data", "prior"]
Prediction = Literal["residual", "decoded"]


class SamsNet(nn.Module):
    """Encoder, additive masked latent effects and NB decoder; a :class:`mtpert.train.Trainable`.

    A batch's ``x`` holds each cell's log expression and then its raw counts (``2 * n_genes``
    columns), so the training loop's one matrix carries both. ``codes`` (conditions x
    perturbations) is the multi-hot code of each training condition, derived from the labels and
    not saved; so are the alignment ``targets`` and the ``known`` entries they cover, and
    ``n_cells``, the number of training cells the mask's KL divergence is spread over (a loaded
    model computes no loss: 1 there).
    """

    monitored = ("recon", "kl")
    discriminator = None

    def __init__(
        self,
        n_genes: int,
        codes: Tensor,
        *,
        basal_dim: int,
        hidden: tuple[int, ...],
        temperature: float,
        mask_prior: float,
        sparsity_weight: float,
        kl_weight: float,
        alignment_weight: float,
        targets: Tensor | None = None,
        known: Tensor | None = None,
        n_cells: int = 1,
    ) -> None:
        super().__init__()
        n_pert = codes.shape[1]
        self.n_genes, self.n_pert, self.n_cells = n_genes, n_pert, n_cells
        self.temperature, self.mask_prior = temperature, mask_prior
        self.sparsity_weight, self.kl_weight = sparsity_weight, kl_weight
        self.alignment_weight = alignment_weight
        latent = n_pert + basal_dim
        self.encoder = _mlp(n_genes + n_pert, hidden, 2 * latent)
        self.decoder = _mlp(latent, hidden[::-1], n_genes)
        self.log_theta = nn.Parameter(torch.full((n_genes,), math.log(10.0)))
        self.effects = nn.Parameter(0.1 * torch.randn(n_pert, n_pert))
        self.mask_logits = nn.Parameter(torch.zeros(n_pert, n_pert))
        self.register_buffer("codes", codes.float(), persistent=False)
        zeros = torch.zeros(n_pert, n_pert)
        self.register_buffer("targets", zeros if targets is None else targets.float(), persistent=False)
        self.register_buffer("known", zeros.bool() if known is None else known.bool(), persistent=False)

    # ------------------------------------------------------------------ pieces
    def mask_probabilities(self) -> Tensor:
        """``π[a, b]``: the probability that perturbation ``a`` shifts latent dimension ``b``."""
        return torch.sigmoid(self.mask_logits)

    def mask(self) -> Tensor:
        """A relaxed Bernoulli draw of the mask while training (one per minibatch: the mask is a
        global variable), the mask probabilities otherwise."""
        if not self.training:
            return self.mask_probabilities()
        u = torch.rand_like(self.mask_logits).clamp(1e-6, 1 - 1e-6)
        return torch.sigmoid((self.mask_logits + u.log() - (-u).log1p()) / self.temperature)

    def dosage(self, condition: Tensor, dose: Tensor | None) -> Tensor:
        """(n, perturbations): each cell's multi-hot perturbations, times its scaled dose."""
        d = self.codes[condition]
        return d if dose is None else d * dose[:, None]

    def encode(self, x_log: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of the basal state of cells ``x_log`` that received ``d``."""
        mean, logvar = self.encoder(torch.cat([x_log, d], dim=-1)).chunk(2, dim=-1)
        return mean, logvar.clamp(-10.0, 10.0)

    def shift(self, basal: Tensor, d: Tensor, mask: Tensor) -> Tensor:
        """The basal state plus the summed masked effects, on the tied dimensions only."""
        tied = basal[:, : self.n_pert] + d @ (self.effects * mask)
        return torch.cat([tied, basal[:, self.n_pert :]], dim=-1)

    def fractions(self, z: Tensor) -> Tensor:
        """Expected share of a cell's counts in each gene."""
        return torch.softmax(self.decoder(z), dim=-1)

    # ------------------------------------------------------------------ training
    def losses(self, batch: Batch) -> dict[str, Tensor]:
        x_log, counts = batch.x[:, : self.n_genes], batch.x[:, self.n_genes :]
        d = self.dosage(batch.condition, batch.dose)
        mean, logvar = self.encode(x_log, d)
        basal = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if self.training else mean
        z = self.shift(basal, d, self.mask())
        library = counts.sum(-1, keepdim=True).clamp_min(1.0)
        nll = -_nb_log_prob(counts, library * self.fractions(z), self.log_theta.exp())
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)
        probs = self.mask_probabilities()
        terms = {
            "recon": nll.sum(-1).mean() / self.n_genes,  # per gene, as the other models' MSE
            "kl": self.kl_weight * kl.mean() / self.n_genes,
            # a global variable: its KL counts once per data set, so 1 / n_cells of it per cell
            "sparsity": self.sparsity_weight
            * _bernoulli_kl(probs, self.mask_prior).sum()
            / (self.n_cells * self.n_genes),
        }
        if self.alignment_weight > 0 and self.known.any():
            gap = (probs - self.targets).abs()[self.known]
            terms["align"] = self.alignment_weight * gap.mean()
        return terms

    @torch.no_grad()
    def start_at_mean(self, fractions: Tensor) -> None:
        """Start decoding every cell as the average cell (output bias = log mean fractions)."""
        self.decoder[-1].bias.copy_(fractions.clamp_min(1e-8).log())


@dataclass(frozen=True, kw_only=True)
class SamsParams(Hyperparameters):
    """Hyperparameters of :class:`SamsVAE`, besides the training settings and the seed.

    Attributes:
        alignment: the target of the GRN-alignment loss: ``none`` (SAMS-VAE), ``data`` (edges where
            perturbing a gene alone changes another perturbed gene by ``fc_threshold``) or
            ``prior`` (the TF -> target table at ``prior``).
        alignment_weight: weight of the alignment loss (mean absolute gap between mask
            probabilities and target graph) against the per-gene reconstruction loss.
        prior: path of the TF -> target table for ``alignment='prior'`` (read at fit).
        fc_threshold: mean log-normalized change (natural log) of a measured perturbed gene that
            makes a data edge.
        mask_prior: prior probability of each mask entry (Bernoulli): small, for a sparse graph.
        sparsity_weight: weight of the mask's KL divergence from that prior (1: the ELBO's, the
            sum over entries spread over the training cells). Weighed as a per-cell term (the
            mean over entries in every minibatch, with weight 0.05), it outweighed the data and
            held the mask near its prior: on issue 28's fit check (tests/test_fit_check.py) the
            changes of the training conditions came out at a sixth of the true ones (r 0.52).
        temperature: temperature of the relaxed Bernoulli mask (lower: closer to 0/1 draws).
        hidden: encoder hidden widths (the decoder mirrors them).
        basal_dim: latent dimensions beyond those tied to the perturbed genes, holding basal state
            only (cell line, cycle, ...); perturbations do not shift them.
        kl_weight: weight of the basal state's KL divergence (1: the ELBO). Above 1, as in a
            beta-VAE, so that the encoder does not explain part of a perturbation's change as the
            perturbed cells' basal state (predictions from control cells then fall short of it:
            on a simulated screen, changes came out at 30-50% of the truth with 1, 85-115% with 5).
        lr: the learning rate (higher than the other models' default: the effects and the mask
            are global parameters, updated by every minibatch but far from where they start).
        prediction: ``residual`` (each control cell plus the decoded change) or ``decoded`` (the
            decoded mean under the target).
        min_cells: fewest control and perturbed cells of a group for its change to count in the
            data edges.
        counts_layer: layer holding the raw counts the likelihood is fitted to.
    """

    lr: float = 1e-2
    alignment: Alignment = "data"
    alignment_weight: float = 1.0
    prior: str | None = None
    fc_threshold: float = 0.25
    mask_prior: float = 0.1
    sparsity_weight: float = 1.0
    temperature: float = 0.5
    hidden: tuple[int, ...] = (128,)
    basal_dim: int = 8
    kl_weight: float = 5.0
    prediction: Prediction = "residual"
    min_cells: int = 5
    counts_layer: str = COUNTS_LAYER

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("alignment", self.alignment, get_args(Alignment))
        check_choice("prediction", self.prediction, get_args(Prediction))
        if self.prior is not None and self.alignment != "prior":
            raise ValueError(
                f"prior={self.prior!r} is used only by alignment='prior', and alignment is "
                f"{self.alignment!r}, so it would be ignored: set alignment='prior', or leave "
                "out prior."
            )
        if self.alignment == "prior" and self.prior is None:
            raise ValueError("alignment='prior' needs prior=, the path of a TF -> target table.")
        if not 0.0 < self.mask_prior < 1.0:
            raise ValueError(f"mask_prior must be in (0, 1), got {self.mask_prior}.")
        negative = [
            f"{k}={getattr(self, k)}"
            for k in ("alignment_weight", "sparsity_weight", "kl_weight", "fc_threshold", "basal_dim")
            if getattr(self, k) < 0
        ]
        if negative or self.temperature <= 0:
            raise ValueError(f"{', '.join(negative) or 'temperature'}: must be >= 0 (temperature > 0).")
        self._widths("hidden")
        self._positive("min_cells")


class SamsVAE(TrainedModel):
    """SAMS-VAE / GPO-VAE: sparse additive latent perturbation effects, optionally aligned to a GRN.

    Keyword arguments: the fields of :class:`SamsParams` and the runtime options of
    :class:`~mtpert.models.trained.TrainedModel`. See :mod:`mtpert.models.sams`.
    """

    Params = SamsParams
    params: SamsParams
    predicts_unseen_combinations = True
    predicts_unseen_doses = True  # the effects scale linearly with the log dose
    net: SamsNet | None = None
    conditions: list[str]
    """Control, then the training conditions (condition index order)."""
    perturbations: list[str]
    """The single perturbations: the tied latent dimensions, the graph's nodes."""
    dose_scale: float | None = None
    """log1p of the largest training dose (None without doses)."""

    @property
    def name(self) -> str:  # type: ignore[override]
        """``sams_vae`` without alignment, ``gpo_vae`` with it."""
        return "sams_vae" if self.params.alignment == "none" else "gpo_vae"

    # ------------------------------------------------------------------ fit / predict
    def search_space(self) -> dict[str, Distribution]:
        """Learning rate, the basal state's KL weight and size, the mask's sparsity, and the
        alignment's weight where the model aligns."""
        space: dict[str, Distribution] = super().search_space() | {
            "kl_weight": FloatRange(1.0, 10.0),
            "basal_dim": Choice((4, 8, 16)),
            "sparsity_weight": FloatRange(0.1, 10.0, log=True),
        }
        if self.params.alignment != "none":
            space["alignment_weight"] = FloatRange(0.1, 10.0, log=True)
        return space

    def _fit(self, train: AnnData, val: AnnData | None) -> None:
        spec = self.spec
        if train.isbacked or (val is not None and val.isbacked):
            raise DataError(f"{self.name} needs X and the counts in memory; load them (adata.to_memory()).")
        self.conditions = [spec.control, *spec.conditions(train)]
        self.perturbations = sorted({p for c in self.conditions[1:] for p in spec.parts(c)})
        self.dose_scale = None
        if spec.dose_key is not None:
            doses = train.obs[spec.dose_key].to_numpy(dtype=float)
            if doses.min() < 0:
                raise DataError(f"obs['{spec.dose_key}'] has negative doses; doses must be >= 0.")
            self.dose_scale = float(np.log1p(doses).max()) or 1.0
        data = self._cell_data(train, with_counts=True)
        val_data = self._cell_data(val, with_counts=True) if val is not None and val.n_obs else None
        targets, known = self._alignment_targets(train)
        counts = data.X[:, train.n_vars :]
        fractions = np.asarray(counts.sum(axis=0)).ravel() + 1.0
        with self._seeded(self._seed()) as generator:
            self.net = self._build(targets, known, n_cells=len(data))
            self.net.start_at_mean(torch.as_tensor(fractions / fractions.sum(), dtype=torch.float32))
            self._histories = [self._train(self.net, data, val_data, generator)]

    def _predict(self, control: AnnData, condition: str, dose: float | None) -> np.ndarray:
        cells = self._cell_data(control, with_counts=False, labelled=False)
        return self._predict_cells(self.prediction_function(condition, dose), cells)

    def prediction_function(self, condition: str, dose: float | None = None) -> Callable[[Tensor], Tensor]:
        """The prediction under ``condition`` as a differentiable function of control cells' log
        expression, (n, genes) -> (n, genes) on the model's device, before the clipping at 0:
        what :func:`mtpert.models.attribution.attribute` takes gradients of."""
        net = self._fitted_net()
        code = torch.as_tensor(self._code(condition), device=self.device)
        if self.spec.dose_key is None and dose is not None:
            raise DataError("This model was trained without doses (the spec has no dose_key); leave dose=None.")
        if dose is not None:
            if dose < 0:
                raise DataError(f"dose must be >= 0, got {dose}.")
            code = code * float(np.log1p(dose) / self.dose_scale)  # type: ignore[operator]

        def predict(x: Tensor) -> Tensor:
            n = x.shape[0]
            basal, _ = net.encode(x, torch.zeros(n, net.n_pert, device=x.device))
            target = net.fractions(net.shift(basal, code.expand(n, -1), net.mask_probabilities()))
            total = torch.expm1(x).sum(-1, keepdim=True)  # normalized total over our genes
            pred = torch.log1p(total * target)
            if self.params.prediction == "residual":
                pred = x + pred - torch.log1p(total * net.fractions(basal))  # d = 0
            return pred

        return predict

    def regulatory_graph(self, *, self_loops: bool = False) -> pd.DataFrame:
        """The learned perturbed-gene -> perturbed-gene graph, one row per ordered pair.

        Columns: ``regulator`` and ``target`` (perturbation labels, the tied latent dimensions),
        ``weight`` (the expected masked effect ``π * e`` of perturbing the regulator on the
        target's latent dimension; its sign is the direction of that shift, not necessarily of
        the regulation) and ``mask_probability`` (``π``, the edge's confidence). Sorted by
        ``mask_probability``, highest first. ``self_loops``: include each gene's effect on itself.
        """
        net = self._fitted_net()
        with torch.no_grad():
            probs = net.mask_probabilities().cpu().numpy().astype(np.float64)
            weight = probs * net.effects.detach().cpu().numpy()
        names = np.asarray(self.perturbations, dtype=object)
        a, b = np.meshgrid(np.arange(len(names)), np.arange(len(names)), indexing="ij")
        keep = np.ones_like(a, dtype=bool) if self_loops else a != b
        table = pd.DataFrame(
            {
                "regulator": names[a[keep]],
                "target": names[b[keep]],
                "weight": weight[keep],
                "mask_probability": probs[keep],
            }
        )
        return table.sort_values("mask_probability", ascending=False, kind="stable").reset_index(drop=True)

    # ------------------------------------------------------------------ save / load
    def _learned(self) -> dict[str, Any]:
        return {
            **super()._learned(),
            "conditions": self.conditions,
            "perturbations": self.perturbations,
            "dose_scale": self.dose_scale,
        }

    def _tensors(self) -> dict[str, Tensor]:
        return self._fitted_net().state_dict()

    def _restore(self, learned: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        super()._restore(learned, tensors)
        self.conditions = list(learned["conditions"])
        self.perturbations = list(learned["perturbations"])
        self.dose_scale = learned["dose_scale"]
        self.net = self._build(None, None)
        check_weights(tensors, {k: v.shape for k, v in self.net.state_dict().items()})
        self.net.load_state_dict(tensors)
        self.net.to(self.device).eval()

    # ------------------------------------------------------------------ helpers
    def _build(self, targets: Tensor | None, known: Tensor | None, *, n_cells: int = 1) -> SamsNet:
        p = self.params
        codes = torch.as_tensor(np.stack([self._code(c) for c in self.conditions]))
        return SamsNet(
            len(self.genes),  # type: ignore[arg-type]
            codes,
            basal_dim=p.basal_dim, hidden=p.hidden, temperature=p.temperature,
            mask_prior=p.mask_prior, sparsity_weight=p.sparsity_weight, kl_weight=p.kl_weight,
            alignment_weight=p.alignment_weight if p.alignment != "none" else 0.0,
            targets=targets, known=known, n_cells=n_cells,
        )  # fmt: skip

    def _fitted_net(self) -> SamsNet:
        if self.net is None:
            raise NotFittedError(f"{self.name}: call fit first.")
        return self.net

    def _code(self, condition: str) -> np.ndarray:
        """Multi-hot code of ``condition`` over the perturbations (DataError for an unknown part)."""
        if condition == self.spec.control:
            return np.zeros(len(self.perturbations), dtype=np.float32)
        parts = self.spec.parts(condition)
        unknown = [p for p in parts if p not in self.perturbations]
        if unknown:
            raise DataError(
                f"{self.name} was not trained on {unknown} (of '{condition}') and cannot predict it; "
                f"known perturbations: {self.perturbations}."
            )
        index = pd.Index(self.perturbations).get_indexer(parts)
        return np.bincount(index, minlength=len(self.perturbations)).astype(np.float32)

    def _cell_data(self, adata: AnnData, *, with_counts: bool, labelled: bool = True) -> CellData:
        """Cells as a :class:`CellData`: log expression (then the raw counts, ``with_counts``)."""
        X = adata.X
        X = sp.csr_matrix(X, dtype=np.float32) if sp.issparse(X) else np.asarray(X, dtype=np.float32)
        if with_counts:
            counts = self._counts(adata)
            X = sp.hstack([sp.csr_matrix(X), counts], format="csr", dtype=np.float32)
        if not labelled:
            return CellData(X, np.zeros(adata.n_obs, dtype=np.int64))
        labels = adata.obs[self.spec.condition_key].astype(str).to_numpy()
        index = pd.Index(self.conditions).get_indexer(labels)
        if (index < 0).any():
            raise DataError(
                f"Cells with conditions {sorted(set(labels[index < 0]))} that the training cells do not "
                f"have; known: {self.conditions}. Drop them, or include them in the training cells."
            )
        dose = None
        if self.spec.dose_key is not None:
            log_dose = np.log1p(adata.obs[self.spec.dose_key].to_numpy(dtype=float))
            dose = (log_dose / self.dose_scale).astype(np.float32)  # type: ignore[operator]
        return CellData(X, index.astype(np.int64), dose)

    def _counts(self, adata: AnnData) -> sp.csr_matrix:
        """The raw counts of ``adata``'s cells (DataError where there are none)."""
        layer = self.params.counts_layer
        if layer not in adata.layers:
            raise DataError(
                f"{self.name} fits a negative binomial to raw counts, read from "
                f"adata.layers['{layer}'], which this AnnData lacks (layers: {list(adata.layers)}). "
                f"mtpert.data.prepare keeps them there when given raw counts; prepare the data from "
                "the counts, or name the layer holding them with counts_layer=."
            )
        counts = sp.csr_matrix(adata.layers[layer], dtype=np.float32)
        values = counts.data
        if values.size and (values.min() < 0 or not np.all(values == np.round(values))):
            raise DataError(
                f"adata.layers['{layer}'] does not hold raw counts (non-integer or negative values); "
                f"{self.name} needs the unnormalized counts there."
            )
        return counts

    def _alignment_targets(self, train: AnnData) -> tuple[Tensor | None, Tensor | None]:
        """The target graph of the alignment loss and which of its entries are known."""
        alignment, n = self.params.alignment, len(self.perturbations)
        if alignment == "none":
            return None, None
        targets, known = np.zeros((n, n), dtype=np.float32), np.zeros((n, n), dtype=bool)
        index = {p.upper(): i for i, p in enumerate(self.perturbations)}
        if alignment == "prior":
            prior = read_prior(self.params.prior, self.perturbations)  # type: ignore[arg-type]
            within = prior.within()
            within = within[within["source"] != within["target"]]
            if within.empty:
                raise DataError(
                    f"{self.name}: the prior network {self.params.prior} has no edge between two of "
                    f"the perturbed genes {self.perturbations} ({prior.summary()}); use "
                    "alignment='data', or a prior that covers them."
                )
            sources = prior.edges["source_gene"].dropna().unique()
            for source in sources:  # a known regulon: its other perturbed genes are non-edges
                known[index[source.upper()]] = True
            for source, target in zip(within["source"], within["target"], strict=True):
                targets[index[source.upper()], index[target.upper()]] = 1.0
            np.fill_diagonal(known, False)
        else:
            table = mean_changes(train, self.spec, self.params.min_cells, model=self.name)
            changes = np.abs(table.averaged())
            genes = {g.upper(): j for j, g in enumerate(train.var_names)}
            measured = [(i, genes[p.upper()]) for i, p in enumerate(self.perturbations) if p.upper() in genes]
            for row, (condition, _) in enumerate(table.keys):
                parts = self.spec.parts(condition)
                if len(parts) != 1 or parts[0] not in self.perturbations:
                    continue
                a = self.perturbations.index(parts[0])
                for b, column in measured:  # the largest change over doses
                    known[a, b] = True
                    targets[a, b] = max(targets[a, b], float(changes[row, column] >= self.params.fc_threshold))
            if not known.any():
                warnings.warn(
                    f"{self.name}: none of the {n} perturbed genes (e.g. {self.perturbations[:3]}) is "
                    "among the measured genes, so alignment='data' has no target; the latent is not "
                    "aligned.",
                    stacklevel=4,
                )
        return torch.as_tensor(targets), torch.as_tensor(known)


def _mlp(n_in: int, hidden: tuple[int, ...], n_out: int) -> nn.Sequential:
    """Linear -> LayerNorm -> SiLU per hidden width, then a linear output layer."""
    layers: list[nn.Module] = []
    for a, b in zip((n_in, *hidden), hidden, strict=False):
        layers += [nn.Linear(a, b), nn.LayerNorm(b), nn.SiLU()]
    layers.append(nn.Linear(hidden[-1] if hidden else n_in, n_out))
    return nn.Sequential(*layers)


def _nb_log_prob(x: Tensor, mu: Tensor, theta: Tensor) -> Tensor:
    """Log-probability of counts ``x`` under a negative binomial of mean ``mu``, inverse
    dispersion ``theta`` (variance ``mu + mu² / theta``)."""
    log_theta_mu = torch.log(theta + mu + 1e-8)
    return (
        torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1.0)
        + theta * (torch.log(theta + 1e-8) - log_theta_mu)
        + x * (torch.log(mu + 1e-8) - log_theta_mu)
    )


def _bernoulli_kl(p: Tensor, prior: float) -> Tensor:
    """KL(Bernoulli(p) || Bernoulli(prior)), elementwise."""
    p = p.clamp(1e-6, 1 - 1e-6)
    return p * (p.log() - math.log(prior)) + (1 - p) * ((1 - p).log() - math.log(1 - prior))

