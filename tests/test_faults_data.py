"""Bad input to the data layer fails up front with the fix named: data logged twice, duplicate
cell names, a min_cells that would call a group without control cells eligible."""

from __future__ import annotations

import re
from pathlib import Path

import anndata as ad
import pytest
import scanpy as sc
from anndata import AnnData
from typer.testing import CliRunner

from mtpert.cli import app
from mtpert.data import (
    DatasetSpec,
    detect_kind,
    eligible_conditions,
    eligible_groups,
    holdout_condition,
    log_normalize,
    pp,
    prepare,
    require_kind,
    simulate,
)
from mtpert.data.spec import require_groups
from mtpert.errors import DataError

from .conftest import KANG_FILE, data_dir

SPEC = DatasetSpec()
runner = CliRunner(env={"COLUMNS": "200"})  # wide enough that rich does not wrap lines

REAL_FILES = [
    KANG_FILE,
    "mcfaline2023_gbm_crispri_3lines.h5ad",
    "norman2019_k562_crispra_subset.h5ad",
    "papalexi2021_thp1_crispr.h5ad",
    "mimitou2019_eccite_pbmc_500.h5ad",
]


def double_logged(how: str) -> AnnData:
    """Simulated counts, log-normalized, then log1p'd once more (by hand, or by scanpy again)."""
    adata = simulate(seed=0)
    log_normalize(adata)
    if how == "scanpy":
        sc.pp.log1p(adata)  # scanpy warns, keeps its uns['log1p'] marker, and logs again
    else:
        adata.X = adata.X.log1p()
    return adata


# ---------------------------------------------------------------------- logged twice
@pytest.mark.filterwarnings("ignore:adata.X seems to be already log-transformed")
@pytest.mark.parametrize("how", ["by-hand", "scanpy"])
def test_double_logged_data_is_refused_with_advice(how: str) -> None:
    adata = double_logged(how)
    assert detect_kind(adata) == "double_log"
    with pytest.raises(DataError, match=r"prepare needs raw counts or log-normalized data\. adata\.X looks log-transformed twice.*raw counts"):
        prepare(adata, SPEC, n_hvg=50)
    with pytest.raises(DataError, match=r"log-transformed twice.*log1p\(normalize_total\(counts\)\) once"):
        require_kind(adata, "log")
    with pytest.raises(DataError, match="log-transformed twice"):
        log_normalize(adata)
    # too few cells to tell: a model's handful of control cells is not judged on its maximum
    assert detect_kind(adata[: pp.DOUBLE_LOG_MIN_CELLS - 1]) == "log"


def test_double_logged_file_is_reported_by_data_info_and_detected_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "twice.h5ad"
    double_logged("by-hand").write_h5ad(path)
    result = runner.invoke(app, ["data", "info", str(path)])
    assert result.exit_code == 0, result.output
    assert "X holds values logged twice" in result.output
    assert "log-transformed twice" in result.output and "raw counts" in result.output
    assert detect_kind(ad.read_h5ad(path, backed="r")) == "double_log"


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"n_genes": 20}, {"library_size": 50.0}, {"n_genes": 20, "library_size": 50.0}, {"n_genes": 2000}],
    ids=["default", "20-genes", "shallow", "20-genes-shallow", "2000-genes"],
)
def test_simulated_log_data_is_not_taken_for_double_log(kwargs: dict[str, float]) -> None:
    adata = simulate(seed=1, **kwargs)
    log_normalize(adata)
    assert detect_kind(adata) == "log"
    if adata.n_vars > 200:
        assert detect_kind(prepare(adata, SPEC, n_hvg=200)) == "log"
    twice = adata.copy()
    twice.X = twice.X.log1p()
    assert detect_kind(twice) == "double_log"
    assert adata.X.max() > pp.DOUBLE_LOG_MAX + 1, "a clear margin above the double-log bound"


