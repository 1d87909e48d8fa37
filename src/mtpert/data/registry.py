"""Public datasets: one table of where each file lives, its checksum and its obs keys.

:func:`load_dataset` downloads a registered h5ad once into a cache directory, checks it against
the checksum recorded here, and reads it; a file whose checksum does not match is discarded, never
loaded. Offline, or for a dataset with no direct download, pass a local copy with ``path=``.
The cache directory is ``$MTPERT_CACHE_DIR`` if set, else the user cache (``pooch.os_cache``).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType

import anndata as ad
import numpy as np
import pandas as pd
import pooch
from anndata import AnnData

from mtpert.data.spec import DatasetSpec
from mtpert.errors import DataError, DatasetUnavailableError

CACHE_ENV = "MTPERT_CACHE_DIR"
"""Environment variable that overrides the cache directory."""


@dataclass(frozen=True)
class RemoteDataset:
    """One public h5ad file: where to download it, how to verify it, and its obs keys.

    Attributes:
        name: registry key, e.g. ``'kang2018'``.
        url: direct download URL, or None where no direct public download exists; the file must
            then be obtained by hand (see ``manual_download``) and passed with ``path=``.
        known_hash: checksum in pooch's form (``'sha256:<hex>'`` or ``'md5:<hex>'``), copied from a
            published source. None where no published checksum was found: the download is then
            unverified, and :func:`load_dataset` warns and prints its sha256 so it can be pinned.
        filename: file name in the cache directory.
        spec: obs keys and control label of the file.
        description: one line on what the file holds.
        citation: the paper to cite.
        mirrors: further URLs serving the same bytes, tried in order if ``url`` fails. Only
            allowed with a ``known_hash``, which guarantees every mirror gives the same file.
        group_keys: obs columns of groupings the spec has no field for yet, by role
            (e.g. ``{'species': 'species'}``).
        perturbation: for a dose series stored without a condition column: the label
            :func:`load_dataset` gives non-control cells in a derived ``spec.condition_key`` column
            (cells at ``spec.control_dose`` get ``spec.control``).
        manual_download: where a person can get the file when there is no ``url``.
        cell_types: if given, :func:`load_dataset` keeps only cells of these values of
            ``spec.cell_type_key`` (a study's subset of a shared file; each must be present).
        size_mb: download size in megabytes, where known.
        n_cells: number of cells, where known.
    """

    name: str
    url: str | None
    known_hash: str | None
    filename: str
    spec: DatasetSpec
    description: str
    citation: str
    mirrors: tuple[str, ...] = ()
    group_keys: Mapping[str, str] = field(default_factory=dict)
    perturbation: str | None = None
    manual_download: str | None = None
    cell_types: tuple[str, ...] = ()
    size_mb: float | None = None
    n_cells: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "group_keys", MappingProxyType(dict(self.group_keys)))
        if self.url is None and not self.manual_download:
            raise ValueError(
                f"RemoteDataset '{self.name}': give a url or say where to get it (manual_download)."
            )
        if self.mirrors and (self.url is None or self.known_hash is None):
            raise ValueError(
                f"RemoteDataset '{self.name}': mirrors need a url and a known_hash to check them."
            )

    @property
    def urls(self) -> tuple[str, ...]:
        """Every download URL, in the order tried."""
        return () if self.url is None else (self.url, *self.mirrors)


NAULT2021 = RemoteDataset(
    name="nault2021",
    # No direct public h5ad found. scVIDR (BhattacharyaLab/scVIDR, README.md "Data") ships
    # nault2021_multiDose.h5ad in a Google Drive data.zip; its tutorials read obs 'celltype' and a
    # numeric 'Dose' (0 = vehicle) and no condition column. Raw data: GEO GSE184506 (scVIDR
    # docs/tutorials/tutorials-introduction.md).
    url=None,
    known_hash=None,
    filename="nault2021_multiDose.h5ad",
    spec=DatasetSpec(
        cell_type_key="celltype", condition_key="condition", control="control", dose_key="Dose"
    ),
    perturbation="TCDD",
    description="Mouse liver snRNA-seq, vehicle or TCDD at 8 doses 0.01-30 ug/kg "
    "(scVIDR's nault2021_multiDose.h5ad).",
    citation="Nault, R. et al. Single-cell transcriptomics shows dose-dependent disruption of "
    "hepatic zonation by TCDD in mice. Toxicol. Sci. (2023), PMC9887712; as processed for scVIDR "
    "(Kana et al. 2023).",
    manual_download="nault2021_multiDose.h5ad in scVIDR's data.zip, "
    "https://drive.google.com/file/d/11fzDbp0B19Dy47MtD742Jl4Hz2bdSiiq/view",
)

NAULT2021_LIVER_CELL_TYPES = (
    "Hepatocytes - central",
    "Hepatocytes - portal",
    "Cholangiocytes",
    "Stellate Cells",
    "Portal Fibroblasts",
    "Endothelial Cells",
)
"""The liver (non-immune) cell types of Nault 2021 that the thesis' "liver cell types" evaluation
keeps, as scVIDR's dose-response analysis does (scVIDR docs/tutorials/Figure3.md: immune cells
removed, these six kept)."""


DATASETS: Mapping[str, RemoteDataset] = MappingProxyType(
    {
        d.name: d
        for d in (
            RemoteDataset(
                name="kang2018",
                # URL: pertpy, pertpy/data/_datasets.py (kang_2018). Mirror: figshare file 34464122,
                # the URL the same pertpy loader used before, on figshare's download host.
                # sha256: Numi2/numiVivo, Tools/Omics/Benchmarks/run_kang.py (for the figshare file,
                # with shape 24,673 x 15,706 and obs label/replicate/cell_type); the same digest is
                # recorded for the scverse URL by another project's fetch script.
                url="https://exampledata.scverse.org/pertpy/kang_2018.h5ad",
                mirrors=("https://ndownloader.figshare.com/files/34464122",),
                known_hash="sha256:e6a5adac64dcdeb36eaba27db49b63e0c64bb0ed4a64c6705971506b41c39830",
                filename="kang2018.h5ad",
                spec=DatasetSpec(
                    cell_type_key="cell_type",
                    condition_key="label",
                    control="ctrl",
                    batch_key="replicate",
                ),
                description="PBMCs of 8 donors, control ('ctrl') or IFN-beta 6 h ('stim'); "
                "8 cell types; raw counts.",
                citation="Kang, H. M. et al. Multiplexed droplet single-cell RNA-sequencing using "
                "natural genetic variation. Nat. Biotechnol. 36, 89-94 (2018). "
                "doi:10.1038/nbt.4042",
                size_mb=38.4,
                n_cells=24_673,
            ),
            NAULT2021,
            replace(
                NAULT2021,
                name="nault2021_liver",
                cell_types=NAULT2021_LIVER_CELL_TYPES,
                description="Nault 2021 restricted to its six liver (non-immune) cell types: "
                + ", ".join(NAULT2021_LIVER_CELL_TYPES)
                + " (same file as nault2021).",
            ),
            RemoteDataset(
                name="hagai2018",
                # URL: pertpy, pertpy/data/_datasets.py (hagai_2018: figshare file 46978846), on
                # figshare's download host. Mirror: the scverse copy pertpy uses now.
                # sha256: Numi2/numiVivo, Tools/Omics/Benchmarks/audit_hagai.py (for the figshare
                # file, which it notes holds normalized, non-integer X and no counts layer).
                url="https://ndownloader.figshare.com/files/46978846",
                mirrors=("https://exampledata.scverse.org/pertpy/hagai_2018.h5ad",),
                known_hash="sha256:41b98069fe5d88193cec2b1dcb0eb43843e4de83c8aa22ea29cef1bb65ba064e",
                filename="hagai2018.h5ad",
                spec=DatasetSpec(
                    cell_type_key="species", condition_key="condition", control="unst"
                ),
                group_keys={"species": "species"},
                description="Bone-marrow phagocytes of four species, unstimulated ('unst') or LPS "
                "6 h; the species is the held-out unit; X is normalized, not counts.",
                citation="Hagai, T. et al. Gene expression variability across cells and species "
                "shapes innate immunity. Nature 563, 197-202 (2018). doi:10.1038/s41586-018-0657-2",
            ),
        )
    }
)


def list_datasets() -> pd.DataFrame:
    """One row per registered dataset: what it is, its size, whether its download is verified."""
    rows = [
        {
            "name": d.name,
            "description": d.description,
            "n_cells": d.n_cells,
            "size_mb": d.size_mb,
            "checksum": "verified" if d.known_hash else "none published",
            "download": d.url or "manual (load_dataset(name, path=...))",
            "citation": d.citation,
        }
        for d in DATASETS.values()
    ]
    return pd.DataFrame(rows).set_index("name")


def load_dataset(
    dataset: str | os.PathLike[str] | RemoteDataset,
    *,
    path: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> AnnData:
    """Read a registered dataset (downloading and verifying it on first use) or a local h5ad.

    Args:
        dataset: a registered name (see :func:`list_datasets`), a :class:`RemoteDataset`, or the
            path of an existing ``.h5ad`` file, which is simply read.
        path: a local copy of the registered dataset to read instead of downloading it.
        cache_dir: where downloads are kept; default ``$MTPERT_CACHE_DIR`` or the user cache.

    Raises:
        DatasetUnavailableError: the download failed or did not match its checksum; the message
            names the URL, the cache path and how to pass a local file instead.
        DataError: an unknown name, or a file that is not a readable h5ad.
    """
    if isinstance(dataset, RemoteDataset):
        entry = dataset
    elif os.fspath(dataset) in DATASETS:
        entry = DATASETS[os.fspath(dataset)]
    elif Path(dataset).is_file():
        return read_h5ad(Path(dataset))
    else:
        raise DataError(
            f"'{os.fspath(dataset)}' is neither a registered dataset nor an existing file. "
            f"Registered: {sorted(DATASETS)}; or pass the path of an .h5ad file."
        )
    if path is not None:
        if not Path(path).is_file():
            raise DataError(f"path={os.fspath(path)!r} is not an existing file.")
        adata = read_h5ad(Path(path))
    else:
        adata = read_h5ad(_fetch(entry, _cache_dir(cache_dir)))
    _derive_condition(adata, entry)
    return _subset(adata, entry)


def _cache_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    return Path(cache_dir or os.environ.get(CACHE_ENV) or pooch.os_cache("mtpert"))


def download_dataset(
    dataset: str | RemoteDataset, *, cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Path of registered ``dataset`` in the cache, downloaded first if it is missing or does not
    match its checksum (see :func:`load_dataset`, which reads it).

    Raises:
        DatasetUnavailableError: the download failed or did not match its checksum, or the
            dataset has no direct download; the message says where to put a copy instead.
        DataError: ``dataset`` is not a registered name.
    """
    if isinstance(dataset, RemoteDataset):
        return _fetch(dataset, _cache_dir(cache_dir))
    if dataset not in DATASETS:
        raise DataError(f"'{dataset}' is not a registered dataset; registered: {sorted(DATASETS)}.")
    return _fetch(DATASETS[dataset], _cache_dir(cache_dir))


