"""Atomic file writing: a crash or kill mid-write never leaves a half-written result."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import pandas as pd


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
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
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


def write_table(table: pd.DataFrame, target: str | os.PathLike[str]) -> Path:
    """Write ``table`` atomically as CSV or parquet, chosen by the file suffix."""
    target = Path(target)
    suffix = target.suffix.lower()
    if suffix == ".csv":
        return atomic_write(target, lambda f: table.to_csv(f, index=False))
    if suffix in (".parquet", ".pq"):
        return atomic_write(target, lambda f: table.to_parquet(f, index=False))
    raise ValueError(f"Unsupported table format '{suffix}' for {target}; use .csv or .parquet.")
