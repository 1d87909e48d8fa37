"""Turn the cell sets a metric receives into checked, gene-aligned dense arrays.

Metrics accept AnnData (dense or sparse ``X``) or plain arrays. AnnData must look
log-normalized (:func:`mtpert.data.detect_kind`); arrays are only checked to be finite, so
hand-made arrays work. Every set is put in the gene order of the first set that has gene names.
Across-target metrics receive their sets keyed by :class:`Condition`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from numpy.typing import ArrayLike, DTypeLike

from mtpert.data.pp import LOG_MAX, detect_kind
from mtpert.data.spec import check_matrix
from mtpert.errors import DataError

Cells = AnnData | np.ndarray | sp.spmatrix | sp.sparray
"""Cells x genes log-normalized expression: an AnnData, a numpy array or a sparse matrix."""

MIN_CELLS = 2
"""Fewest cells per set: variances, t statistics and PCA need two."""


@dataclass(frozen=True, order=True)
class Condition:
    """What a set of cells is, as :func:`~mtpert.metrics.evaluate_across` keys them.

    Attributes:
        cell_type: the group (cell type, cell line) the cells belong to.
        condition: the condition label, e.g. ``"KLF1+MAP2K6"``.
        dose: the dose, or None when the data have no doses.
        parts: the single perturbations ``condition`` combines
            (:meth:`~mtpert.data.DatasetSpec.parts`); ``(condition,)`` when not given.
    """

    cell_type: str
    condition: str
    dose: float | None = None
    parts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.parts:
            object.__setattr__(self, "parts", (self.condition,))

    def label(self) -> str:
        """``'cell type' -> 'condition' @ dose d``, for messages."""
        dose = "" if self.dose is None else f" @ dose {self.dose:g}"
        return f"'{self.cell_type}' -> '{self.condition}'{dose}"


def load_sets(
    sets: dict[str, Cells], *, genes: ArrayLike | None = None, dtype: DTypeLike = np.float64
) -> tuple[pd.Index, dict[str, np.ndarray]]:
    """Gene names and a dense, read-only copy of each set, all in one gene order.

    Args:
        sets: named cell sets; the names appear in error messages. The first set with gene
            names (AnnData ``var_names``, or ``genes`` for arrays) fixes the gene order.
        genes: gene names of array inputs; unnamed arrays get ``gene_0``, ``gene_1``, ...
        dtype: float dtype of the returned arrays.

    Raises:
        DataError: non-numeric, NaN or infinite values; AnnData that is not log-normalized;
            fewer than :data:`MIN_CELLS` cells; differing gene sets or duplicated gene names.
    """
    reference, matrices = iter_sets(sets, genes=genes, dtype=dtype)
    return reference, dict(matrices)


def iter_sets(
    sets: dict[str, Cells], *, genes: ArrayLike | None = None, dtype: DTypeLike = np.float64
) -> tuple[pd.Index, Iterator[tuple[str, np.ndarray]]]:
    """:func:`load_sets`, one set at a time: the gene names, and each set's name and matrix, made
    dense only when its turn comes, so that many sets need not fit in memory at once. Gene
    names are checked before any set is made dense."""
    names = {what: _var_names(cells, genes, _n_genes(cells), what) for what, cells in sets.items()}
    ref_name, reference = next(
        ((w, n) for w, n in names.items() if n is not None), (next(iter(sets)), None)
    )
    if reference is None:
        reference = pd.Index([f"gene_{i}" for i in range(_n_genes(sets[ref_name]))])

    def matrices() -> Iterator[tuple[str, np.ndarray]]:
        for what, cells in sets.items():
            X = _align(_matrix(cells, what, dtype), names[what], reference, what, ref_name)
            X.setflags(write=False)
            yield what, X

    return reference, matrices()


def _n_genes(cells: Cells) -> int:
    shape = cells.shape if isinstance(cells, AnnData) else np.shape(cells)
    return int(shape[1]) if len(shape) == 2 else 0


def _matrix(cells: Cells, what: str, dtype: DTypeLike) -> np.ndarray:
    """A dense copy of the expression in ``cells``, after the value checks."""
    X = cells.X if isinstance(cells, AnnData) else cells
    values = X.data if sp.issparse(X) else np.asarray(X)
    if not np.issubdtype(values.dtype, np.number):
        raise DataError(f"{what} must hold numbers, got dtype {values.dtype}.")
    check_matrix(X, what=what, allow_negative=True)  # AnnData input is checked as log data below
    if isinstance(cells, AnnData):
        _require_log(cells, what)
    matrix = np.array(X.toarray() if sp.issparse(X) else X, dtype=dtype)
    if matrix.ndim != 2:
        raise DataError(f"{what} must be a cells x genes matrix, got shape {matrix.shape}.")
    if matrix.shape[0] < MIN_CELLS or matrix.shape[1] == 0:
        raise DataError(
            f"{what} has {matrix.shape[0]} cells x {matrix.shape[1]} genes; scoring needs at least "
            f"{MIN_CELLS} cells and one gene in every set."
        )
    return matrix


def _require_log(adata: AnnData, what: str) -> None:
    kind = detect_kind(adata)
    if kind == "counts":
        raise DataError(
            f"{what} looks like raw counts (every value is an integer), but metrics compare "
            "log-normalized expression. Run mtpert.data.log_normalize(adata) (or "
            "mtpert.data.prepare) on it first, as for the data the model was trained on."
        )
    if kind == "unknown":
        raise DataError(
            f"{what} is not log-normalized expression (it has negative values or values above "
            f"{LOG_MAX:g}). Pass log1p(normalize_total) expression; clip predictions at 0 if a "
            "model can output negative values."
        )


def _var_names(cells: Cells, genes: ArrayLike | None, n_genes: int, what: str) -> pd.Index | None:
    """Gene names of one set: its var_names, ``genes`` for arrays, or None if unnamed."""
    if isinstance(cells, AnnData):
        names = cells.var_names
    elif genes is not None:
        names = pd.Index(genes)
    else:
        return None
    if len(names) != n_genes:
        raise DataError(f"{what} has {n_genes} genes but {len(names)} gene names were given.")
    if not names.is_unique:
        dupes = names[names.duplicated()].unique()[:5].tolist()
        raise DataError(
            f"{what} has duplicated gene names (e.g. {dupes}); call "
            "adata.var_names_make_unique() first."
        )
    return names


def _align(
    X: np.ndarray, names: pd.Index | None, reference: pd.Index, what: str, ref_name: str
) -> np.ndarray:
    """``X`` with its columns in ``reference`` order; raises if the gene sets differ."""
    if names is None:
        if X.shape[1] != len(reference):
            raise DataError(
                f"{what} has {X.shape[1]} genes but {ref_name} has {len(reference)}; every set "
                "must cover the same genes."
            )
        return X
    if names.equals(reference):
        return X
    missing = reference.difference(names, sort=False)
    extra = names.difference(reference, sort=False)
    if len(missing) or len(extra):
        raise DataError(
            f"{what}'s genes differ from {ref_name}'s: {len(missing)} of {ref_name}'s genes are "
            f"missing from {what} (e.g. {missing[:5].tolist()}) and {len(extra)} are extra "
            f"(e.g. {extra[:5].tolist()}). Subset both to the same genes, e.g. "
            f"{what}[:, {ref_name}.var_names], using the gene list the model was trained on."
        )
    return X[:, names.get_indexer(reference)]
