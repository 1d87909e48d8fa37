"""Minibatches straight from a sparse matrix: slice CSR rows, densify only the batch.

A training set of 100k cells x 2,000 genes is a few hundred MB sparse but several GB dense, so
cells stay in CSR form and each minibatch is built from its row slice. No DataLoader workers:
slicing a CSR matrix is faster than handing batches between processes at these sizes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor


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
        X: (n_cells, n_genes) expression, preferably CSR; rows are densified per batch.
        condition: (n_cells,) int64 index of each cell's condition.
        dose: (n_cells,) float32 scaled dose, or None when the data has no doses.
        partner: (n_cells,) int64 row of each cell's OT partner in ``X`` (-1: none), or None.
        group: (n_cells,) int64 group index of each cell (e.g. its cell type, for a model that
            classifies it), or None.
    """

    X: sp.csr_matrix | np.ndarray
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
        n = len(self)
        order = (
            torch.randperm(n, generator=generator).numpy()
            if generator is not None
            else np.arange(n)
        )
        for start in range(0, n, batch_size):
            rows = np.sort(order[start : start + batch_size])  # sorted slices are faster on CSR
            yield self._batch(rows, device)

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


def _dense(X: sp.csr_matrix | np.ndarray, rows: np.ndarray, device: torch.device) -> Tensor:
    block = X[rows]
    block = block.toarray() if sp.issparse(block) else block
    return torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32)).to(device)
