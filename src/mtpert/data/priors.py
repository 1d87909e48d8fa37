"""Prior regulatory networks: read a TF -> target table and match it to a dataset's genes.

A prior network is prior knowledge (DoRothEA, CollecTRI, ...), not data: a table with one row per
regulator -> target edge and a signed weight (+1 activation, -1 repression). GRN-aligned models
(:class:`mtpert.models.sams.SamsVAE` with ``alignment='prior'``) push their learned graph towards
it. Such tables name genes by symbol and are incomplete: a missing edge is no evidence that a
regulation is absent, and symbols may differ in case between resources (``Stat1`` vs ``STAT1``),
so genes are matched case-insensitively and the reader reports how much of the table the data
can use.
"""

from __future__ import annotations

import lzma
import os
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from anndata import AnnData

from mtpert.errors import DataError

COLUMNS: dict[str, tuple[str, ...]] = {
    "source": ("source", "tf", "regulator", "from", "source_genesymbol"),
    "target": ("target", "gene", "to", "target_genesymbol"),
    "weight": ("weight", "mor", "sign", "mode", "likelihood"),
}
"""Accepted header names (case-insensitive) of each column, first match wins; ``weight`` is
optional (1.0 when absent)."""


@dataclass(frozen=True)
class PriorNetwork:
    """A prior network matched to a dataset's genes.

    Attributes:
        edges: one row per edge read: ``source``, ``target`` (symbols as in the file), ``weight``,
            and ``source_gene`` / ``target_gene``, the matching name in the data's genes (None
            where the data lacks the gene, or when no genes were given).
        n_edges: edges read (repeats of a pair, in any letter case, dropped).
        n_touching: edges with at least one end among the data's genes.
        n_within: edges with both ends among the data's genes.
    """

    edges: pd.DataFrame
    n_edges: int
    n_touching: int
    n_within: int

    def within(self) -> pd.DataFrame:
        """The edges whose two ends are among the data's genes, named by the data's genes:
        ``source``, ``target``, ``weight``."""
        inside = self.edges.dropna(subset=["source_gene", "target_gene"])
        return pd.DataFrame(
            {
                "source": inside["source_gene"].to_numpy(dtype=object),
                "target": inside["target_gene"].to_numpy(dtype=object),
                "weight": inside["weight"].to_numpy(dtype=float),
            }
        )

    def summary(self) -> str:
        """One line saying how much of the table the data can use."""
        return (
            f"{self.n_edges} prior edges; {self.n_touching} touch the data's genes, "
            f"{self.n_within} have both ends among them"
        )


def read_prior(
    path: str | os.PathLike[str], genes: AnnData | Iterable[str] | None = None
) -> PriorNetwork:
    """Read a TF -> target table (tsv or csv, optionally gzipped) and match it to ``genes``.

    Args:
        path: the table; its header names a source, a target and optionally a weight column
            (see :data:`COLUMNS`; e.g. ``source``/``target``/``weight`` as in DoRothEA and
            CollecTRI exports). Other columns are ignored.
        genes: the data's genes (an AnnData's ``var_names``, or names); symbols are matched
            case-insensitively. None: no matching (every edge is kept, none is "within").

    Raises:
        DataError: the file is missing, unreadable, empty, lacks a source or target column, has
            non-numeric weights, or (with ``genes``) no edge touches the data's genes.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Prior network {path} not found.")
    sep = "," if path.name.removesuffix(".gz").endswith(".csv") else "\t"
    try:
        table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except (
        (OSError, ValueError, EOFError)  # unreadable, not text, cut short
        + (zlib.error, lzma.LZMAError, zipfile.BadZipFile)  # damaged compressed data
        + (ImportError,)  # pandas lacks the decompressor the file's suffix calls for
    ) as error:
        raise DataError(
            f"Prior network {path} cannot be read as a table ({error}). Give a tab-separated text "
            "file (comma-separated if named .csv), gzipped or not; a compressed file that is "
            "damaged or cut short must be downloaded or copied again."
        ) from error
    found = _columns(table, path)
    edges = pd.DataFrame(
        {
            "source": table[found["source"]].str.strip(),
            "target": table[found["target"]].str.strip(),
            "weight": table[found["weight"]] if "weight" in found else "1",
        }
    )
    edges = edges[(edges["source"] != "") & (edges["target"] != "")]
    try:
        edges["weight"] = pd.to_numeric(edges["weight"])
    except ValueError as error:
        raise DataError(f"Prior network {path}: column '{found['weight']}' must be numeric ({error}).") from None
    same = edges[["source", "target"]].apply(lambda c: c.str.upper())  # symbols ignore case
    edges = edges[~same.duplicated()].reset_index(drop=True)
    if edges.empty:
        raise DataError(f"Prior network {path} has no edges.")
    if genes is None:
        edges["source_gene"] = edges["target_gene"] = None
        return PriorNetwork(edges, len(edges), 0, 0)
    names = list(genes.var_names if isinstance(genes, AnnData) else genes)
    lookup: dict[str, str] = {}
    for name in map(str, names):
        lookup.setdefault(name.upper(), name)  # the first spelling wins where two differ by case only
    for end in ("source", "target"):
        matched = edges[end].str.upper().map(lookup).astype(object)
        edges[f"{end}_gene"] = matched.where(matched.notna(), None)
    has_source, has_target = edges["source_gene"].notna(), edges["target_gene"].notna()
    touching, within = int((has_source | has_target).sum()), int((has_source & has_target).sum())
    if touching == 0:
        raise DataError(
            f"No edge of the prior network {path} ({len(edges)} edges, e.g. "
            f"{edges['source'].iloc[0]} -> {edges['target'].iloc[0]}) touches the data's "
            f"{len(names)} genes (e.g. {names[:3]}); is it of another species or naming scheme?"
        )
    return PriorNetwork(edges, len(edges), touching, within)


def _columns(table: pd.DataFrame, path: Path) -> dict[str, str]:
    """The header name of each column of :data:`COLUMNS` that ``table`` has."""
    lower = {str(c).strip().lower(): str(c) for c in table.columns}
    found = {
        role: next(lower[a] for a in aliases if a in lower)
        for role, aliases in COLUMNS.items()
        if any(a in lower for a in aliases)
    }
    missing = [role for role in ("source", "target") if role not in found]
    if missing:
        raise DataError(
            f"Prior network {path} lacks a {' and a '.join(missing)} column; its header is "
            f"{list(table.columns)}. Name the regulator column one of {COLUMNS['source']} and the "
            f"target column one of {COLUMNS['target']} (tab-separated, or comma-separated for .csv)."
        )
    return found
