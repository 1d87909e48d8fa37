"""Predict one modality of a cell from another (RNA -> surface protein), with a choice of fusion.

Every model here has ``fit(source, target)`` and ``predict(source) -> AnnData`` over the target's
features, on AnnData of paired cells (:func:`mtpert.data.modalities.paired` prepares them). They
are not perturbation models: nothing is held out by group or condition, the task is to fill in a
modality that was not measured.

:class:`MultimodalAE` is a multimodal autoencoder whose fusion is an option:

* ``early``: both modalities' inputs concatenated (a missing one as zeros, with a flag) into one
  encoder, one latent state, one decoder per modality;
* ``poe`` (intermediate fusion, product of experts): one encoder per modality, each giving a
  Gaussian over the shared latent; the experts present (and a standard-normal prior expert) are
  multiplied, as in MVAE (Wu & Goodman 2018);
* ``mixture`` (intermediate fusion, mixture of experts): the latent is the average of the present
  experts' means (the mixture's mean, as in MMVAE, Shi et al. 2019, without its sampling);
* ``late``: no shared latent: one network per (source, target) pair predicts the target from that
  source alone; predictions from several present sources would be averaged.

Trained with modality dropout: in each minibatch, each cell's target modality is hidden with
probability ``modality_dropout`` (its source, with a quarter of that, never both), and every
modality is reconstructed, so the model learns to fill in a modality it is not given. Validation
scores the prediction of the target from the source alone, which is what early stopping watches.

Baselines, with the same interface: :class:`OwnGene` (each protein from its coding gene's RNA,
through a per-protein straight line), :class:`RidgeMap` (ridge regression on the RNA's principal
components) and :class:`NeighbourMean` (mean target of the k nearest cells in RNA PCA space).

The classes are registered by name in :data:`CROSSMODAL_MODELS` (``own_gene``, ``ridge``, ``knn``,
``multimodal``), listed by ``mtpert models``; packages add theirs through the
``mtpert.crossmodal`` entry-point group, as for perturbation models.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from sklearn.decomposition import PCA
from sklearn.linear_model import RidgeCV
from sklearn.neighbors import KNeighborsRegressor
from torch import Tensor, nn

from mtpert._array import dense
from mtpert.errors import CheckpointError, DataError
from mtpert.io import atomic_write_files
from mtpert.models.base import NotFittedError
from mtpert.models.registry import (  # noqa: F401  (re-exported: the registry moved there)
    BUILTIN_CROSSMODAL,
    CROSSMODAL_ENTRY_POINT_GROUP,
    CROSSMODAL_MODELS,
    CrossModalRegistry,
    get_crossmodal,
    register_crossmodal,
)
from mtpert.models.trained import Hyperparameters, NetworkModel
from mtpert.train.data import Batch, CellData

Fusion = Literal["early", "poe", "mixture", "late"]
FUSIONS: tuple[str, ...] = ("early", "poe", "mixture", "late")


class CrossModalModel:
    """Base of the cross-modal predictors: checks the paired input, keeps the feature names."""

    name = "crossmodal"

    def __init__(self) -> None:
        self.source_features: list[str] | None = None
        self.target_features: list[str] | None = None

    def fit(self, source: AnnData, target: AnnData) -> CrossModalModel:
        """Learn to predict ``target`` (cells x target features) from ``source`` (same cells)."""
        if source.n_obs != target.n_obs or not source.obs_names.equals(target.obs_names):
            raise DataError("source and target must hold the same cells in the same order (paired modalities).")
        if source.n_obs < 5:
            raise DataError(f"{source.n_obs} cells are too few to fit on.")
        for what, adata in (("source", source), ("target", target)):
            if not np.isfinite(dense(adata.X)).all():
                raise DataError(f"The {what} modality has NaN or infinite values; preprocess it (mtpert.data.modalities.preprocess).")
        self.source_features, self.target_features = list(source.var_names), list(target.var_names)
        self._fit(dense(source.X).astype(np.float32), dense(target.X).astype(np.float32), source)
        return self

    def predict(self, source: AnnData) -> AnnData:
        """The predicted target modality of ``source``'s cells, as an AnnData over its features."""
        if self.source_features is None or self.target_features is None:
            raise NotFittedError(f"{self.name}: fit the model before predicting.")
        missing = [f for f in self.source_features if f not in source.var_names]
        if missing:
            raise DataError(f"{len(missing)} of the {len(self.source_features)} source features the model was fitted on are missing (e.g. {missing[:3]}).")
        x = dense(source[:, self.source_features].X).astype(np.float32)
        return AnnData(self._predict(x), obs=source.obs[[]].copy(), var=pd.DataFrame(index=pd.Index(self.target_features)))

    def _fit(self, x: np.ndarray, y: np.ndarray, source: AnnData) -> None:
        raise NotImplementedError

    def _predict(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class OwnGene(CrossModalModel):
    """Each target feature from one source feature, its coding gene, through a straight line fitted
    on the training cells; a target without a measured coding gene is predicted as its mean.

    Args:
        genes: target feature -> its coding gene in the source (e.g. ``{"CD16": "FCGR3A"}``).
    """

    name = "own_gene"

    def __init__(self, genes: Mapping[str, str | None]) -> None:
        super().__init__()
        self.genes = dict(genes)

    def _fit(self, x: np.ndarray, y: np.ndarray, source: AnnData) -> None:
        column = {g: j for j, g in enumerate(self.source_features or [])}
        self.columns = np.array([column.get(self.genes.get(t) or "", -1) for t in self.target_features or []])
        self.slope, self.intercept = np.zeros(y.shape[1]), y.mean(0)
        for k, j in enumerate(self.columns):
            if j >= 0 and x[:, j].std() > 0:
                self.slope[k], self.intercept[k] = np.polyfit(x[:, j], y[:, k], 1)

    def _predict(self, x: np.ndarray) -> np.ndarray:
        own = np.where(self.columns >= 0, x[:, np.maximum(self.columns, 0)], 0.0)
        return (own * self.slope + self.intercept).astype(np.float32)


class RidgeMap(CrossModalModel):
    """Ridge regression on the source's top ``n_pcs`` principal components (penalty chosen by
    leave-one-out cross-validation on the training cells)."""

    name = "ridge"

    def __init__(self, n_pcs: int = 50) -> None:
        super().__init__()
        self.n_pcs = n_pcs

    def _fit(self, x: np.ndarray, y: np.ndarray, source: AnnData) -> None:
        self.pca = PCA(min(self.n_pcs, *x.shape) - 1 or 1, random_state=0).fit(x)
        self.ridge = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit(self.pca.transform(x), y)

    def _predict(self, x: np.ndarray) -> np.ndarray:
        return self.ridge.predict(self.pca.transform(x)).astype(np.float32)


class NeighbourMean(CrossModalModel):
    """The mean target of the ``k`` nearest training cells in the source's PCA space."""

    name = "knn"

    def __init__(self, k: int = 15, n_pcs: int = 30) -> None:
        super().__init__()
        self.k, self.n_pcs = k, n_pcs

    def _fit(self, x: np.ndarray, y: np.ndarray, source: AnnData) -> None:
        self.pca = PCA(min(self.n_pcs, *x.shape) - 1 or 1, random_state=0).fit(x)
        self.knn = KNeighborsRegressor(n_neighbors=min(self.k, len(x))).fit(self.pca.transform(x), y)

    def _predict(self, x: np.ndarray) -> np.ndarray:
        return self.knn.predict(self.pca.transform(x)).astype(np.float32)


# ---------------------------------------------------------------------------- the autoencoder
def _mlp(n_in: int, hidden: tuple[int, ...], n_out: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(n_in, width), nn.LayerNorm(width), nn.GELU(), nn.Dropout(dropout)]
        n_in = width
    return nn.Sequential(*layers, nn.Linear(n_in, n_out))


class MultimodalNet(nn.Module):
    """Two modalities (source ``s``, target ``t``) packed side by side in a batch's ``x``; a
    :class:`mtpert.train.Trainable`."""

    monitored = ("recon_target",)
    discriminator = None

    def __init__(
        self, n_source: int, n_target: int, *, fusion: Fusion, hidden: tuple[int, ...], latent_dim: int,
        dropout: float, modality_dropout: float, kl_weight: float,
    ) -> None:  # fmt: skip
        super().__init__()
        self.sizes = {"s": n_source, "t": n_target}
        self.fusion, self.modality_dropout, self.kl_weight = fusion, modality_dropout, kl_weight
        if fusion == "early":
            self.encoder = _mlp(n_source + n_target + 2, hidden, latent_dim, dropout)
        elif fusion in ("poe", "mixture"):
            self.experts = nn.ModuleDict({m: _mlp(n, hidden, 2 * latent_dim, dropout) for m, n in self.sizes.items()})
        if fusion == "late":
            self.direct = nn.ModuleDict({"s_t": _mlp(n_source, hidden, n_target, dropout), "t_s": _mlp(n_target, hidden, n_source, dropout)})
        else:
            self.decoders = nn.ModuleDict({m: _mlp(latent_dim, hidden[::-1], n, dropout) for m, n in self.sizes.items()})

    def split(self, x: Tensor) -> dict[str, Tensor]:
        return {"s": x[:, : self.sizes["s"]], "t": x[:, self.sizes["s"] :]}

    def forward(self, inputs: dict[str, Tensor], present: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor]:
        """Each modality reconstructed from the present ones (``present``: (n,) 0/1 per modality),
        and the KL term of the latent (0 where the latent is deterministic)."""
        if self.fusion == "late":
            out = {"t": self.direct["s_t"](inputs["s"]), "s": self.direct["t_s"](inputs["t"])}
            return out, torch.zeros((), device=inputs["s"].device)
        if self.fusion == "early":
            flags = torch.stack([present["s"], present["t"]], dim=1)
            z = self.encoder(torch.cat([inputs["s"] * present["s"][:, None], inputs["t"] * present["t"][:, None], flags], dim=1))
            kl = torch.zeros((), device=z.device)
        else:
            z, kl = self._fuse(inputs, present)
        return {m: decoder(z) for m, decoder in self.decoders.items()}, kl

    def _fuse(self, inputs: dict[str, Tensor], present: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        stats = {m: expert(inputs[m]).chunk(2, dim=1) for m, expert in self.experts.items()}
        if self.fusion == "poe":  # precision-weighted, with a standard-normal prior expert
            precision = 1.0 + sum(present[m][:, None] * torch.exp(-lv.clamp(-8, 8)) for m, (_, lv) in stats.items())
            mean = sum(present[m][:, None] * mu * torch.exp(-lv.clamp(-8, 8)) for m, (mu, lv) in stats.items()) / precision
            logvar = -torch.log(precision)
        else:  # the mixture's mean over the present experts
            weight = torch.stack([present[m] for m in stats], 1)
            weight = weight / weight.sum(1, keepdim=True).clamp_min(1.0)
            mean = sum(weight[:, i, None] * mu for i, (mu, _) in enumerate(stats.values()))
            logvar = sum(weight[:, i, None] * lv.clamp(-8, 8) for i, (_, lv) in enumerate(stats.values()))
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if self.training else mean
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(1).mean()
        return z, kl

    def losses(self, batch: Batch) -> dict[str, Tensor]:
        inputs = self.split(batch.x)
        n = batch.x.shape[0]
        if self.training:
            hide_target = (torch.rand(n, device=batch.x.device) < self.modality_dropout).float()
            hide_source = (torch.rand(n, device=batch.x.device) < self.modality_dropout / 4).float() * (1 - hide_target)
        else:  # validation scores what the model is for: the target from the source alone
            hide_target, hide_source = torch.ones(n, device=batch.x.device), torch.zeros(n, device=batch.x.device)
        present = {"s": 1 - hide_source, "t": 1 - hide_target}
        out, kl = self(inputs, present)
        terms = {"recon_target": (out["t"] - inputs["t"]).pow(2).mean()}
        if self.training:
            terms["recon_source"] = (out["s"] - inputs["s"]).pow(2).mean()
            if self.fusion in ("poe", "mixture"):
                terms["kl"] = self.kl_weight * kl / (self.sizes["s"] + self.sizes["t"])
        return terms

    def predict_target(self, source: Tensor) -> Tensor:
        """The target modality from the source alone."""
        n = source.shape[0]
        inputs = {"s": source, "t": torch.zeros(n, self.sizes["t"], device=source.device)}
        present = {"s": torch.ones(n, device=source.device), "t": torch.zeros(n, device=source.device)}
        return self(inputs, present)[0]["t"]


@dataclass(frozen=True, kw_only=True)
class MultimodalParams(Hyperparameters):
    """Hyperparameters of :class:`MultimodalAE`, with the training settings and seed.

    Attributes:
        fusion: ``early``, ``poe``, ``mixture`` or ``late``.
        hidden: widths of each encoder's hidden layers (decoders mirror them).
        latent_dim: size of the shared latent state.
        dropout: dropout rate of the hidden layers.
        modality_dropout: probability of hiding a cell's target modality in a training minibatch.
        kl_weight: weight of the latent's KL divergence (``poe`` and ``mixture``), per feature.
        val_fraction: cells held out of training for early stopping.
        input_pcs: the source enters as its top principal components (fitted on the training
            cells, part of the differentiable prediction, so attributions still reach each source
            feature); None: the features themselves. On 400 cells x 2,000 genes, 20 components
            did as well as ridge regression and the raw genes did worse (overfitting).
        seed: seeds initialization, the validation cells and the minibatch order.
    """

    fusion: Fusion = "poe"
    hidden: tuple[int, ...] = (256,)
    latent_dim: int = 32
    dropout: float = 0.1
    modality_dropout: float = 0.5
    kl_weight: float = 1e-3
    val_fraction: float = 0.15
    input_pcs: int | None = 20
    batch_size: int = 64
    max_epochs: int = 200
    patience: int = 20
    seed: int | None = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._widths("hidden")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}.")
        if not 0 <= self.modality_dropout < 1:
            raise ValueError(f"modality_dropout must be in [0, 1), got {self.modality_dropout}.")
        if self.input_pcs is not None and self.input_pcs < 1:
            raise ValueError(f"input_pcs must be at least 1 (or None), got {self.input_pcs}.")


class MultimodalAE(NetworkModel, CrossModalModel):
    """Multimodal autoencoder predicting the target modality from the source (see the module
    docstring for the fusions). Trained like the perturbation models that train networks
    (:class:`~mtpert.models.trained.NetworkModel`): hyperparameters are the fields of
    :class:`MultimodalParams`, runtime options are given to the constructor (as defaults), to
    :meth:`fit` and to :meth:`load`, and are never saved.

    Args:
        fusion: ``early``, ``poe``, ``mixture`` or ``late`` (None: ``poe``).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        num_threads: torch CPU threads while fitting and predicting; None keeps torch's setting.
        progress: report each training epoch.
        **hparams: the other fields of :class:`MultimodalParams`.
    """

    Params = MultimodalParams
    params: MultimodalParams

    def __init__(
        self,
        fusion: Fusion | None = None,
        *,
        device: str = "auto",
        num_threads: int | None = None,
        progress: bool = False,
        **hparams: Any,
    ) -> None:
        super().__init__()
        if fusion is not None:
            hparams["fusion"] = fusion
        self._configure(hparams, device=device, num_threads=num_threads, progress=progress)
        self.net: MultimodalNet | None = None
        self.history: pd.DataFrame | None = None

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"multimodal_{self.params.fusion}"

    def fit(
        self,
        source: AnnData,
        target: AnnData,
        *,
        device: str | None = None,
        num_threads: int | None = None,
        progress: bool | None = None,
    ) -> Self:
        """:meth:`CrossModalModel.fit`, on ``device`` and ``num_threads`` threads, reporting each
        epoch if ``progress`` (None: as set); they stay the model's runtime options."""
        with self._running(device, num_threads, progress):
            super().fit(source, target)
        return self

    def _network(self, n_source: int, n_target: int) -> MultimodalNet:
        p = self.params
        return MultimodalNet(
            n_source, n_target, fusion=p.fusion, hidden=p.hidden, latent_dim=p.latent_dim,
            dropout=p.dropout, modality_dropout=p.modality_dropout, kl_weight=p.kl_weight,
        )  # fmt: skip

    def _fit(self, x: np.ndarray, y: np.ndarray, source: AnnData) -> None:
        seed = self._seed()
        order = np.random.default_rng(seed).permutation(len(x))
        n_val = round(self.params.val_fraction * len(x))
        val, fit = order[:n_val], order[n_val:]
        self.projection = None
        if self.params.input_pcs is not None:
            pca = PCA(max(1, min(self.params.input_pcs, len(fit) - 1, x.shape[1])), random_state=seed).fit(x[fit])
            self.projection = (pca.mean_.astype(np.float32), pca.components_.T.astype(np.float32))
            x = self._project(x)
        self.scale = {"s": (x[fit].mean(0), x[fit].std(0) + 1e-6), "t": (y[fit].mean(0), y[fit].std(0) + 1e-6)}
        packed = np.hstack([self._standard(x, "s"), self._standard(y, "t")]).astype(np.float32)
        data = CellData(packed[fit], np.zeros(len(fit), dtype=np.int64))
        held = CellData(packed[val], np.zeros(len(val), dtype=np.int64)) if n_val else None
        with self._seeded(seed) as generator:
            self.net = self._network(x.shape[1], y.shape[1])
            self.history = self._train(self.net, data, held, generator)
        self.net.eval()

    def _project(self, x: np.ndarray) -> np.ndarray:
        mean, components = self.projection
        return (x - mean) @ components

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the fitted model to folder ``path``: its hyperparameters and feature names as
        JSON, its weights and input scaling as tensors (no pickle), replaced together or not at
        all. The runtime options are not saved."""
        if self.net is None or self.source_features is None or self.target_features is None:
            raise NotFittedError(f"{self.name}: fit the model before saving it.")
        folder = Path(path)
        settings = asdict(self.params) | {
            "source_features": self.source_features, "target_features": self.target_features
        }
        arrays = {f"scale_{m}_{i}": torch.as_tensor(v) for m, pair in self.scale.items() for i, v in enumerate(pair)}
        if self.projection is not None:
            arrays |= {"projection_mean": torch.as_tensor(self.projection[0]), "projection_components": torch.as_tensor(self.projection[1])}
        weights = {f"net.{k}": v.detach().cpu() for k, v in self.net.state_dict().items()} | arrays
        return atomic_write_files(
            folder,
            {
                "weights.pt": lambda f: torch.save(weights, f),
                "crossmodal.json": lambda f: f.write(json.dumps(settings, indent=2).encode()),
            },
        )

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        device: str = "auto",
        *,
        num_threads: int | None = None,
        progress: bool = False,
    ) -> MultimodalAE:
        """Read a model written by :meth:`save`, to run with the runtime options given: the
        settings as JSON, the tensors with ``weights_only=True`` (nothing is unpickled, no code
        runs). A model saved before its training settings were saved with it (they do not change
        its predictions) loads with the defaults in their place.

        Raises:
            CheckpointError: a file is missing or unreadable, lacks a setting or tensor that
                :meth:`save` writes, or the weights do not fit the settings.
        """
        folder = Path(path)
        settings_file, weights_file = folder / "crossmodal.json", folder / "weights.pt"
        try:
            settings = json.loads(settings_file.read_text())
            tensors = torch.load(weights_file, map_location="cpu", weights_only=True)
        except (OSError, ValueError, RuntimeError, EOFError, IndexError, KeyError, pickle.UnpicklingError) as error:
            raise CheckpointError(f"Cannot read a cross-modal model from {folder} (missing, truncated or not one): {error!r}") from None
        named_tensors = isinstance(tensors, dict) and all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in tensors.items()
        )
        if not (isinstance(settings, dict) and named_tensors):
            raise CheckpointError(
                f"{folder} does not hold a cross-modal model as MultimodalAE.save writes one "
                "(settings as a JSON object, weights as named tensors); fit and save it again."
            )
        features = ("source_features", "target_features")
        _require(settings_file, settings, ("fusion", "hidden", *features))
        scales = tuple(f"scale_{m}_{i}" for m in ("s", "t") for i in (0, 1))
        projection = ("projection_mean", "projection_components")
        projected = projection if tensors.keys() & set(projection) else ()
        _require(weights_file, tensors, scales + projected)
        sources, targets = (settings.pop(key) for key in features)
        try:
            model = cls(device=device, num_threads=num_threads, progress=progress, **settings)
        except (TypeError, ValueError) as error:  # settings this mtpert does not take
            raise CheckpointError(
                f"{settings_file} holds settings this mtpert cannot build a {cls.__name__} from "
                f"({error}); fit and save the model again."
            ) from None
        model.source_features, model.target_features = sources, targets
        model.scale = {m: (tensors[f"scale_{m}_0"].numpy(), tensors[f"scale_{m}_1"].numpy()) for m in ("s", "t")}
        model.projection = (
            (tensors["projection_mean"].numpy(), tensors["projection_components"].numpy()) if "projection_mean" in tensors else None
        )
        n_source = model.projection[1].shape[1] if model.projection is not None else len(sources)
        model.net = model._network(n_source, len(targets))
        state = {k.removeprefix("net."): v for k, v in tensors.items() if k.startswith("net.")}
        try:
            model.net.load_state_dict(state)
        except RuntimeError as error:
            raise CheckpointError(f"The weights in {folder} do not fit its settings: {error}") from None
        model.net.to(model.device).eval()
        return model

    def _standard(self, values: np.ndarray, modality: str) -> np.ndarray:
        mean, std = self.scale[modality]
        return (values - mean) / std

    def prediction_function(self) -> Callable[[Tensor], Tensor]:
        """The predicted target as a differentiable function of the source (cells x source
        features, as given to :meth:`predict`): what attributions take gradients of."""
        if self.net is None:
            raise NotFittedError(f"{self.name}: fit the model first.")
        net, device = self.net, self.device
        s_mean, s_std = (torch.as_tensor(v, device=device) for v in self.scale["s"])
        t_mean, t_std = (torch.as_tensor(v, device=device) for v in self.scale["t"])

        if self.projection is not None:
            p_mean, components = (torch.as_tensor(v, device=device) for v in self.projection)
        else:
            p_mean, components = None, None

        def predict(source: Tensor) -> Tensor:
            if components is not None:
                source = (source - p_mean) @ components
            return net.predict_target((source - s_mean) / s_std) * t_std + t_mean

        return predict

    def _predict(self, x: np.ndarray) -> np.ndarray:
        predict = self.prediction_function()
        with torch.no_grad(), self._running():
            return predict(torch.as_tensor(x, device=self.device)).cpu().numpy()


def _require(file: Path, saved: dict[str, object], keys: tuple[str, ...]) -> None:
    """Refuse a saved cross-modal model whose ``file`` lacks some of ``keys`` (all of which
    :meth:`MultimodalAE.save` writes), naming them."""
    missing = [k for k in keys if k not in saved]
    if missing:
        raise CheckpointError(
            f"{file} lacks {missing}, which every saved cross-modal model has; it was edited, or "
            "comes from another program or model. Put back the files saved together, or fit and "
            "save the model again."
        )


def feature_pearson(truth: AnnData, pred: AnnData) -> pd.Series:
    """Per target feature, Pearson r across cells of predicted vs measured values (NaN where
    either is constant)."""
    y, p = dense(truth.X).astype(np.float64), dense(pred[:, truth.var_names].X).astype(np.float64)
    yc, pc = y - y.mean(0), p - p.mean(0)
    denom = np.sqrt((yc**2).sum(0) * (pc**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(denom > 0, (yc * pc).sum(0) / denom, np.nan)
    return pd.Series(r, index=truth.var_names, name="pearson")
