"""Shared fixtures: the real Kang 2018 subset, read from the shared data folder when present."""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import pytest

KANG_FILE = "kang2018_pbmc_ifnb_2k.h5ad"


def data_dir() -> Path:
    """Folder of the shared test data: ``$MTPERT_DATA_DIR``, else ``<repo>/../shared/data``."""
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return Path(os.environ.get("MTPERT_DATA_DIR", default))


@pytest.fixture(scope="session")
def kang_path() -> Path:
    """Path of the Kang 2018 PBMC IFN-β subset (raw counts); skips the test if it is absent."""
    path = data_dir() / KANG_FILE
    if not path.is_file():
        pytest.skip(
            f"{KANG_FILE} not found in {path.parent}; set MTPERT_DATA_DIR to the folder holding it."
        )
    return path


@pytest.fixture(scope="session")
def kang_adata(kang_path: Path) -> ad.AnnData:
    """The Kang subset as read (raw counts), shared by the whole session: copy it to change it."""
    return ad.read_h5ad(kang_path)
