"""Data larger than memory and large groups: training from a backed h5ad, OT pairing in blocks."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

import mtpert.train.data as train_data
from mtpert.data import DatasetSpec, detect_kind, holdout_group, prepare, simulate
from mtpert.data.backed import on_disk, sample_rows
from mtpert.errors import DataError
from mtpert.models import get_model
from mtpert.train import CellData, ot_pairs, pairing
from mtpert.train.data import cell_matrix

SPEC = DatasetSpec()
FAST = {
    "hidden": (32,),
    "latent_dim": 8,
    "max_epochs": 3,
    "progress": False,
    "num_threads": 1,
    "seed": 3,
}


@pytest.fixture(scope="module")
def on_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[ad.AnnData, Path]:
    """Log data of a small simulated experiment, in memory and written to an h5ad file."""
    data = prepare(simulate(n_cell_types=3, n_genes=60, n_cells=40, seed=5), SPEC, n_hvg=0)
    path = tmp_path_factory.mktemp("backed") / "cells.h5ad"
    data.write_h5ad(path)
    return data, path


@pytest.mark.parametrize("name", ["mtae", "scgen"])
def test_backed_training_equals_in_memory(name: str, on_file: tuple[ad.AnnData, Path]) -> None:
    """Same seed, same cells: a backed file (and a view of one, as splits make) trains the same
    model as memory, since data that fits one shuffle buffer is shuffled exactly as in memory."""
    data, path = on_file
    backed = ad.read_h5ad(path, backed="r")
    split = holdout_group(data, SPEC, "type_0", min_cells=10)
    (target,) = split.targets
    control = data[target.control]
    models = {}
    for where, source in (("memory", data), ("disk", backed)):
        train, val = source[split.train], source[split.val]
        assert train.isbacked == (where == "disk")
        models[where] = get_model(name)(SPEC, **FAST).fit(train, val)
    assert backed.isbacked and not backed.is_view  # X was never loaded
    np.testing.assert_allclose(
        models["disk"].history.to_numpy(), models["memory"].history.to_numpy(), rtol=1e-6
    )
    np.testing.assert_allclose(
        models["disk"].predict(control, target.condition).X,
        models["memory"].predict(control, target.condition).X,
        rtol=1e-5,
        atol=1e-6,
    )


def test_chunked_batches_visit_every_cell_once(
    on_file: tuple[ad.AnnData, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond one shuffle buffer, chunks are shuffled: every cell still comes once per epoch, in
    another order each epoch, and batches mix cells of several chunks."""
    data, path = on_file
    monkeypatch.setattr(train_data, "CHUNK_ROWS", 10)
    monkeypatch.setattr(train_data, "SHUFFLE_CHUNKS", 3)
    backed = ad.read_h5ad(path, backed="r")
    rows = np.arange(data.n_obs)[::2]  # a view with gaps, as a split makes
    cells = CellData(cell_matrix(backed[rows]), np.arange(len(rows)))  # condition = position
    generator = torch.Generator().manual_seed(0)
    seen = [
        np.concatenate(
            [
                b.condition.numpy()
                for b in cells.batches(16, device=torch.device("cpu"), generator=generator)
            ]
        )
        for _ in range(2)
    ]
    for epoch in seen:
        np.testing.assert_array_equal(np.sort(epoch), np.arange(len(rows)))
    assert not np.array_equal(seen[0], seen[1])
    first = next(cells.batches(16, device=torch.device("cpu"), generator=generator))
    assert len(np.unique(first.condition.numpy() // 10)) > 1
    x = torch.cat([b.x for b in cells.batches(16, device=torch.device("cpu"))]).numpy()
    np.testing.assert_allclose(x, data.X[rows].toarray(), rtol=1e-6)
    np.testing.assert_allclose(cells.column_means(), data.X[rows].toarray().mean(0), rtol=1e-5)


def test_checks_read_samples_of_backed_data(on_file: tuple[ad.AnnData, Path]) -> None:
    data, path = on_file
    backed = ad.read_h5ad(path, backed="r")
    assert on_disk(data) is None
    assert sample_rows(backed, 16).shape[0] <= 16
    assert detect_kind(backed) == detect_kind(data) == "log"
    SPEC.validate(backed)


def test_ot_objective_refuses_backed_data(on_file: tuple[ad.AnnData, Path]) -> None:
    _, path = on_file
    with pytest.raises(DataError, match="to_memory"):
        get_model("mtae_ot")(SPEC, **FAST).fit(ad.read_h5ad(path, backed="r"))


def test_large_groups_are_paired_in_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A group of 6,000 x 5,000 cells never builds a plan larger than block x block, and the
    minibatch OT pairs still keep clusters together."""
    sizes = []
    exact = pairing._exact_pairs

    def recording(source: np.ndarray, target: np.ndarray) -> np.ndarray:
        sizes.append((len(source), len(target)))
        return exact(source, target)

    monkeypatch.setattr(pairing, "_exact_pairs", recording)
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [30.0, 0.0]])
    source_cluster, target_cluster = rng.integers(0, 2, 6000), rng.integers(0, 2, 5000)
    source = centers[source_cluster] + rng.normal(size=(6000, 2))
    target = centers[target_cluster] + 1.0 + rng.normal(size=(5000, 2))
    partner = ot_pairs(source, target, block_size=500)
    assert max(max(s) for s in sizes) <= 500 and len(sizes) == 12
    assert (source_cluster[partner] == target_cluster).mean() > 0.95
