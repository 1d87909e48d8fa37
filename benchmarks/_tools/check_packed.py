"""Check that every packed study table holds the run files it replaced, value for value.

For each packed run store under benchmarks/ (``runs.parquet``), unpack it into a temporary folder
and compare every run file with the original one committed at REV (default HEAD) under
``benchmarks/results/<store folder name>/runs/`` (where run files lived before the studies were
packed): the same runs, the same columns in the same order with the same dtypes, and every value
equal (numeric columns: largest absolute difference reported, at most 1e-12; others: equal).
The store must also read the unpacked runs as finished (``ResultStore.results``).

Run from the repository root: python benchmarks/_tools/check_packed.py [--rev REV] [STORE ...]
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from mtpert.benchmark.store import ResultStore
from mtpert.benchmark.studies import PACKED, run_stores, unpack_runs

REPO = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-12


def git(*args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, check=True).stdout


def original_runs(rev: str, name: str) -> dict[str, pd.DataFrame]:
    """The run files of store ``name`` at ``rev``, by file name."""
    folder = f"benchmarks/results/{name}/runs/"
    files = git("ls-tree", "--name-only", f"{rev}:{folder}").decode().split()
    return {f: pd.read_parquet(io.BytesIO(git("show", f"{rev}:{folder}{f}"))) for f in files}


def largest_difference(old: pd.DataFrame, new: pd.DataFrame) -> float:
    """Largest absolute difference over the numeric columns (NaN in both places counts as equal);
    raises AssertionError where columns, dtypes or non-numeric values differ."""
    assert list(old.columns) == list(new.columns), (list(old.columns), list(new.columns))
    assert old.dtypes.equals(new.dtypes), (old.dtypes, new.dtypes)
    worst = 0.0
    for column in old.columns:
        a, b = old[column], new[column]
        if pd.api.types.is_numeric_dtype(a) and not pd.api.types.is_bool_dtype(a):
            x, y = a.to_numpy(float), b.to_numpy(float)
            assert (np.isnan(x) == np.isnan(y)).all(), column
            both = ~np.isnan(x)
            worst = max(worst, float(np.abs(x[both] - y[both]).max(initial=0.0)))
        else:
            assert a.equals(b), column
    return worst


def check(store: Path, rev: str) -> str:
    old = original_runs(rev, store.name)
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / store.name
        copy.mkdir()
        shutil.copy(store / PACKED, copy / PACKED)
        unpack_runs(copy)
        new = {f.name: pd.read_parquet(f) for f in sorted((copy / "runs").glob("*.parquet"))}
        assert sorted(new) == sorted(old), f"{store}: runs differ: {sorted(set(old) ^ set(new))[:5]}"
        worst = max(largest_difference(old[f], new[f]) for f in old)
        assert worst <= TOLERANCE, f"{store}: largest difference {worst}"
        rows = len(ResultStore(copy).results())
    return (
        f"{store.relative_to(REPO)}: {len(new)} runs, {rows} rows, every column and dtype equal; "
        f"largest numeric difference {worst:g}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stores", nargs="*", type=Path, help="packed stores (default: all under benchmarks/)")
    parser.add_argument("--rev", default="HEAD", help="the commit holding the original run files")
    args = parser.parse_args()
    stores = [s.resolve() for s in args.stores] or run_stores(REPO / "benchmarks", packed=True)
    failed = False
    for store in stores:
        try:
            print(check(store, args.rev), flush=True)
        except AssertionError as error:
            failed = True
            print(f"MISMATCH {store}: {error}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
