"""Minibatches straight from a sparse matrix: slice CSR rows, densify only the batch.

A training set of 100k cells x 2,000 genes is a few hundred MB sparse but several GB dense, so
cells stay in CSR form and each minibatch is built from its row slice. No DataLoader workers:
slicing a CSR matrix is faster than handing batches between processes at these sizes.

Data larger than memory stays on disk (a backed AnnData, see :mod:`mtpert.data.backed`) and is
read in chunks of :data:`~mtpert.data.backed.CHUNK_ROWS` consecutive rows. A full shuffle would
read single rows all over the file, so the shuffle is approximate: each epoch takes the chunks
in a random order, :data:`SHUFFLE_CHUNKS` at a time, and shuffles the cells of those chunks
together. A minibatch then mixes cells of a few random chunks, not of the whole file: if the file
is sorted (say by cell type), batches are less mixed than in memory, so write large files in a
random row order. Data that fits in one such buffer is read once and shuffled exactly as in
memory, so training from a small backed file gives the in-memory result.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp
import torch
from anndata import AnnData
from torch import Tensor

from mtpert.data.backed import CHUNK_ROWS, OnDisk, on_disk

SHUFFLE_CHUNKS = 4
"""On-disk chunks read and shuffled together (with 2,000 genes, tens to a few hundred MB)."""

Matrix = sp.csr_matrix | np.ndarray | OnDisk


@dataclass(frozen=True)
class Batch:
    """One minibatch on the training device.

    ``source`` holds the expression of the optimal-transport partners (control cells) of the
    batch cells at positions ``paired``; both are None when the batch has no paired cells.
    ``group`` is each cell's group index (e.g. its cell type) where the data has one.
    """

    x: Tensor
    condition: Tensor
    dose: Tensor | None
    source: Tensor | None = None
    paired: Tensor | None = None
    group: Tensor | None = None

    def __len__(self) -> int:
        return self.x.shape[0]


@dataclass(frozen=True)
class CellData:
    """Cells to train on or predict from.

    Attributes:
        X: (n_cells, n_genes) expression, preferably CSR, or on disk (see :func:`cell_matrix`);
            rows are densified per batch.
        condition: (n_cells,) int64 index of each cell's condition.
        dose: (n_cells,) float32 scaled dose, or None when the data has no doses.
        partner: (n_cells,) int64 row of each cell's OT partner in ``X`` (-1: none), or None.
        group: (n_cells,) int64 group index of each cell (e.g. its cell type, for a model that
            classifies it), or None.
    """

    X: Matrix
    condition: np.ndarray
    dose: np.ndarray | None = None
    partner: np.ndarray | None = None
    group: np.ndarray | None = None

    def __len__(self) -> int:
        return self.X.shape[0]

    def batches(
        self, batch_size: int, *, device: torch.device, generator: torch.Generator | None = None
    ) -> Iterator[Batch]:
        """Minibatches in a random order drawn from ``generator``, or in row order without one."""
        if isinstance(self.X, OnDisk):
            yield from self._disk_batches(batch_size, device, generator)
            return
        n = len(self)
        order = (
            torch.randperm(n, generator=generator).numpy()
            if generator is not None
            else np.arange(n)
        )
        for start in range(0, n, batch_size):
            rows = np.sort(order[start : start + batch_size])  # sorted slices are faster on CSR
            yield self._batch(rows, device)

    def _disk_batches(
        self, batch_size: int, device: torch.device, generator: torch.Generator | None
    ) -> Iterator[Batch]:
        """Minibatches of on-disk cells, :data:`SHUFFLE_CHUNKS` chunks in memory at a time."""
        if self.partner is not None:
            raise ValueError("OT partners need random access to every row; load X into memory.")
        starts = np.arange(0, len(self), CHUNK_ROWS)
        if generator is not None and len(starts) > SHUFFLE_CHUNKS:
            starts = starts[torch.randperm(len(starts), generator=generator).numpy()]
        for i in range(0, len(starts), SHUFFLE_CHUNKS):
            chunks = [
                np.arange(s, min(s + CHUNK_ROWS, len(self))) for s in starts[i : i + SHUFFLE_CHUNKS]
            ]
            blocks = [self.X.read(chunk) for chunk in chunks]  # each one contiguous read
            X = sp.vstack(blocks, format="csr") if sp.issparse(blocks[0]) else np.vstack(blocks)
            rows = np.concatenate(chunks)
            dose = None if self.dose is None else self.dose[rows]
            buffer = replace(self, X=X, condition=self.condition[rows], dose=dose)
            yield from buffer.batches(batch_size, device=device, generator=generator)

    def column_means(self) -> np.ndarray:
        """Mean of each gene over the cells (float64; read chunk by chunk when on disk)."""
        if isinstance(self.X, OnDisk):
            return self.X.column_sums() / len(self)
        return np.asarray(self.X.sum(axis=0, dtype=np.float64)).ravel() / len(self)

    def _batch(self, rows: np.ndarray, device: torch.device) -> Batch:
        dose = None if self.dose is None else torch.from_numpy(self.dose[rows]).to(device)
        group = None if self.group is None else torch.from_numpy(self.group[rows]).to(device)
        source = paired = None
        if self.partner is not None:
            partner = self.partner[rows]
            has = np.flatnonzero(partner >= 0)
            if len(has):
                source = _dense(self.X, partner[has], device)
                paired = torch.from_numpy(has).to(device)
        return Batch(
            x=_dense(self.X, rows, device),
            condition=torch.from_numpy(self.condition[rows]).to(device),
            dose=dose,
            source=source,
            paired=paired,
            group=group,
        )


def cell_matrix(adata: AnnData) -> Matrix:
    """``adata.X`` ready for minibatches: float32 CSR (dense stays dense), or left on disk when
    ``adata`` is backed."""
    disk = on_disk(adata)
    if disk is not None:
        return disk
    X = adata.X
    return sp.csr_matrix(X, dtype=np.float32) if sp.issparse(X) else np.asarray(X, dtype=np.float32)


def _dense(X: sp.csr_matrix | np.ndarray, rows: np.ndarray, device: torch.device) -> Tensor:
    block = X[rows]
    block = block.toarray() if sp.issparse(block) else block
    return torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32)).to(device)