def _fetch(entry: RemoteDataset, cache: Path) -> Path:
    """Path of the verified file in ``cache``, downloading it first if it is missing or stale."""
    target = cache / entry.filename
    instead = (
        f"or pass your own copy: load_dataset('{entry.name}', path='/path/to/file.h5ad') "
        "(CLI: give the file path in place of the dataset name)"
    )
    if not entry.urls:
        if target.is_file():
            return _verified(target, entry)
        raise DatasetUnavailableError(
            f"Dataset '{entry.name}' has no direct download; get it from "
            f"{entry.manual_download}, then put it at {target} (where it is looked for), {instead}."
        )
    fresh = not target.is_file()
    failures: dict[str, list[str]] = {}  # reason -> the URLs that failed for it
    for url in entry.urls:
        try:
            file = Path(
                pooch.retrieve(
                    url,
                    known_hash=entry.known_hash,
                    fname=entry.filename,
                    path=cache,
                    progressbar=_progressbar(),
                )
            )
        except (ValueError, OSError) as exc:  # checksum mismatch, bad URL; offline, refused, HTTP error
            failures.setdefault(_failure_reason(exc), []).append(url)
        else:
            if entry.known_hash is None and fresh:
                _warn_unverified(entry, file)
            return file
    reasons = "; ".join(f"{reason} ({', '.join(urls)})" for reason, urls in failures.items())
    raise DatasetUnavailableError(
        f"Could not download dataset '{entry.name}': {reasons}. Put a copy of the file at {target} "
        f"(it is then used without downloading), {instead}."
    )


