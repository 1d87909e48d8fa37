"""The dataset registry, offline: downloads are served from a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import re
import socket
import threading
from dataclasses import replace
from types import SimpleNamespace

import pytest

from mtpert.data import (
    DATASETS,
    DatasetSpec,
    holdout_condition,
    holdout_group,
    list_datasets,
    load_dataset,
    simulate,
)
from mtpert.data.registry import NAULT2021_LIVER_CELL_TYPES, RemoteDataset
from mtpert.errors import DataError, DatasetUnavailableError

SPEC = DatasetSpec(dose_key="dose")


@pytest.fixture
def server(tmp_path):
    """Serve ``tmp_path/served`` over HTTP; ``hits`` lists the paths of the GET requests."""
    root = tmp_path / "served"
    root.mkdir()
    hits: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            hits.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield SimpleNamespace(root=root, url=f"http://127.0.0.1:{httpd.server_port}", hits=hits)
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def tiny(server):
    """A small simulated h5ad on the server, and its sha256."""
    path = server.root / "tiny.h5ad"
    simulate(n_cell_types=2, n_genes=20, n_cells=5, seed=0).write_h5ad(path)
    return SimpleNamespace(
        path=path,
        url=f"{server.url}/tiny.h5ad",
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
    )


def _entry(url: str | None, known_hash: str | None, **kwargs) -> RemoteDataset:
    return RemoteDataset(
        name="tiny",
        url=url,
        known_hash=known_hash,
        filename="tiny.h5ad",
        spec=SPEC,
        description="test file",
        citation="none",
        **kwargs,
    )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_downloads_verifies_and_caches(server, tiny, tmp_path):
    cache = tmp_path / "cache"
    entry = _entry(tiny.url, f"sha256:{tiny.sha256}")
    adata = load_dataset(entry, cache_dir=cache)
    assert adata.shape == (20, 20)
    SPEC.validate(adata)
    assert (cache / "tiny.h5ad").is_file()
    load_dataset(entry, cache_dir=cache)
    assert server.hits == ["/tiny.h5ad"]  # the second load came from the cache


def test_checksum_mismatch_raises_and_keeps_nothing(tiny, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(DatasetUnavailableError, match="checksum") as err:
        load_dataset(_entry(tiny.url, "sha256:" + "0" * 64), cache_dir=cache)
    assert tiny.url in str(err.value)
    assert list(cache.iterdir()) == []


def test_corrupted_cache_file_is_replaced_not_loaded(server, tiny, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "tiny.h5ad").write_bytes(b"not the file")
    adata = load_dataset(_entry(tiny.url, f"sha256:{tiny.sha256}"), cache_dir=cache)
    assert adata.n_obs == 20
    assert server.hits == ["/tiny.h5ad"]


def test_unreachable_url_names_url_cache_path_and_path_option(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/x.h5ad"
    cache = tmp_path / "cache"
    with pytest.raises(DatasetUnavailableError) as err:
        load_dataset(_entry(url, "sha256:" + "0" * 64), cache_dir=cache)
    message = str(err.value)
    assert url in message and str(cache / "tiny.h5ad") in message and "path=" in message


def test_mirror_is_used_when_the_url_fails(server, tiny, tmp_path):
    dead = f"http://127.0.0.1:{_closed_port()}/x.h5ad"
    entry = _entry(dead, f"sha256:{tiny.sha256}", mirrors=(tiny.url,))
    assert load_dataset(entry, cache_dir=tmp_path / "cache").n_obs == 20


def test_unverified_download_warns_with_its_sha256(tiny, tmp_path):
    with pytest.warns(UserWarning, match=tiny.sha256):
        load_dataset(_entry(tiny.url, None), cache_dir=tmp_path / "cache")


def test_cache_dir_from_environment(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("MTPERT_CACHE_DIR", str(tmp_path / "env_cache"))
    load_dataset(_entry(tiny.url, f"sha256:{tiny.sha256}"))
    assert (tmp_path / "env_cache" / "tiny.h5ad").is_file()


def test_local_files_load_without_network(server, tiny):
    assert load_dataset(tiny.path).n_obs == 20
    assert load_dataset(str(tiny.path)).n_obs == 20
    dead = _entry(f"http://127.0.0.1:{_closed_port()}/x.h5ad", "sha256:" + "0" * 64)
    assert load_dataset(dead, path=tiny.path).n_obs == 20
    assert server.hits == []
    with pytest.raises(DataError, match="not an existing file"):
        load_dataset(dead, path=tiny.path.parent / "missing.h5ad")


def test_manual_dataset_explains_where_to_get_it(tiny, tmp_path):
    entry = _entry(None, None, manual_download="the lab's website")
    cache = tmp_path / "cache"
    with pytest.raises(DatasetUnavailableError, match="the lab's website") as err:
        load_dataset(entry, cache_dir=cache)
    assert "path=" in str(err.value) and str(cache / "tiny.h5ad") in str(err.value)
    cache.mkdir()
    (cache / "tiny.h5ad").write_bytes(tiny.path.read_bytes())
    assert load_dataset(entry, cache_dir=cache).n_obs == 20


def test_condition_is_derived_for_dose_only_files(tiny, tmp_path):
    adata = load_dataset(tiny.path)
    del adata.obs["condition"]
    adata.write_h5ad(tmp_path / "dose_only.h5ad")
    entry = _entry(None, None, manual_download="-", perturbation="drug")
    derived = load_dataset(entry, path=tmp_path / "dose_only.h5ad")
    SPEC.validate(derived)
    assert SPEC.conditions(derived) == ["drug"]


def test_unknown_name_lists_the_registered_ones():
    with pytest.raises(DataError) as err:
        load_dataset("no_such_dataset")
    for name in ("kang2018", "nault2021", "hagai2018"):
        assert name in str(err.value)


def test_non_h5ad_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.h5ad"
    bad.write_text("hello")
    with pytest.raises(DataError, match="Could not read"):
        load_dataset(bad)


def test_registry_table_is_immutable_and_well_formed():
    assert set(DATASETS) == {
        "kang2018", "nault2021", "nault2021_liver", "hagai2018", "norman2019", "papalexi2021", "mcfaline2023"
    }
    with pytest.raises(TypeError):
        DATASETS["x"] = DATASETS["kang2018"]  # type: ignore[index]
    for name, entry in DATASETS.items():
        assert entry.name == name and isinstance(entry.spec, DatasetSpec)
        assert entry.url or entry.manual_download
        if entry.known_hash is not None:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}|md5:[0-9a-f]{32}", entry.known_hash)
    assert DATASETS["nault2021"].spec.dose_key
    assert DATASETS["hagai2018"].group_keys["species"] == "species"
    table = list_datasets()
    assert list(table.index) == list(DATASETS)
    assert {"description", "checksum", "download", "citation"} <= set(table.columns)


def test_mirrors_require_a_checksum():
    with pytest.raises(ValueError, match="mirrors"):
        _entry("http://127.0.0.1/a.h5ad", None, mirrors=("http://127.0.0.1/b.h5ad",))


# ---------------------------------------------------------------------- the multi-dose and cross-species studies
def _nault_like(path):
    """A file shaped like scVIDR's Nault 2021 h5ad: obs 'celltype' and numeric 'Dose', no condition."""
    keys = DatasetSpec(cell_type_key="celltype", dose_key="Dose")
    adata = simulate(n_cell_types=7, n_genes=20, n_cells=12, doses=(0.3, 30.0), spec=keys, seed=0)
    names = [*NAULT2021_LIVER_CELL_TYPES, "B Cells"]
    adata.obs["celltype"] = adata.obs["celltype"].cat.rename_categories(names)
    del adata.obs["condition"]
    adata.write_h5ad(path)
    return adata


