"""Expression matrices that stay on disk: AnnData read with ``read_h5ad(path, backed="r")``.

Data larger than memory is trained on from the h5ad file itself. Rows are read in contiguous
chunks (one slice of the file's CSR ``indptr``/``indices``/``data`` arrays per chunk, which h5py
reads sequentially), never the whole matrix. A view of a backed AnnData (``adata[rows]``, as
splits make) is handled too: its rows are read from the file it views, without loading it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import h5py
import numpy as np
import scipy.sparse as sp
from anndata import AnnData
from anndata.abc import CSCDataset, CSRDataset

from mtpert.errors import DataError

CHUNK_ROWS = 8192
"""Rows read from disk at a time (a few MB to a few tens of MB for 2,000 genes)."""

SPAN_FACTOR = 4
"""Rows spanning at most this many times their number are read as one contiguous slice."""

SAMPLE_WINDOWS = 8
"""Contiguous windows :func:`sample_rows` reads, at random places, so a file sorted by cell type
is sampled across types."""


@dataclass(frozen=True, eq=False)
class OnDisk:
    """Rows ``rows`` (and columns ``cols``) of a CSR or dense matrix in an h5ad file.

    Reads return float32 CSR (dense stays dense), like the in-memory matrices models train on.
    """

    matrix: CSRDataset | h5py.Dataset
    rows: np.ndarray
    cols: slice | np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        n_cols = len(np.arange(self.matrix.shape[1])[self.cols])
        return len(self.rows), n_cols

    def read(self, positions: np.ndarray) -> sp.csr_matrix | np.ndarray:
        """Rows ``self.rows[positions]``, in that order. Rows close together (a chunk) are read
        with one contiguous slice of the file spanning them; scattered ones by a sorted selection."""
        rows = self.rows[np.asarray(positions, dtype=np.int64)]
        if not len(rows):
            return sp.csr_matrix((0, self.shape[1]), dtype=np.float32)
        first, last = int(rows.min()), int(rows.max())
        if last - first < SPAN_FACTOR * len(rows):
            block = self.matrix[first : last + 1]
            if len(rows) != last - first + 1 or (np.diff(rows) != 1).any():
                block = block[rows - first]
        else:
            unique, inverse = np.unique(rows, return_inverse=True)
            block = self.matrix[unique][inverse]
        if not (
            isinstance(self.cols, slice) and self.cols == slice(None)
        ):  # copies cost at this size
            block = block[:, self.cols]
        if sp.issparse(block):
            return sp.csr_matrix(block, dtype=np.float32)
        return np.asarray(block, dtype=np.float32)

    def chunks(self, size: int = CHUNK_ROWS) -> Iterator[sp.csr_matrix | np.ndarray]:
        """Every row, in order, ``size`` rows at a time."""
        for start in range(0, len(self.rows), size):
            yield self.read(np.arange(start, min(start + size, len(self.rows))))

    def column_sums(self) -> np.ndarray:
        """Sum of each column over every row (float64), read chunk by chunk."""
        return sum(
            (np.asarray(block.sum(axis=0, dtype=np.float64)).ravel() for block in self.chunks()),
            np.zeros(self.shape[1]),
        )


def on_disk(adata: AnnData) -> OnDisk | None:
    """``adata.X`` as an :class:`OnDisk` if it is backed (or a view of a backed AnnData), else None.

    Views of backed AnnData expose their rows only through anndata's private ``_oidx``/``_vidx``
    (anndata has no public accessor); reading ``view.X`` would load the whole selection.
    """
    if not adata.isbacked:
        return None
    parent = adata._adata_ref if adata.is_view else adata
    matrix = parent.X
    if isinstance(matrix, CSCDataset):
        raise DataError(
            "The backed AnnData stores X as CSC, which cannot be read by rows efficiently; rewrite "
            "it as CSR (adata.X = scipy.sparse.csr_matrix(adata.X); adata.write_h5ad(path))."
        )
    if adata.is_view:
        rows = np.arange(parent.n_obs)[adata._oidx]
        return OnDisk(matrix, rows, adata._vidx)
    return OnDisk(matrix, np.arange(adata.n_obs), slice(None))


def sample_rows(adata: AnnData, n: int, seed: int = 0) -> np.ndarray | sp.spmatrix:
    """``adata.X``, or about ``n`` of its rows when it is on disk: :data:`SAMPLE_WINDOWS`
    contiguous windows at random places (cheap to read, and spread over the file)."""
    disk = on_disk(adata)
    if disk is None:
        return adata.X
    total = len(disk.rows)
    width = max(1, n // SAMPLE_WINDOWS)
    if total <= width * SAMPLE_WINDOWS:
        return disk.read(np.arange(total))
    starts = (
        np.random.default_rng(seed).choice(total // width, SAMPLE_WINDOWS, replace=False) * width
    )
    blocks = [disk.read(np.arange(s, s + width)) for s in np.sort(starts)]
    return sp.vstack(blocks, format="csr") if sp.issparse(blocks[0]) else np.vstack(blocks)
