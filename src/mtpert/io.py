"""Atomic file writing: a crash or kill mid-write never leaves a half-written result."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path
from typing import BinaryIO

import pandas as pd

from mtpert.errors import ConfigError, MissingDependencyError

TEMP_PREFIX = ".mtpert-tmp-"
"""Name prefix of :func:`atomic_path`'s temporary files: distinctive, so that cleaning up after a
killed process removes these files and never a user's own dotfiles."""

TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
"""File suffixes :func:`write_table` writes."""


def atomic_write(target: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write`` on a temporary file beside ``target``, then rename it into place."""
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        write(f)
    return Path(target)


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` (for writers that need a file name, e.g. h5ad),
    then rename it into place; on any error the temporary file is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f"{TEMP_PREFIX}{target.name}.")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def stale_temp_files(folder: Path, *, recursive: bool = False) -> list[Path]:
    """:func:`atomic_path`'s temporary files left in ``folder`` by a killed process (only those)."""
    if not folder.is_dir():
        return []
    found = folder.rglob(f"{TEMP_PREFIX}*") if recursive else folder.glob(f"{TEMP_PREFIX}*")
    return [f for f in found if f.is_file()]


def check_table_target(target: str | os.PathLike[str]) -> Path:
    """Raise :class:`ConfigError` unless :func:`write_table` can write ``target``: a supported
    suffix, not a folder, the writer installed. Call it before the work whose result it receives."""
    target = Path(target)
    suffix = target.suffix.lower()
    if target.is_dir():
        raise ConfigError(f"{target} is a folder; give a file name ending in .csv or .parquet.")
    if suffix not in TABLE_SUFFIXES:
        raise ConfigError(f"Cannot write a table to {target}: unsupported suffix '{suffix}'; use .csv or .parquet.")
    if suffix != ".csv" and find_spec("pyarrow") is None:
        raise MissingDependencyError(f"Writing {target} needs pyarrow: pip install 'mtpert[parquet]', or use .csv.")
    return target


def write_table(table: pd.DataFrame, target: str | os.PathLike[str]) -> Path:
    """Write ``table`` atomically as CSV or parquet, chosen by the file suffix."""
    target = check_table_target(target)
    if target.suffix.lower() == ".csv":
        return atomic_write(target, lambda f: table.to_csv(f, index=False))
    return atomic_write(target, lambda f: table.to_parquet(f, index=False))


def safe_name(label: str) -> str:
    """A file or folder name for ``label`` (a cell type, a condition, a list of models): its
    letters, digits, ``-`` and ``_`` (others become ``_``; at most 40), then 8 hex digits of its
    SHA-256. Distinct labels get distinct names (``T+x`` and ``T_x`` do), and none leaves its
    parent folder (``..`` cannot)."""
    readable = re.sub(r"[^A-Za-z0-9_-]+", "_", str(label))[:40]
    return f"{readable}-{hashlib.sha256(str(label).encode()).hexdigest()[:8]}"