def _failure_reason(error: ValueError | OSError) -> str:
    """What went wrong with one download, in a few words (requests' and urllib3's own messages
    run to several lines of connection-pool detail)."""
    import requests  # pooch's downloader; imported by pooch only when downloading, so here too

    if isinstance(error, ValueError):
        if "known hash" in str(error):  # pooch deleted the download
            return "the server sent a file that does not match the recorded checksum (an error page?); it was discarded"
        return str(error)
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return f"HTTP error {error.response.status_code} {error.response.reason}"
    if isinstance(error, requests.Timeout):
        return "the server did not answer in time"
    if isinstance(error, requests.ConnectionError):
        return "no connection to the server (offline, or the server refused it)"
    if error.filename is not None:  # a local error, e.g. a cache folder that cannot be written
        return f"{error.strerror or type(error).__name__}: {error.filename}"
    return type(error).__name__


def _verified(file: Path, entry: RemoteDataset) -> Path:
    """``file`` if it matches ``entry.known_hash`` (or there is none), else an error naming both."""
    if entry.known_hash is None:
        return file
    algorithm, _, expected = entry.known_hash.rpartition(":")
    actual = pooch.file_hash(str(file), alg=algorithm or "sha256")
    if actual != expected.lower():
        raise DatasetUnavailableError(
            f"{file} does not match the recorded checksum of '{entry.name}' ({entry.known_hash}; "
            f"the file has {algorithm or 'sha256'}:{actual}). Replace it with the published file, "
            f"or pass your own copy: load_dataset('{entry.name}', path=...)."
        )
    return file


