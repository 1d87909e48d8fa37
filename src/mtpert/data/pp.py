"""Preprocessing: detect counts vs log data, normalize once, pick HVGs without leakage.

Models and metrics in mtpert work on log-normalized expression (``normalize_total`` to a fixed
target sum, then ``log1p``). Users arrive with either raw counts or already-normalized data, and
silently normalizing twice is one of the commonest mistakes in this field; so :func:`detect_kind`
decides what ``X`` holds and every step refuses input of the wrong kind with a message that says
which function to call instead. Data logged twice (log1p of log-normalized data) is recognized too:
it looks like small log data, and models would fit it without complaint.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scanpy as sc
import scipy.sparse as sp
from anndata import AnnData

from mtpert.data.backed import sample_rows
from mtpert.data.spec import DatasetSpec, check_matrix
from mtpert.errors import DataError

DataKind = Literal["counts", "log", "double_log", "unknown"]

LOG_MAX = 20.0
"""Largest value expected in log1p-normalized data: log1p(1e4 * 1.0) is about 9.2, so anything
above 20 cannot be log1p of counts normalized to any usual target sum."""

COUNTS_LAYER = "counts"
"""Layer where :func:`log_normalize` keeps the raw counts."""


DOUBLE_LOG_MAX = 3.0
"""Bound on data logged twice: log1p(log1p(x)) stays below 3 for any x up to 1e8
(2.3 for a whole cell's counts normalized to 1e4, 2.7 to 1e6). Log-normalized data goes well above:
its largest value is about log1p(1e4 * f) for the gene holding the largest fraction f of a cell's
counts (above 0.2%, i.e. above 3, in every dataset measured; 8.2-9.1 in the shared real data)."""

DOUBLE_LOG_MIN_CELLS = 200
"""Fewest cells (rows read) for a maximum below :data:`DOUBLE_LOG_MAX` to mean "logged twice".
A few cells over a few genes may lack a large value: in Kang 2018 log-normalized, then cut to its
50 most variable genes, 73 CD16 monocytes have none above 2.3, and 200 random CD4 T cells none
above 3 in 0.1% of draws (over 100 genes: never, and every cell type x condition reaches 4.4).
Smaller inputs (a model's control cells) pass as log data; the larger data they come from is
checked where it enters (:func:`prepare`, a model's fit)."""

DOUBLE_LOG_ADVICE = (
    f"adata.X looks log-transformed twice (no value above {DOUBLE_LOG_MAX:g}, whereas "
    "log1p(normalize_total) expression reaches 4-9). Pass the raw counts (e.g. "
    f"adata.layers['{COUNTS_LAYER}'] or adata.raw) and let mtpert normalize them, or apply "
    "log1p(normalize_total(counts)) once."
)
"""What to do about data logged twice; :func:`require_kind` and ``mtpert data info`` say it."""

COUNTS_MAX = 1e7
"""Largest count of one gene in one cell accepted as a raw count. UMI assays (10x, Drop-seq)
count 1e3-1e5 molecules in a whole cell, and full-length read counts (Smart-seq2/3) reach about
1e7 reads per cell in all, so no gene comes near it in one cell. Whole numbers above it are
values scaled or summed before saving, an integer overflow (4294967295 is -1 stored unsigned), or
another matrix than counts; one of them would take nearly all of its cell's normalized total and
flatten every other gene. Counts scaled by a smaller factor stay below it, and do no harm:
normalizing to a fixed total per cell divides any such factor out."""

KIND_SAMPLE_ROWS = 2000
"""Rows of an on-disk (backed) matrix that :func:`detect_kind` reads instead of all of it."""

KIND_SAMPLE_VALUES = 200_000
"""Stored values that :func:`detect_kind` checks for being integers (a random subsample)."""


def detect_kind(adata: AnnData) -> DataKind:
    """Say whether ``adata.X`` holds raw counts, log-normalized values, data logged twice, or else.

    ``"counts"``: every value is a non-negative integer. ``"double_log"``: non-integer values, none
    above :data:`DOUBLE_LOG_MAX`, over at least :data:`DOUBLE_LOG_MIN_CELLS` cells. ``"log"``:
    other non-integer values no larger than :data:`LOG_MAX` (or scanpy's ``uns['log1p']`` marker
    is present). ``"unknown"``: anything else, e.g. normalized but not logged, TPM, or scaled data.

    Every stored value of an in-memory matrix is read (the minimum and maximum are exact, so chance
    cannot raise a false alarm); an on-disk one is read on :data:`KIND_SAMPLE_ROWS` sampled rows.
    Only the integer test uses a subsample of :data:`KIND_SAMPLE_VALUES` values.
    """
    X = sample_rows(adata, KIND_SAMPLE_ROWS)
    values = X.data if sp.issparse(X) else np.asarray(X).ravel()
    if values.size == 0 or values.min() < 0:
        return "unknown"
    sample = values
    if values.size > KIND_SAMPLE_VALUES:
        picks = np.random.default_rng(0).choice(values.size, KIND_SAMPLE_VALUES, replace=False)
        sample = values[picks]
    if np.all(sample == np.round(sample)):
        return "counts"
    peak = float(values.max())
    if peak <= DOUBLE_LOG_MAX and X.shape[0] >= DOUBLE_LOG_MIN_CELLS:
        return "double_log"
    if "log1p" in adata.uns or peak <= LOG_MAX:
        return "log"
    return "unknown"


def count_scale_problem(adata: AnnData) -> str | None:
    """What is wrong with counts ``adata.X`` holding a value above :data:`COUNTS_MAX` (the
    value, its gene and the likely causes), or None. Reads the rows :func:`detect_kind` reads."""
    X = sample_rows(adata, KIND_SAMPLE_ROWS)
    values = X.data if sp.issparse(X) else np.asarray(X)
    if values.size == 0 or values.max() <= COUNTS_MAX:
        return None
    per_gene = X.max(axis=0)
    per_gene = np.asarray(per_gene.todense() if sp.issparse(per_gene) else per_gene).ravel()
    gene = int(per_gene.argmax())
    return (
        f"adata.X holds whole numbers, as raw counts do, but gene '{adata.var_names[gene]}' has "
        f"{per_gene[gene]:.4g} in one cell: above {COUNTS_MAX:.0e}, more than any single-cell "
        "assay counts for one gene in one cell. Likely the values were scaled or summed before "
        "saving, overflowed an integer type, or come from another layer; pass the raw per-cell counts "
        f"(e.g. adata.layers['{COUNTS_LAYER}'] or adata.raw)."
    )


def require_kind(adata: AnnData, expected: DataKind, *, what: str = "This step") -> None:
    """Raise :class:`DataError` unless ``adata.X`` holds ``expected`` data (counts: within
    :data:`COUNTS_MAX`)."""
    kind = detect_kind(adata)
    if kind != expected:
        raise DataError(f"{what} needs {expected} data. {_advice(kind, expected)}")
    _require_count_scale(adata, kind, what)


def require_counts_or_log(adata: AnnData, *, what: str = "This step") -> DataKind:
    """What ``adata.X`` holds, which must be raw counts (within :data:`COUNTS_MAX`) or
    log-normalized data (the two inputs :func:`prepare` takes); anything else raises
    :class:`DataError` with advice."""
    kind = detect_kind(adata)
    if kind not in ("counts", "log"):
        raise DataError(f"{what} needs raw counts or log-normalized data. {_advice(kind)}")
    _require_count_scale(adata, kind, what)
    return kind


def _require_count_scale(adata: AnnData, kind: DataKind, what: str) -> None:
    """Raise :class:`DataError` if ``adata.X`` holds counts (``kind``) beyond :data:`COUNTS_MAX`."""
    problem = count_scale_problem(adata) if kind == "counts" else None
    if problem is not None:
        raise DataError(f"{what}: {problem}")


def _advice(kind: DataKind, expected: DataKind | None = None) -> str:
    """What to do about ``adata.X`` holding ``kind`` data where ``expected`` was needed."""
    if kind == "double_log":
        return DOUBLE_LOG_ADVICE
    if (expected, kind) == ("log", "counts"):
        return "adata.X holds raw counts; run mtpert.data.log_normalize(adata) (or mtpert.data.prepare) first."
    if (expected, kind) == ("counts", "log"):
        return f"adata.X is already log-normalized; pass the raw counts (e.g. adata.layers['{COUNTS_LAYER}'] or adata.raw) instead."
    return (
        f"adata.X is neither raw counts nor log1p-normalized (non-integer values above {LOG_MAX:g}, or negative "
        "values); start from the raw counts."
    )


def log_normalize(adata: AnnData, *, target_sum: float = 1e4) -> None:
    """Normalize raw counts to ``target_sum`` per cell and apply log1p, in place.

    Keeps the counts in ``adata.layers['counts']``. Refuses data that is already log-normalized
    rather than logging it twice.
    """
    check_matrix(adata.X)
    require_kind(adata, "counts", what="log_normalize")
    adata.layers[COUNTS_LAYER] = adata.X.copy()
    adata.X = adata.X.astype(np.float32)
    sc.pp.normalize_total(adata, target_sum=target_sum)
    sc.pp.log1p(adata)


def prepare(
    adata: AnnData,
    spec: DatasetSpec,
    *,
    n_hvg: int = 2000,
    exclude: np.ndarray | None = None,
    target_sum: float = 1e4,
) -> AnnData:
    """Validate, log-normalize if needed, and keep the ``n_hvg`` most variable genes.

    Args:
        adata: raw counts or log-normalized data (not logged twice, see :func:`detect_kind`);
            not modified.
        spec: names of the obs keys.
        n_hvg: number of highly variable genes to keep; ``None``-like values (0 or at least the
            number of genes) keep every gene.
        exclude: boolean mask of cells to leave out when *choosing* HVGs, normally the held-out
            target (see :func:`mtpert.data.heldout_mask`), so that nothing is fitted on the cells
            a model will be scored on. ``None`` chooses HVGs on all cells, the protocol of
            scGen-era papers; use it only to reproduce published numbers.
        target_sum: counts per cell after normalization.

    Returns:
        A new AnnData with log-normalized ``X`` over the selected genes (all cells kept).
    """
    spec.validate(adata, require_perturbed=False)
    adata = adata.copy()
    if require_counts_or_log(adata, what="prepare") == "counts":
        log_normalize(adata, target_sum=target_sum)
    if sp.issparse(adata.X) and not sp.isspmatrix_csr(adata.X):
        adata.X = sp.csr_matrix(adata.X)
    if not n_hvg or n_hvg >= adata.n_vars:
        return adata
    genes = select_hvgs(adata, n_hvg, exclude=exclude, batch_key=spec.batch_key)
    return adata[:, genes].copy()


def select_hvgs(
    adata: AnnData,
    n_hvg: int,
    *,
    exclude: np.ndarray | None = None,
    batch_key: str | None = None,
) -> list[str]:
    """Names of the ``n_hvg`` most variable genes (scanpy's Seurat flavor on log data).

    Cells where ``exclude`` is True take no part in the choice.
    """
    require_kind(adata, "log", what="select_hvgs")
    fit_on = adata if exclude is None else adata[~np.asarray(exclude, dtype=bool)]
    if fit_on.n_obs < 2:
        raise DataError("Fewer than two cells are left to choose HVGs from after excluding the target.")
    stats = sc.pp.highly_variable_genes(
        fit_on,
        n_top_genes=n_hvg,
        flavor="seurat",
        batch_key=batch_key if batch_key and fit_on.obs[batch_key].nunique() > 1 else None,
        inplace=False,
        subset=False,
    )
    # scanpy returns the table in gene order when subset=False
    chosen = np.asarray(stats["highly_variable"], dtype=bool)
    return adata.var_names[chosen].tolist()
