"""Shared fixtures: the real Kang 2018 subset, read from the shared data folder when present.

A test that uses one of them is marked ``realdata``, so ``-m "not realdata"`` leaves it out.
"""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import pytest

KANG_FILE = "kang2018_pbmc_ifnb_2k.h5ad"
REAL_DATA_FIXTURES = {"kang_path", "kang_adata"}
"""Fixtures that read the shared real data: a test using one is marked ``realdata``."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that reads the shared real data ``realdata`` (``-m "not realdata"``)."""
    for item in items:
        if REAL_DATA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.realdata)


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