def _warn_unverified(entry: RemoteDataset, file: Path) -> None:
    digest = pooch.file_hash(str(file), alg="sha256")
    warnings.warn(
        f"Dataset '{entry.name}' has no published checksum, so the download {file} is "
        f"unverified; its sha256 is {digest}. Check it against the source before trusting it.",
        UserWarning,
        stacklevel=4,
    )


def _progressbar() -> bool:
    """Whether pooch draws a download bar: only on a terminal (in a log file its redraws are
    noise) and where tqdm, which draws it, is installed."""
    return sys.stderr.isatty() and importlib.util.find_spec("tqdm") is not None


def read_h5ad(file: str | os.PathLike[str]) -> AnnData:
    """``anndata.read_h5ad``, with a file that is not a readable h5ad (truncated, another HDF5
    file, text) refused by a :class:`DataError` naming it, whatever the reader raised."""
    try:
        return ad.read_h5ad(file)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 (h5py and anndata raise OSError, KeyError, TypeError... on bad files)
        raise DataError(
            f"Could not read {os.fspath(file)} as an .h5ad file ({type(exc).__name__}: {exc}); is it whole, and an "
            "AnnData file? If it is a download in the mtpert cache, delete it and load the dataset again."
        ) from None


def _subset(adata: AnnData, entry: RemoteDataset) -> AnnData:
    """``adata`` restricted to ``entry.cell_types`` (a copy), or unchanged if there are none."""
    if not entry.cell_types:
        return adata
    key = entry.spec.cell_type_key
    if key not in adata.obs.columns:
        raise DataError(f"'{entry.name}' keeps some values of obs['{key}'], but the file has no such column; "
                        f"its obs columns: {list(adata.obs.columns)}.")
    present = adata.obs[key].astype(str)
    missing = sorted(set(entry.cell_types) - set(present))
    if missing:
        raise DataError(
            f"'{entry.name}' keeps cell types {list(entry.cell_types)}, but {missing} are not in "
            f"obs['{key}'] (it has {sorted(present.unique())}). Is this the right file?"
        )
    return adata[present.isin(entry.cell_types).to_numpy()].copy()


def _derive_condition(adata: AnnData, entry: RemoteDataset) -> None:
    """Add ``spec.condition_key`` from the dose, for dose series stored without a condition column.

    Does nothing if the file has the column already, or lacks the dose column (which
    ``spec.validate`` then names).
    """
    spec = entry.spec
    columns = adata.obs.columns
    if entry.perturbation is None or spec.condition_key in columns or spec.dose_key not in columns:
        return
    is_control = np.isclose(adata.obs[spec.dose_key].to_numpy(dtype=float), spec.control_dose)
    adata.obs[spec.condition_key] = pd.Categorical(
        np.where(is_control, spec.control, entry.perturbation),
        categories=[spec.control, entry.perturbation],
    )
