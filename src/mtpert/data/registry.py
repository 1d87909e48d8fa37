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
        condition_from: ``(obs column, regular expression)`` for a screen whose file labels each
            cell by its guide rather than the guide's target (``'STAT2g2'``): :func:`load_dataset`
            derives ``spec.condition_key`` as that column with the expression's match removed
            (``'STAT2'``), so that the guides of one gene form one condition.
        manual_download: where a person can get the file when there is no ``url``.
        keep: obs column -> the values :func:`load_dataset` keeps, dropping every other cell (a
            study's subset of a shared file, e.g. some cell types, or the untreated cells); each
            value must be present.
        gzipped: the download is gzip-compressed; it is kept in the cache as ``filename + '.gz'``
            (which ``known_hash`` describes) and decompressed to ``filename``.
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
    condition_from: tuple[str, str] | None = None
    manual_download: str | None = None
    keep: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    gzipped: bool = False
    size_mb: float | None = None
    n_cells: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "group_keys", MappingProxyType(dict(self.group_keys)))
        object.__setattr__(self, "keep", MappingProxyType({k: tuple(v) for k, v in self.keep.items()}))
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

    @property
    def download_name(self) -> str:
        """File name of the download in the cache: ``filename``, or ``filename + '.gz'`` if gzipped."""
        return f"{self.filename}.gz" if self.gzipped else self.filename


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
                keep={NAULT2021.spec.cell_type_key: NAULT2021_LIVER_CELL_TYPES},
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
            RemoteDataset(
                name="norman2019",
                # URL: scPerturb's RNA release, Zenodo record 10044268 (sanderlab/scPerturb README,
                # "Where to find the data"). md5: gao-lab/CASCADE, data/download/Norman-2019/README.md
                # (the MD5 column for this URL, accessed Mar 17 2024), the checksum Zenodo lists.
                # obs: sanderlab/scPerturb, dataset_processing/notebooks/data_processing_JS.ipynb
                # (NormanWeissman2019, identify_pert): 'perturbation' is 'control' (two negative-control
                # guides), the activated gene, or 'A_B' for a pair; 'guide_id' the guide pair; 'cell_line'
                # 'K562'; 'gemgroup' the 10x lane. 111,445 cells: the rows of GEO's
                # GSE133344_filtered_cell_identities.csv.gz, the file's obs (shown in the same
                # folder's data_access_and_preprocessing_JS.ipynb).
                url="https://zenodo.org/records/10044268/files/NormanWeissman2019_filtered.h5ad",
                known_hash="md5:c870e6967d91c017d9da827bab183cd6",
                filename="norman2019.h5ad",
                spec=DatasetSpec(
                    cell_type_key="cell_line",
                    condition_key="perturbation",
                    control="control",
                    batch_key="gemgroup",
                    combination_separator="_",
                    guide_key="guide_id",
                ),
                description="K562 CRISPRa Perturb-seq: single genes and pairs ('A_B') activated, "
                "control 'control'; raw counts (scPerturb's harmonized file).",
                citation="Norman, T. M. et al. Exploring genetic interaction manifolds constructed "
                "from rich single-cell phenotypes. Science 365, 786-793 (2019). "
                "doi:10.1126/science.aax4438; harmonized by scPerturb (Peidli, S. et al. Nat. Methods "
                "21, 531-540 (2024))",
                n_cells=111_445,
            ),
            RemoteDataset(
                name="papalexi2021",
                # URL: the same scPerturb release (Zenodo record 10044268). No checksum of this file
                # found in a citable source. obs: sanderlab/scPerturb, data_processing_JS.ipynb
                # (PapalexiSatija2021, eccite): 'perturbation' is the guide ('STAT2g2'), 'control' for
                # non-targeting guides; 'hto' the hashtag (replicate, rep1-tx ... rep4-tx); 'cell_line'
                # 'THP-1'. The guide column 'guide_id' and 20,729 cells: as public scripts that read the
                # record's Papalexi files report them (no repository named by the search index).
                url="https://zenodo.org/records/10044268/files/PapalexiSatija2021_eccite_RNA.h5ad",
                known_hash=None,
                filename="papalexi2021.h5ad",
                spec=DatasetSpec(
                    cell_type_key="cell_line",
                    condition_key="target_gene",
                    control="control",
                    batch_key="hto",
                    guide_key="guide_id",
                ),
                condition_from=("perturbation", r"g\d+$"),
                description="THP-1 ECCITE-seq CRISPR knock-out screen: 25 genes (about 4 guides "
                "each) and non-targeting 'control', replicates in 'hto'; raw counts (scPerturb).",
                citation="Papalexi, E. et al. Characterizing the molecular regulation of inhibitory "
                "immune checkpoints with multimodal single-cell screens. Nat. Genet. 53, 322-331 "
                "(2021). doi:10.1038/s41588-021-00778-2; harmonized by scPerturb (Peidli, S. et al. "
                "Nat. Methods 21, 531-540 (2024))",
                n_cells=20_729,
            ),
            RemoteDataset(
                name="mcfaline2023",
                # scPerturb has no finished file of this study (its McFalineTrapnell2023 workflow
                # stops at unlabelled counts). URL: altoslabs/perturbench,
                # src/perturbench/data/accessors/mcfaline23.py (dataset_hf_url), perturbench's
                # curation of GEO GSE225775 (notebooks/neurips2024/data_curation/
                # curate_McFalineFigueroa23_step1.R, _step2.py): obs 'condition' is the CRISPRi target
                # ('control' for NTC/random guides, single targets only), 'cell_type' a172/t98g/u87mg,
                # 'treatment' 'none' or a drug; X log1p(normalize_total) of ~4,000 HVGs and DEGs, raw
                # counts in layers['counts'] (analysis/preprocess.py). No published checksum found.
                url="https://huggingface.co/datasets/altoslabs/perturbench/resolve/main/"
                "mcfaline23_gxe_processed.h5ad.gz",
                known_hash=None,
                gzipped=True,
                filename="mcfaline2023.h5ad",
                spec=DatasetSpec(cell_type_key="cell_type", condition_key="condition", control="control"),
                keep={"treatment": ("none",)},
                description="Glioblastoma lines A172, T98G, U87MG with CRISPRi knock-downs of kinases "
                "(sci-Plex-GxE), untreated cells only; X log-normalized, counts in layers['counts'] "
                "(perturbench's file).",
                citation="McFaline-Figueroa, J. L. et al. Multiplex single-cell chemical genomics "
                "reveals the kinase dependence of the response to targeted therapy. Cell Genomics 4, "
                "100487 (2024). doi:10.1016/j.xgen.2023.100487; curated by PerturBench (Wu, Y. et al. "
                "arXiv:2408.10609 (2024))",
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
                    fname=entry.download_name,
                    path=cache,
                    processor=pooch.Decompress(method="gzip", name=entry.filename) if entry.gzipped else None,
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
    """``adata`` restricted to the cells with the values of ``entry.keep`` (a copy), or unchanged
    if it keeps everything."""
    if not entry.keep:
        return adata
    kept = np.ones(adata.n_obs, dtype=bool)
    for key, values in entry.keep.items():
        if key not in adata.obs.columns:
            raise DataError(f"'{entry.name}' keeps some values of obs['{key}'], but the file has no such column; "
                            f"its obs columns: {list(adata.obs.columns)}.")
        present = adata.obs[key].astype(str)
        missing = sorted(set(values) - set(present))
        if missing:
            raise DataError(
                f"'{entry.name}' keeps {list(values)} of obs['{key}'], but {missing} are not in "
                f"obs['{key}'] (it has {sorted(present.unique())}). Is this the right file?"
            )
        kept &= present.isin(values).to_numpy()
    return adata[kept].copy()


def _derive_condition(adata: AnnData, entry: RemoteDataset) -> None:
    """Add ``spec.condition_key`` where the file has no such column: from the dose, for a dose
    series (``entry.perturbation``), or from another label (``entry.condition_from``).

    Does nothing if the file has the column already, or lacks the column it is derived from
    (which ``spec.validate`` then names).
    """
    spec = entry.spec
    columns = adata.obs.columns
    if spec.condition_key in columns:
        return
    if entry.condition_from is not None and entry.condition_from[0] in columns:
        source, pattern = entry.condition_from
        adata.obs[spec.condition_key] = pd.Categorical(
            adata.obs[source].astype(str).str.replace(pattern, "", regex=True)
        )
    elif entry.perturbation is not None and spec.dose_key in columns:
        is_control = np.isclose(adata.obs[spec.dose_key].to_numpy(dtype=float), spec.control_dose)
        adata.obs[spec.condition_key] = pd.Categorical(
            np.where(is_control, spec.control, entry.perturbation),
            categories=[spec.control, entry.perturbation],
        )
