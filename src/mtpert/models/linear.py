"""The linear model on perturbation embeddings of Ahlmann-Eltze, Huber & Anders (Nat Methods 2025).

"Deep-learning-based gene perturbation effect prediction does not yet outperform simple linear
baselines": the mean expression of a perturbation is ``Y ≈ G W Pᵀ + b``, with ``G`` a gene
embedding, ``P`` a perturbation embedding, ``b`` a per-gene baseline, and ``W`` fitted by ridge
regression; a combination is embedded as the sum of its parts' embeddings, so a pair never seen
together is predicted from its singles.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from anndata import AnnData

from mtpert._array import dense
from mtpert.data.spec import DatasetSpec
from mtpert.errors import ConfigError, DataError
from mtpert.models.base import PerturbationModel, check_weights
from mtpert.models.search import Choice, Distribution, FloatRange
from mtpert.models.simple import ConditionKey, key_string, mean_changes, parts_alone, some


class LinearModel(PerturbationModel):
    """Linear model on PCA embeddings of genes and perturbations (Ahlmann-Eltze et al. 2025).

    The change of a condition from control is ``c + G W p``, added to each control cell and
    clipped at 0; the control cells and ``c`` make the paper's baseline ``b``, and the cells keep
    their spread:

    * the data: each training (condition, dose)'s mean change from control, averaged over the
      training groups with equal weight (as :class:`~mtpert.models.MeanShift`), so the same
      change is predicted for every group;
    * ``G`` (genes x K): the gene PCs of the training pseudobulk (the control and every training
      condition, each gene centred over them), scaled by their singular values. The paper's code
      centres each condition over the genes instead, which spends a component on the genes'
      baseline levels; centring each gene keeps the components for what differs between
      conditions, the part the model fits;
    * ``p`` (K): a single perturbation's scores on the top PCs of the single perturbations'
      change matrix (perturbations centred); a combination's is the sum of its parts' scores.
      The paper reads a perturbation's embedding from the gene embedding at the perturbed gene,
      which needs that gene among the measured ones; these scores need only its cells;
    * ``c``: an unpenalized per-gene intercept, as in the paper's code (where ``b`` is the mean
      of the training conditions, not the control): what the training conditions share (a
      CRISPR screen's common response, for instance), so that ``W`` fits their differences;
    * ``W`` (K x K): the paper's closed-form two-sided ridge estimate,
      ``(GᵀG + λI)⁻¹ Gᵀ Y P (PᵀP + λI)⁻¹`` on the training conditions' centred changes ``Y`` and
      embeddings ``P`` (the singles and every training combination of them); ``c`` is then the
      mean change minus ``G W`` times the mean embedding.

    Defaults are the paper's: ``n_components`` K = 10 and ``ridge`` λ = 0.1. K is cut to the
    rank the training data have (a screen of 5 perturbations has at most 4 perturbation PCs).

    The baseline of unseen combinations of seen perturbations. A part never seen alone (at the
    asked dose) has no embedding and is refused; doses are matched exactly.
    """

    name = "linear"
    predicts_unseen_combinations = True

    def __init__(
        self, spec: DatasetSpec, *, n_components: int = 10, ridge: float = 0.1, min_cells: int = 5
    ) -> None:
        if n_components < 1:
            raise ConfigError(f"linear: n_components must be at least 1, got {n_components}.")
        if ridge < 0:
            raise ConfigError(f"linear: ridge must be >= 0, got {ridge}.")
        super().__init__(spec, n_components=n_components, ridge=ridge, min_cells=min_cells)
        self.n_components = n_components
        self.ridge = ridge
        self.min_cells = min_cells
        self.conditions: list[ConditionKey] = []
        self.gene_embedding = np.empty((0, 0))
        self.weights = np.empty((0, 0))
        self.perturbation_embedding = np.empty((0, 0))
        self.intercept = np.empty(0)

    def search_space(self) -> dict[str, Distribution]:
        """The embedding size K and the ridge penalty λ."""
        return {"n_components": Choice((2, 5, 10, 20)), "ridge": FloatRange(1e-3, 10.0, log=True)}

    def _fit(self, train: AnnData, val: AnnData | None) -> None:
        table = mean_changes(train, self.spec, self.min_cells, model=self.name)
        changes = table.averaged().astype(np.float64)
        is_single = np.array([len(self.spec.parts(c)) == 1 for c, _ in table.keys])
        if not is_single.any():
            raise DataError(
                "linear: training has no single perturbation, only combinations; it embeds a "
                "combination as the sum of its parts' embeddings, learned from cells with one "
                "perturbation."
            )
        self.conditions = table.keys
        self.perturbation_embedding, _ = _principal_components(
            changes[is_single], self.n_components
        )
        # the pseudobulk less the control mean, a shift of every row that the centring removes
        pseudobulk = np.vstack([np.zeros(train.n_vars), changes])
        _, self.gene_embedding = _principal_components(pseudobulk, self.n_components)
        row = {key: i for i, key in enumerate(self.singles)}
        used, embedded = [], []
        for i, (condition, dose) in enumerate(table.keys):
            parts = [(part, dose) for part in self.spec.parts(condition)]
            if all(part in row for part in parts):
                used.append(i)
                embedded.append(
                    self.perturbation_embedding[[row[part] for part in parts]].sum(axis=0)
                )
        if len(used) < len(table.keys):
            left_out = [key_string(*k) for i, k in enumerate(table.keys) if i not in set(used)]
            warnings.warn(
                f"linear: {some(left_out)} combine perturbations never seen alone; left out of the fit.",
                stacklevel=3,
            )
        Y, P = changes[used], np.asarray(embedded)
        y_mean, p_mean = Y.mean(axis=0), P.mean(axis=0)
        G, ridge = self.gene_embedding, self.ridge
        Pc = P - p_mean
        left = _inverse(G.T @ G, ridge) @ G.T @ (Y - y_mean).T
        self.weights = left @ Pc @ _inverse(Pc.T @ Pc, ridge)
        self.intercept = y_mean - G @ self.weights @ p_mean

    @property
    def singles(self) -> list[ConditionKey]:
        """The training conditions of one perturbation: the rows of ``perturbation_embedding``."""
        return [k for k in self.conditions if len(self.spec.parts(k[0])) == 1]

    def _embed(self, condition: str, dose: float | None) -> np.ndarray:
        """A condition's embedding: the sum of its parts' (DataError for a part not seen alone)."""
        row = {key: i for i, key in enumerate(self.singles)}
        parts = parts_alone(self.conditions, self.spec, condition, dose, model=self.name)
        return self.perturbation_embedding[[row[part] for part in parts]].sum(axis=0)

    def change(self, condition: str, dose: float | None = None) -> np.ndarray:
        """The mean change from control the model predicts for ``condition`` at ``dose``."""
        embedding = self._embed(condition, None if dose is None else float(dose))
        return self.intercept + self.gene_embedding @ self.weights @ embedding

    def part_changes(self) -> np.ndarray:
        """Each single perturbation's share of a combination's change, (genes, singles) in the
        order of :attr:`singles`: a combination's change is :attr:`intercept` plus its parts'."""
        return self.gene_embedding @ self.weights @ self.perturbation_embedding.T

    def _predict(self, control: AnnData, condition: str, dose: float | None) -> np.ndarray:
        change = self.change(condition, dose)
        return np.clip(dense(control.X) + change.astype(np.float32), 0.0, None)

    def _learned(self) -> dict[str, Any]:
        return {
            "conditions": [list(k) for k in self.conditions],
            "components": list(self.weights.shape),
        }

    def _tensors(self) -> dict[str, np.ndarray]:
        return {
            "gene_embedding": self.gene_embedding,
            "weights": self.weights,
            "perturbation_embedding": self.perturbation_embedding,
            "intercept": self.intercept,
        }

    def _restore(self, learned: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        self.conditions = [(c, d) for c, d in learned["conditions"]]
        n_genes = len(self.genes)  # type: ignore[arg-type]
        gene_k, pert_k = learned["components"]
        check_weights(
            tensors,
            {
                "gene_embedding": (n_genes, gene_k),
                "weights": (gene_k, pert_k),
                "perturbation_embedding": (len(self.singles), pert_k),
                "intercept": (n_genes,),
            },
        )
        values = {k: v.cpu().numpy().astype(np.float64) for k, v in tensors.items()}
        self.gene_embedding, self.weights = values["gene_embedding"], values["weights"]
        self.perturbation_embedding = values["perturbation_embedding"]
        self.intercept = values["intercept"]


def _principal_components(matrix: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray]:
    """The top ``n_components`` PCs of ``matrix`` (each column centred over the rows), as the
    rows' scores (rows x K) and the columns' loadings (columns x K), both scaled by the singular
    values. K is cut to the centred matrix's rank at float32 precision, that of expression data
    (at least 1: a zero column when every row is the same)."""
    U, s, Vt = np.linalg.svd(matrix - matrix.mean(axis=0), full_matrices=False)
    tolerance = s[0] * max(matrix.shape) * np.finfo(np.float32).eps
    k = max(1, min(n_components, int((s > tolerance).sum())))
    return U[:, :k] * s[:k], Vt[:k].T * s[:k]


def _inverse(gram: np.ndarray, ridge: float) -> np.ndarray:
    """``(gram + ridge I)⁻¹``, a pseudo-inverse where ``ridge`` is 0 and ``gram`` singular."""
    return np.linalg.pinv(gram + ridge * np.eye(len(gram)), hermitian=True)
