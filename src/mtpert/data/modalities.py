"""Paired modalities of the same cells: RNA in ``X``, others (surface proteins, hashtags) in
``obsm`` or in a MuData, each preprocessed its own way.

A CITE-seq / ECCITE-seq AnnData keeps the protein (ADT) counts of each cell in ``obsm`` (an array
or sparse matrix, names in ``uns['<stem>_names']``, or a DataFrame); a MuData keeps each modality
as its own AnnData. :func:`read_modality` returns any of them as an AnnData over the same cells,
so that every modality is handled alike. Preprocessing per modality: RNA is log-normalized
(:func:`mtpert.data.log_normalize`), proteins are CLR-transformed (:func:`clr`): ADT counts carry a
cell-specific background and no "total", so each cell's counts are compared with their own
geometric mean instead of a library size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from mtpert._array import dense
from mtpert.data.pp import detect_kind, log_normalize
from mtpert.data.spec import check_matrix
from mtpert.errors import DataError

RNA = "rna"
Transform = Literal["log", "clr", "none"]

ADT_GENES: dict[str, str | None] = {
    "B220": "PTPRC", "CD45R": "PTPRC", "CD45": "PTPRC", "CD45RA": "PTPRC", "CD45RO": "PTPRC",
    "B7-H1": "CD274", "PD-L1": "CD274", "CD274": "CD274", "C-KIT": "KIT", "CD117": "KIT",
    "CCR7": "CCR7", "CD11B": "ITGAM", "CD11C": "ITGAX", "CD138": "SDC1", "CD14": "CD14",
    "CD16": "FCGR3A", "CD19": "CD19", "CD1A": "CD1A", "CD2": "CD2", "CD223": "LAG3", "LAG3": "LAG3",
    "CD24": "CD24", "CD26": "DPP4", "CD27": "CD27", "CD28": "CD28", "CD3": "CD3E", "CD34": "CD34",
    "CD366": "HAVCR2", "TIM3": "HAVCR2", "CD4": "CD4", "CD44": "CD44", "CD5": "CD5", "CD56": "NCAM1",
    "CD62L": "SELL", "CD66B": "CEACAM8", "CD69": "CD69", "CD7": "CD7", "CD8": "CD8A", "CD8A": "CD8A",
    "CTLA4": "CTLA4", "EPCAM": "EPCAM", "CD326": "EPCAM", "HLA-A,B,C": "HLA-A", "IL7RALPHA": "IL7R",
    "CD127": "IL7R", "LAMP1": "LAMP1", "MHCII": "HLA-DRA", "HLA-DR": "HLA-DRA", "OX40": "TNFRSF4",
    "CD134": "TNFRSF4", "PD-1": "PDCD1", "PD1": "PDCD1", "CD279": "PDCD1", "PECAM": "PECAM1",
    "CD31": "PECAM1", "SIGLEC-8": "SIGLEC8", "TCRB": "TRBC1", "TCRG": "TRGC1", "CD25": "IL2RA",
    "CD38": "CD38", "CD57": None, "CD77": None, "IGG1": None, "IGG2A": None, "IGG2B": None,
}  # fmt: skip
"""Surface-protein (ADT) names of common CITE-seq panels -> the gene coding the protein (human
symbols). None: no single coding gene (isotype controls; CD57 and CD77 are glycans). Complexes
and splice forms map to one gene (CD3 -> CD3E; CD45RA/RO -> PTPRC)."""


def coding_genes(proteins: Sequence[str], genes: Sequence[str] | None = None) -> dict[str, str | None]:
    """Each protein's coding gene by :data:`ADT_GENES`, trying the whole name and each name
    inside it (``"PD-1 (CD279)"``: ``PD-1``, then ``CD279``), case-insensitively; None where it
    is unknown, or (with ``genes``) not among the measured genes."""
    measured = None if genes is None else {g.upper(): g for g in genes}
    found: dict[str, str | None] = {}
    for protein in proteins:
        names = [protein, *(part.strip() for part in protein.replace(")", "").split("(") if part.strip())]
        gene = next((ADT_GENES[n.upper()] for n in names if n.upper() in ADT_GENES), None)
        if gene is not None and measured is not None:
            gene = measured.get(gene.upper())
        found[protein] = gene
    return found


def read_modality(data: Any, key: str, *, names: Sequence[str] | str | None = None) -> AnnData:
    """Modality ``key`` of ``data`` as an AnnData over the same cells.

    Args:
        data: an AnnData (``key`` is ``"rna"`` for its ``X``, or an ``obsm`` key) or a MuData
            (``key`` is one of its modalities, e.g. ``"prot"``).
        key: which modality.
        names: feature names of an ``obsm`` array: a list, or a ``uns`` key holding it; default
            ``uns['<key without _counts>_names']`` (``protein_counts`` -> ``protein_names``),
            else the DataFrame's columns, else ``<key>_0, <key>_1, ...``.

    Raises:
        DataError: no such modality, names that do not match its columns, or a name given to two
            of its features.
    """
    modality = _modality(data, key, names)
    if not modality.var_names.is_unique:  # refused, not merged: the columns may differ
        dupes = modality.var_names[modality.var_names.duplicated()].unique()[:5].tolist()
        raise DataError(
            f"Modality '{key}' gives one name to several features (e.g. {dupes}); they may hold "
            "different measurements (two antibody clones), which results by feature name could not "
            "tell apart. Give each feature its own name (names=[...] for an obsm array, "
            ".var_names_make_unique() on an AnnData), or drop the repeats."
        )
    return modality


def _modality(data: Any, key: str, names: Sequence[str] | str | None) -> AnnData:
    """Modality ``key`` of ``data`` as :func:`read_modality` describes, its names unchecked."""
    if hasattr(data, "mod"):  # MuData, without importing mudata (an optional dependency)
        if key not in data.mod:
            raise DataError(f"The MuData has no modality '{key}'; it has {sorted(data.mod)}.")
        return data.mod[key]
    if not isinstance(data, AnnData):
        raise DataError(f"Expected an AnnData or a MuData, got {type(data).__name__}.")
    if key == RNA:
        return data
    if key not in data.obsm:
        raise DataError(f"obsm has no '{key}'; it has {sorted(data.obsm)} (and the RNA is '{RNA}', in X).")
    values = data.obsm[key]
    if isinstance(values, pd.DataFrame):
        features = list(values.columns.astype(str)) if names is None else _names(data, key, names)
        matrix: Any = values.to_numpy()
    else:
        matrix = values
        features = _names(data, key, names)
    if len(features) != matrix.shape[1]:
        raise DataError(f"obsm['{key}'] has {matrix.shape[1]} columns but {len(features)} names were found; pass names=.")
    return AnnData(matrix.copy(), obs=data.obs[[]].copy(), var=pd.DataFrame(index=pd.Index(features, dtype=str)))


def _names(data: AnnData, key: str, names: Sequence[str] | str | None) -> list[str]:
    if isinstance(names, str):
        if names not in data.uns:
            raise DataError(f"uns has no '{names}' to name obsm['{key}'] by; it has {sorted(data.uns)}.")
        return [str(n) for n in data.uns[names]]
    if names is not None:
        return [str(n) for n in names]
    stem = key.removesuffix("_counts")
    default = f"{stem}_names"
    if default in data.uns:
        return [str(n) for n in data.uns[default]]
    return [f"{key}_{i}" for i in range(data.obsm[key].shape[1])]


def clr(counts: np.ndarray | sp.spmatrix) -> np.ndarray:
    """Centered log-ratio per cell: ``log1p(x) - mean over the cell's features of log1p(x)``
    (Seurat's CLR across features, the usual transform of ADT counts)."""
    x = dense(counts).astype(np.float64)
    if (x < 0).any() or not np.isfinite(x).all():
        raise DataError("CLR needs non-negative, finite counts; these have negative or missing values.")
    logged = np.log1p(x)
    return (logged - logged.mean(1, keepdims=True)).astype(np.float32)


def preprocess(modality: AnnData, transform: Transform, *, key: str | None = None) -> AnnData:
    """A copy of ``modality`` (``key`` in ``read_modality``, for messages) transformed: ``log``
    (log-normalized counts; left as is if already log data), ``clr`` (counts), or ``none``. The
    counts are kept in ``layers['counts']``. Missing or infinite values are refused, named."""
    what = "The modality" if key is None else f"Modality '{key}'"
    check_matrix(modality.X, what=what, allow_negative=True)
    out = modality.copy()
    if transform == "none":
        return out
    kind = detect_kind(out)
    if transform == "log":
        if kind == "counts":
            log_normalize(out)
        elif kind != "log":
            raise DataError(f"log-normalizing needs raw counts or log data; this modality looks {kind}.")
        return out
    if kind != "counts":
        raise DataError(f"CLR needs raw counts; this modality looks {kind} (already transformed?). Use transform='none'.")
    out.layers["counts"] = out.X.copy()
    out.X = clr(out.X)
    return out


def paired(
    data: Any,
    targets: str,
    *,
    sources: str = RNA,
    names: Sequence[str] | str | None = None,
    source_transform: Transform = "log",
    target_transform: Transform = "clr",
    min_cells: int = 3,
) -> tuple[AnnData, AnnData]:
    """The two modalities of a cross-modal task, preprocessed: ``sources`` (default the RNA,
    log-normalized, genes seen in fewer than ``min_cells`` cells dropped) and ``targets`` (e.g.
    ``"protein_counts"``, CLR-transformed), over the same cells."""
    source = read_modality(data, sources, names=None)
    target = read_modality(data, targets, names=names)
    if source.n_obs != target.n_obs or not source.obs_names.equals(target.obs_names):
        raise DataError(f"'{sources}' and '{targets}' do not hold the same cells in the same order.")
    if source.n_obs < 10:
        raise DataError(f"Only {source.n_obs} cells: too few to learn one modality from another.")
    source = preprocess(source, source_transform, key=sources)
    if min_cells > 0 and "counts" in source.layers:
        seen = np.asarray((source.layers["counts"] > 0).sum(0)).ravel() >= min_cells
        source = source[:, seen].copy()
    return source, preprocess(target, target_transform, key=targets)
