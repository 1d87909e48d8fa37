"""A benchmark directory's finished runs as one table, and back.

The run store (``DIR/runs/<id>.parquet``, see :mod:`mtpert.benchmark.store`) keeps one file per
finished run, so that a grid resumes run by run; that suits a machine running the grid, not a
repository keeping its results. :func:`pack_runs` writes them as one table, ``DIR/runs.parquet``,
and :func:`unpack_runs` recreates each run file from it, so that ``mtpert benchmark --out DIR``
finds those runs done and ``mtpert report DIR`` rebuilds the report.

Packing is lossless: run files may have different columns (the store added columns over time,
e.g. ``hparams`` and ``run_slot``; old files lack them) and types (``dose`` is all-null in a
study without doses). The packed table is their union, with missing values where a run lacks a
column; each run's own Arrow schema (its columns in order, their types and the pandas metadata)
and its rows are recorded in the packed file's key-value metadata (each distinct schema once), and unpacking casts each run's
rows back to it, so the file it writes reads back as the original did.
"""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mtpert.benchmark.store import _read_run
from mtpert.errors import ConfigError, DataError
from mtpert.io import atomic_path
from mtpert.lock import output_lock

PACKED = "runs.parquet"
"""The packed table's file name, beside the store's ``runs/``."""

RUNS_KEY = b"mtpert_runs"
"""Key of the packed file's metadata: ``{"schemas": [...], "runs": [...]}``, each distinct Arrow
schema of the run files once (a grid's hundreds of runs share a handful), and each run's file
name, rows and the index of its schema."""

RUN_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\.parquet")
"""What a run file's name may be: a run id and ``.parquet``, never a path."""


def pack_runs(root: str | os.PathLike[str]) -> Path:
    """Write ``root/runs.parquet`` from every run file in ``root/runs/`` and return its path.

    Refuses a run file that does not read back whole (the store would redo its run) or that is
    CSV (written without pyarrow; it has no Arrow schema to keep): packing must not hide either.
    """
    root = Path(root)
    with output_lock(root):  # not while a benchmark writes into it
        return _pack(root)


def _pack(root: Path) -> Path:
    files = sorted((root / "runs").glob("*.parquet"))
    csv = sorted((root / "runs").glob("*.csv"))
    if csv:
        raise ConfigError(
            f"{root / 'runs'} holds CSV run files ({csv[0].name}, ...); packing keeps parquet runs only. "
            "Rerun the benchmark with pyarrow installed, or pack another directory."
        )
    if not files:
        raise FileNotFoundError(f"No run files in {root / 'runs'}; run `mtpert benchmark --out {root}` first.")
    tables, runs, schemas = [], [], {}
    for file in files:
        _, problem = _read_run(file)
        if problem is not None:
            raise DataError(f"Run file {file} {problem}; rerun `mtpert benchmark --out {root}` to redo it, then pack.")
        table = pq.read_table(file)
        tables.append(table)
        schema = schemas.setdefault(_encode(table.schema), len(schemas))
        runs.append({"file": file.name, "rows": table.num_rows, "schema": schema})
    packed = pa.concat_tables([t.replace_schema_metadata(None) for t in tables], promote_options="permissive")
    listing = {"schemas": list(schemas), "runs": runs}  # dicts keep the order of the indices
    packed = packed.replace_schema_metadata({RUNS_KEY: json.dumps(listing).encode()})
    target = root / PACKED
    with atomic_path(target) as tmp:
        pq.write_table(packed, tmp)
    return target


def unpack_runs(root: str | os.PathLike[str]) -> list[Path]:
    """Recreate ``root/runs/<id>.parquet`` for every run in ``root/runs.parquet``; return the
    files written. A run file already there is left as it is: it is the run store's own, maybe
    newer than the packed table."""
    root = Path(root)
    with output_lock(root):  # not while a benchmark writes into it
        return _unpack(root)


def _unpack(root: Path) -> list[Path]:
    source = root / PACKED
    if not source.is_file():
        raise FileNotFoundError(f"No packed runs {source}; pack a run store with `mtpert study pack {root}`.")
    try:
        packed = pq.read_table(source)
    except (OSError, pa.ArrowException) as error:
        raise DataError(
            f"{source} cannot be read ({type(error).__name__}); it was cut short or replaced. Take it "
            "from git again, or pack the run store again."
        ) from error
    written, start = [], 0
    for name, count, schema in _runs(packed, source):
        rows = packed.slice(start, count)
        start += count
        target = root / "runs" / name
        if target.exists():
            continue
        table = _restore(rows, schema)
        with atomic_path(target) as tmp:
            pq.write_table(table, tmp)
        written.append(target)
    if start != packed.num_rows:
        raise DataError(f"{source} has {packed.num_rows} rows but its runs account for {start}; it was edited. Pack it again.")
    return written


def run_stores(path: str | os.PathLike[str], packed: bool) -> list[Path]:
    """The run stores at or under ``path``: folders holding ``runs/`` (``packed=False``) or a
    packed ``runs.parquet`` (``packed=True``), in order."""
    path = Path(path)
    if packed:
        return sorted(p.parent for p in path.rglob(PACKED))
    return sorted(p.parent for p in path.rglob("runs") if p.is_dir())


def _restore(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    """``rows`` of the packed table as their run file had them: its columns, in its order and
    types (a column all-null in that run, such as ``dose``, is of type null there)."""
    columns = [
        pa.nulls(rows.num_rows) if field.type == pa.null() else rows.column(field.name).cast(field.type)
        for field in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def _encode(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def _runs(packed: pa.Table, source: Path) -> list[tuple[str, int, pa.Schema]]:
    """Each run the packed table lists, in its order: file name, rows and Arrow schema."""
    metadata = packed.schema.metadata or {}
    if RUNS_KEY not in metadata:
        raise DataError(f"{source} was not written by `mtpert study pack` (it lists no runs); pack the run store again.")
    try:
        listing = json.loads(metadata[RUNS_KEY])
        schemas = [pa.ipc.read_schema(pa.py_buffer(base64.b64decode(s))) for s in listing["schemas"]]
        runs = [(run["file"], int(run["rows"]), schemas[int(run["schema"])]) for run in listing["runs"]]
    except (ValueError, TypeError, KeyError, IndexError, pa.ArrowException) as error:
        raise DataError(f"{source} has a damaged list of runs ({error!r}); pack the run store again.") from None
    unsafe = [name for name, _, _ in runs if not isinstance(name, str) or not RUN_FILE.fullmatch(name)]
    if unsafe:  # a name with a path would write outside runs/
        raise DataError(
            f"{source} names run files that are not plain run-file names ({unsafe[:3]}); it was not "
            "written by `mtpert study pack`. Pack the run store again."
        )
    return runs
