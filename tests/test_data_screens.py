"""Genetic screens as data: the registry's public screens (Norman, Papalexi, McFaline-Figueroa),
read from files shaped like theirs and served on 127.0.0.1, and `mtpert data info` on a screen."""

from __future__ import annotations

import gzip
import hashlib
import re
from dataclasses import replace

import numpy as np
import pytest
from anndata import AnnData
from typer.testing import CliRunner

from mtpert.cli import app
from mtpert.cli.data import screen_summary
from mtpert.data import DATASETS, DatasetSpec, load_dataset, simulate
from mtpert.data.split import predictable_combinations
from mtpert.errors import DataError, DatasetUnavailableError
from tests.test_registry import server  # noqa: F401 (the local HTTP server fixture; F811 below: the tests' argument)

SCREEN = DatasetSpec(combination_separator="+", guide_key="guide", batch_key="replicate")
narrow = CliRunner(env={"COLUMNS": "80"})  # an 80-column terminal


def hand_screen() -> AnnData:
    """Two cell types; singles X, Y, Z; pairs X+Y (both parts applied alone) and X+W (W never
    alone); two guides per perturbation and three for the control; replicates r1/r2 alternating;
    only 5 cells of Z in type_1."""
    adata = simulate(n_cell_types=2, n_genes=30, n_cells=24, perturbations=("X", "Y", "Z", "X+Y", "X+W"), seed=0)
    labels = adata.obs["condition"].astype(str).to_numpy()
    position = np.arange(adata.n_obs)
    adata.obs["guide"] = np.where(labels == "control", [f"NTg{i % 3 + 1}" for i in position],
                                  [f"{c}g{i % 2 + 1}" for c, i in zip(labels, position)])
    adata.obs["replicate"] = np.where(position % 2 == 0, "r1", "r2")
    few_z = (labels == "Z") & (adata.obs["cell_type"] == "type_1").to_numpy()
    few_z[np.flatnonzero(few_z)[:5]] = False  # keep 5
    return adata[~few_z].copy()


# ---------------------------------------------------------------------- data info on a screen
def test_screen_summary_names_kinds_guides_and_replicates() -> None:
    summary = screen_summary(hand_screen(), SCREEN, min_cells=20)
    assert list(summary.index) == ["control", "X", "X+W", "X+Y", "Y", "Z"]  # control first, then sorted
    assert summary["kind"].to_dict() == {
        "control": "control",
        "X": "single (in 2 combos)",
        "X+W": "pair (1/2 parts alone)",
        "X+Y": "pair (2/2 parts alone)",
        "Y": "single (in 1 combo)",
        "Z": "single",
    }
    assert summary["guides"].to_dict() == {"control": 3, "X": 2, "X+W": 2, "X+Y": 2, "Y": 2, "Z": 2}
    # 48 cells per condition split over r1/r2 (24 each); Z has 29 cells, 14 and 15
    assert summary["replicates"].to_dict() == {"control": 2, "X": 2, "X+W": 2, "X+Y": 2, "Y": 2, "Z": 0}