@pytest.mark.realdata
@pytest.mark.parametrize("name", REAL_FILES)
def test_real_log_normalized_data_is_not_refused(name: str) -> None:
    """Real log-normalized data, also cut to 200 HVGs, stays well above the double-log bound."""
    path = data_dir() / name
    if not path.is_file():
        pytest.skip(f"{name} not found in {path.parent}; set MTPERT_DATA_DIR to the folder holding it.")
    adata = ad.read_h5ad(path)
    log_normalize(adata)
    require_kind(adata, "log")
    hvgs = prepare(adata, SPEC, n_hvg=200)
    assert detect_kind(hvgs) == "log"
    twice = adata.copy()
    twice.X = twice.X.log1p()
    assert detect_kind(twice) == "double_log"
    assert adata.X.max() > 2 * pp.DOUBLE_LOG_MAX
    control = hvgs[SPEC.is_control(hvgs)]
    for cell_type in SPEC.cell_types(control):  # what a model predicts from: one group's control cells
        assert control[control.obs["cell_type"] == cell_type].X.max() > pp.DOUBLE_LOG_MAX, cell_type


# ---------------------------------------------------------------------- duplicate cell names
@pytest.mark.filterwarnings("ignore:Observation names are not unique")
def test_duplicate_obs_names_are_refused_with_the_fix(tmp_path: Path) -> None:
    adata = simulate(seed=0, n_cell_types=2, n_cells=10)
    names = adata.obs_names.to_numpy().copy()
    names[1], names[3] = names[0], names[2]
    adata.obs_names = names
    fix = "adata.obs_names_make_unique()"
    with pytest.raises(DataError, match=re.escape(f"not unique (e.g. ['{names[0]}', '{names[2]}'])") + ".*" + re.escape(fix)):
        SPEC.validate(adata)
    with pytest.raises(DataError, match="obs_names_make_unique"):
        prepare(adata, SPEC, n_hvg=0)
    path = tmp_path / "dupes.h5ad"
    adata.write_h5ad(path)
    result = runner.invoke(app, ["data", "info", str(path)])
    assert result.exit_code == 2, result.output
    assert fix in result.output and "Traceback" not in result.output


# ---------------------------------------------------------------------- min_cells below 2
def no_control_group() -> AnnData:
    """Simulated data where type_1 has perturbed cells but no control cells."""
    adata = simulate(seed=0, n_cell_types=2, n_cells=10)
    keep = ~((adata.obs["cell_type"] == "type_1") & SPEC.is_control(adata))
    return adata[keep.to_numpy()].copy()


@pytest.mark.parametrize("min_cells", [0, 1])
def test_min_cells_below_two_is_refused(min_cells: int) -> None:
    adata = no_control_group()
    for call in (
        lambda: eligible_groups(adata, SPEC, min_cells=min_cells),
        lambda: eligible_conditions(adata, SPEC, min_cells=min_cells),
        lambda: require_groups(adata, SPEC, "type_1", ["stimulated"], min_cells=min_cells),
        lambda: holdout_condition(adata, SPEC, "stimulated", min_cells=min_cells),
    ):
        with pytest.raises(DataError, match=rf"min_cells must be at least 2, got {min_cells}.*--min-cells"):
            call()
    table = eligible_groups(adata, SPEC, min_cells=2)
    assert table.loc["type_1", "n_control"] == 0 and not table.loc["type_1", "eligible"]


@pytest.mark.parametrize("min_cells", ["0", "1"])
def test_data_info_refuses_min_cells_below_two(tmp_path: Path, min_cells: str) -> None:
    path = tmp_path / "no_control.h5ad"
    no_control_group().write_h5ad(path)
    result = runner.invoke(app, ["data", "info", str(path), "--min-cells", min_cells])
    assert result.exit_code == 2, result.output
    assert "--min-cells" in result.output and "greater than or equal to 2" in result.output
    assert "Traceback" not in result.output


# ---------------------------------------------------------------------- unreadable files
@pytest.mark.filterwarnings("ignore:Element '/x' was written without encoding metadata")
def test_data_info_on_an_hdf5_file_that_is_not_anndata_is_a_clear_error(tmp_path: Path) -> None:
    """Truncated and text files raise OSError (refused before, too); another HDF5 file raises
    whatever anndata's reader meets (here TypeError), which must not become a traceback."""
    import h5py

    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["x"] = [1, 2, 3]
    result = runner.invoke(app, ["data", "info", str(path)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: Could not read") and "Traceback" not in result.output
