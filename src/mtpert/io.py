"""Atomic file writing: a crash, a kill or a full disk never leaves a half-written result."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from importlib.util import find_spec
from pathlib import Path
from typing import BinaryIO

import pandas as pd

from mtpert.errors import ConfigError, DiskFullError, MissingDependencyError

TEMP_PREFIX = ".mtpert-tmp-"
"""Name prefix of :func:`atomic_path`'s temporary files: distinctive, so that cleaning up after a
killed process removes these files and never a user's own dotfiles."""

TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
"""File suffixes :func:`write_table` writes."""

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
"""``errno`` values of a write refused for want of space: the disk, or the user's quota."""


def atomic_write(target: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write`` on a temporary file beside ``target``, then rename it into place."""
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        write(f)
    return Path(target)


def atomic_write_files(
    folder: str | os.PathLike[str], writers: Mapping[str, Callable[[BinaryIO], object]]
) -> Path:
    """Write files that belong together (a model's config and weights) into ``folder``: all of
    them, or none. Each ``writers[name]`` writes file ``name`` to a temporary file; only when all
    are written are they renamed into place, so a failure (a full disk) keeps the files that were
    there whole. A folder created here is removed again if nothing could be written into it."""
    folder = Path(folder)
    created = False
    with disk_full_errors(folder), suppress(FileExistsError):
        folder.mkdir(parents=True)
        created = True
    try:
        with ExitStack() as renames:  # each file is renamed into place when all are written
            for name, write in writers.items():
                with open(renames.enter_context(atomic_path(folder / name)), "wb") as f:
                    write(f)
    except BaseException:
        if created:
            with suppress(OSError):  # not empty: someone else wrote there meanwhile
                folder.rmdir()
        raise
    return folder


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` (for writers that need a file name, e.g. h5ad),
    then rename it into place; on any error the temporary file is removed, and a full disk is
    a :class:`~mtpert.errors.DiskFullError` naming ``target``."""
    target = Path(target)
    with disk_full_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f"{TEMP_PREFIX}{target.name}.")
        os.close(fd)
        tmp = Path(name)
        try:
            yield tmp
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600: give normal permissions
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


@contextmanager
def disk_full_errors(target: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a write refused for want of space, anywhere in the block, into a
    :class:`~mtpert.errors.DiskFullError` naming ``target`` and the fix."""
    try:
        yield
    except Exception as error:
        code = None if isinstance(error, DiskFullError) else _disk_full(error)
        if code is None:
            raise
        raise DiskFullError(
            f"{os.strerror(code)} while writing {target}; free some space there, or write to "
            "another disk. Nothing was left half-written."
        ) from error


def _disk_full(error: BaseException | None) -> int | None:
    """The ``errno`` of a write refused for want of space behind ``error``, or None. Writers
    re-raise it as their own error (torch as a RuntimeError caused by it; HDF5, through h5py,
    as an error whose text holds the C ``errno``), so the chain and the text are searched."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in DISK_FULL:
            return error.errno
        found = [code for code in DISK_FULL if f"errno = {code}," in str(error)]
        if found:
            return found[0]
        error = error.__cause__ or error.__context__
    return None


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
    with atomic_path(target) as tmp:  # by name: pyarrow writes the file itself, not through Python
        table.to_parquet(tmp, index=False)
    return target


def safe_name(label: str) -> str:
    """A file or folder name for ``label`` (a cell type, a condition, a list of models): its
    letters, digits, ``-`` and ``_`` (others become ``_``; at most 40), then 8 hex digits of its
    SHA-256. Distinct labels get distinct names (``T+x`` and ``T_x`` do), and none leaves its
    parent folder (``..`` cannot)."""
    readable = re.sub(r"[^A-Za-z0-9_-]+", "_", str(label))[:40]
    return f"{readable}-{hashlib.sha256(str(label).encode()).hexdigest()[:8]}"