def test_data_info_on_a_screen_has_a_row_per_condition_and_fits_80_columns(tmp_path) -> None:
    path = tmp_path / "screen.h5ad"
    hand_screen().write_h5ad(path)
    result = narrow.invoke(app, ["data", "info", str(path), "--separator", "+", "--guide-key", "guide", "--batch-key", "replicate"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert max(map(len, out.splitlines())) <= 80
    flat = " ".join(out.split())  # the summary lines may wrap at 80 columns
    assert "5 conditions in obs['condition'] besides the control 'control': 3 single, 2 combinations (separator '+')." in flat
    assert "1 of 2 combinations can be predicted from their parts (each part applied alone; >= 20 cells each); not: X+W." in flat
    assert "13 guides in obs['guide']: 2 per perturbation, 3 for the control." in flat
    assert "5 of 6 conditions have >= 20 cells in each; not: Z." in flat
    rows = {
        "X+W": r"X\+W +│ pair \(1/2 parts alone\) +│ +24 │ +24 │ +2 │ +2/2 │",
        "Z": r"Z +│ single +│ +24 │ +5 │ +2 │ +0/2 │",
        "hold out?": r"hold out\? +│ +│ +yes │ +yes │",
    }
    for name, row in rows.items():
        assert re.search(row, out), f"the row of {name} is missing or cut:\n{out}"
    order = [line.split("│")[1].strip() for line in out.splitlines() if line.startswith("│")]
    assert order == ["control", "X", "X+W", "X+Y", "Y", "Z", "hold out?"]
    assert "1 condition x cell_type counts are below 20 (in yellow)" in flat
    assert "2 of 2 groups can be held out and scored." in out


def test_data_info_without_a_separator_suggests_one(tmp_path) -> None:
    path = tmp_path / "screen.h5ad"
    hand_screen().write_h5ad(path)
    result = narrow.invoke(app, ["data", "info", str(path)])
    assert result.exit_code == 0, result.output
    assert "pass --separator '+'" in result.output
    assert "pair (" not in result.output and "guides" not in result.output  # no combination, guide, replicate columns


# ---------------------------------------------------------------------- the registry's screens
def test_registered_screen_specs_are_well_formed() -> None:
    for name in ("norman2019", "papalexi2021", "mcfaline2023"):
        entry = DATASETS[name]
        spec = entry.spec
        assert len(set(spec.obs_keys)) == len(spec.obs_keys), f"{name}: two roles share an obs key"
        assert DatasetSpec.from_dict(spec.to_dict()) == spec
        if spec.combination_separator is not None:
            assert spec.combination_separator not in spec.control
        if entry.condition_from is not None:
            source, pattern = entry.condition_from
            assert source != spec.condition_key and re.compile(pattern)
        assert all(values for values in entry.keep.values())
    assert DATASETS["norman2019"].spec.parts("SET_KLF1") == ("SET", "KLF1")
    assert DATASETS["mcfaline2023"].download_name == "mcfaline2023.h5ad.gz"


def scperturb_norman(path) -> None:
    """A file with scPerturb's Norman 2019 obs: cell_line, perturbation ('A_B' pairs), guide_id, gemgroup."""
    keys = DatasetSpec(cell_type_key="cell_line", condition_key="perturbation")
    adata = simulate(n_cell_types=1, n_genes=20, n_cells=25, perturbations=("KLF1", "SET", "SET_KLF1", "CBL_CNN1"), spec=keys)
    adata.obs["guide_id"] = adata.obs["perturbation"].astype(str) + ";" + adata.obs["perturbation"].astype(str)
    adata.obs["gemgroup"] = np.arange(adata.n_obs) % 8 + 1
    adata.write_h5ad(path)


def test_norman_entry_reads_pairs_split_by_underscore(tmp_path) -> None:
    scperturb_norman(tmp_path / "norman.h5ad")
    adata = load_dataset("norman2019", path=tmp_path / "norman.h5ad")
    spec = DATASETS["norman2019"].spec
    spec.validate(adata)
    assert spec.perturbations(adata) == ["CBL", "CNN1", "KLF1", "SET"]
    assert predictable_combinations(adata, spec, min_cells=20) == ["SET_KLF1"]  # CBL, CNN1 never alone


def test_papalexi_entry_groups_the_guides_of_a_gene_into_one_condition(tmp_path) -> None:
    keys = DatasetSpec(cell_type_key="cell_line", condition_key="perturbation")
    adata = simulate(n_cell_types=1, n_genes=20, n_cells=10, perturbations=("STAT2g1", "STAT2g2", "IRF1g3"), spec=keys)
    label = adata.obs["perturbation"].astype(str)
    adata.obs["guide_id"] = np.where(label == "control", "NTg1", label)
    adata.obs["hto"] = "rep1-tx"
    adata.write_h5ad(tmp_path / "papalexi.h5ad")
    loaded = load_dataset("papalexi2021", path=tmp_path / "papalexi.h5ad")
    spec = DATASETS["papalexi2021"].spec
    spec.validate(loaded)
    assert spec.conditions(loaded) == ["IRF1", "STAT2"]
    assert int(spec.is_control(loaded).sum()) == 10
    assert screen_summary(loaded, spec)["guides"].to_dict() == {"control": 1, "IRF1": 1, "STAT2": 2}


def perturbench_mcfaline(server, treatments=("none", "trametinib")) -> str:  # noqa: F811
    """A gzipped file with perturbench's McFaline obs (cell_type, condition, treatment) on the
    server; returns its md5."""
    adata = simulate(n_cell_types=3, n_genes=20, n_cells=12, perturbations=("MAPK1", "SGK1"))
    adata.obs["treatment"] = np.resize(treatments, adata.n_obs)
    plain = server.root / "mcfaline.h5ad"
    adata.write_h5ad(plain)
    packed = gzip.compress(plain.read_bytes())
    (server.root / "mcfaline.h5ad.gz").write_bytes(packed)
    return hashlib.md5(packed).hexdigest()


def test_mcfaline_download_is_unpacked_verified_and_kept_to_untreated_cells(server, tmp_path) -> None:  # noqa: F811
    md5 = perturbench_mcfaline(server)
    entry = replace(DATASETS["mcfaline2023"], url=f"{server.url}/mcfaline.h5ad.gz", known_hash=f"md5:{md5}")
    cache = tmp_path / "cache"
    adata = load_dataset(entry, cache_dir=cache)
    entry.spec.validate(adata)
    assert set(adata.obs["treatment"]) == {"none"} and adata.n_obs == 3 * 3 * 12 // 2
    assert entry.spec.conditions(adata) == ["MAPK1", "SGK1"]
    assert (cache / "mcfaline2023.h5ad").is_file() and (cache / "mcfaline2023.h5ad.gz").is_file()
    load_dataset(entry, cache_dir=cache)
    assert server.hits == ["/mcfaline.h5ad.gz"]  # the second load came from the cache


def test_a_download_that_does_not_match_its_checksum_is_refused(server, tmp_path) -> None:  # noqa: F811
    perturbench_mcfaline(server)
    entry = replace(DATASETS["mcfaline2023"], url=f"{server.url}/mcfaline.h5ad.gz", known_hash="md5:" + "0" * 32)
    cache = tmp_path / "cache"
    with pytest.raises(DatasetUnavailableError, match="does not match the recorded checksum"):
        load_dataset(entry, cache_dir=cache)
    assert not (cache / "mcfaline2023.h5ad").exists() and not (cache / "mcfaline2023.h5ad.gz").exists()


def test_a_file_without_the_kept_treatment_is_named(server, tmp_path) -> None:  # noqa: F811
    perturbench_mcfaline(server, treatments=("dmso",))
    entry = replace(DATASETS["mcfaline2023"], url=f"{server.url}/mcfaline.h5ad.gz")
    with pytest.warns(UserWarning, match="no published checksum"), pytest.raises(
        DataError, match=re.escape("['none'] are not in obs['treatment'] (it has ['dmso'])")
    ):
        load_dataset(entry, cache_dir=tmp_path / "cache")