def test_nault_loads_with_its_dose_key_and_the_liver_subset(tmp_path):
    _nault_like(tmp_path / "nault.h5ad")
    full = load_dataset("nault2021", path=tmp_path / "nault.h5ad")
    liver = load_dataset("nault2021_liver", path=tmp_path / "nault.h5ad")
    spec = DATASETS["nault2021_liver"].spec
    assert spec == DATASETS["nault2021"].spec and spec.dose_key == "Dose"
    for adata in (full, liver):
        spec.validate(adata)
        assert spec.conditions(adata) == ["TCDD"] and spec.doses(adata) == [0.3, 30.0]
    assert "B Cells" in spec.cell_types(full)
    assert spec.cell_types(liver) == sorted(NAULT2021_LIVER_CELL_TYPES)
    assert liver.n_obs == full.n_obs * 6 // 7
    split = holdout_condition(liver, spec, "TCDD", dose=0.3, min_cells=5)  # interpolation split
    assert len(split.targets) == 6


def test_liver_subset_names_missing_cell_types(tmp_path):
    adata = _nault_like(tmp_path / "nault.h5ad")
    adata[adata.obs["celltype"] != "Cholangiocytes"].write_h5ad(tmp_path / "partial.h5ad")
    with pytest.raises(DataError, match=r"\['Cholangiocytes'\] are not in obs\['celltype'\]"):
        load_dataset("nault2021_liver", path=tmp_path / "partial.h5ad")


def test_hagai_downloads_with_species_as_the_held_out_unit(server, tmp_path):
    """The Hagai entry's keys on a file served locally: species is the held-out unit."""
    keys = DatasetSpec(cell_type_key="species", condition_key="condition", control="unst")
    path = server.root / "hagai.h5ad"
    adata = simulate(n_cell_types=4, n_genes=20, n_cells=12, perturbations=("LPS6",), spec=keys, seed=0)
    adata.obs["species"] = adata.obs["species"].cat.rename_categories(["human", "macaque", "mouse", "rat"])
    adata.write_h5ad(path)
    entry = replace(DATASETS["hagai2018"], url=f"{server.url}/hagai.h5ad", mirrors=(),
                    known_hash="sha256:" + hashlib.sha256(path.read_bytes()).hexdigest())
    loaded = load_dataset(entry, cache_dir=tmp_path / "cache")
    entry.spec.validate(loaded)
    assert server.hits == ["/hagai.h5ad"]
    species = entry.group_keys["species"]
    split = holdout_group(loaded, entry.spec, "rat", group_key=species, min_cells=5)
    assert set(loaded.obs.loc[split.heldout, species]) == {"rat"}
