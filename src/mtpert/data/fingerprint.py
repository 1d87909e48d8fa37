"""A fingerprint of an AnnData's content, so results are never reused for other data.

A benchmark directory records the fingerprint of the data its runs were fitted on and refuses
to resume on different data, whatever the file is called. The fingerprint is a SHA-256 over what
a run reads: the expression matrix (values and sparsity pattern), the cell and gene names, and
every obs and var column (name, dtype and values). Writing the same data to another file, with
other compression, gives the same fingerprint; changing one value or one label does not.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from mtpert.data.backed import CHUNK_ROWS, on_disk

_SEPARATOR = b"\x1f"


def data_sha256(adata: AnnData) -> str:
    """Hex SHA-256 of ``adata``'s X, obs and var (read chunk by chunk when X is on disk)."""
    digest = hashlib.sha256()
    _feed(digest, repr(adata.shape).encode())
    for block in _row_blocks(adata):
        _feed(digest, *_matrix_bytes(block))
    for names in (adata.obs_names, adata.var_names):
        _feed(digest, _text(names))
    for frame in (adata.obs, adata.var):
        for column in frame.columns:
            values = frame[column]
            _feed(digest, str(column).encode(), str(values.dtype).encode(), _column_bytes(values))
    return digest.hexdigest()


def _feed(digest: hashlib._Hash, *parts: bytes) -> None:
    for part in parts:
        digest.update(part)
        digest.update(_SEPARATOR)


def _row_blocks(adata: AnnData) -> Iterator[np.ndarray | sp.spmatrix]:
    """X in blocks of :data:`~mtpert.data.backed.CHUNK_ROWS` rows, from memory or from disk alike,
    so the same data hashes the same either way."""
    disk = on_disk(adata)
    if disk is not None:
        yield from disk.chunks(CHUNK_ROWS)
        return
    for start in range(0, adata.n_obs, CHUNK_ROWS):
        yield adata.X[start : start + CHUNK_ROWS]


def _matrix_bytes(X: np.ndarray | sp.spmatrix) -> tuple[bytes, ...]:
    """A sparse block in canonical CSR form (sorted indices, no duplicates), else dense values.
    The same numbers stored densely and sparsely hash differently, which errs on the safe side."""
    if sp.issparse(X):
        X = sp.csr_matrix(X, copy=True)
        X.sum_duplicates()
        return b"csr", np.asarray(X.indptr, np.int64).tobytes(), np.asarray(X.indices, np.int64).tobytes(), np.asarray(X.data, np.float64).tobytes()
    return b"dense", np.ascontiguousarray(X, dtype=np.float64).tobytes()


def _column_bytes(values: pd.Series) -> bytes:
    if pd.api.types.is_numeric_dtype(values) and not isinstance(values.dtype, pd.CategoricalDtype):
        return values.to_numpy(dtype=np.float64, na_value=np.nan).tobytes()
    return _text(values.astype(str))


def _text(values: pd.Index | pd.Series) -> bytes:
    return "\x1e".join(map(str, values)).encode()
