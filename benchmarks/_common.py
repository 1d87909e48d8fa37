"""What every benchmark script needs: where the shared data is, and how to record a run.

Each script lives in its study's folder (``benchmarks/<study>/``) and writes its results there,
beside itself; it finds this module with ``sys.path.insert(0, <benchmarks/>)``.
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import anndata as ad
import pandas as pd

from mtpert.io import atomic_write, write_table

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
RESULTS = Path(sys.argv[0]).resolve().parent
"""The study folder of the script being run: where its results are written."""


def kang_path() -> Path:
    """The shared Kang 2018 subset: ``$MTPERT_DATA_DIR`` or ``../shared/data`` beside the repo."""
    data_dir = Path(os.environ.get("MTPERT_DATA_DIR", REPO.parent / "shared" / "data"))
    path = data_dir / "kang2018_pbmc_ifnb_2k.h5ad"
    if not path.is_file():
        sys.exit(f"{path} not found; set MTPERT_DATA_DIR to the folder holding kang2018_pbmc_ifnb_2k.h5ad.")
    return path


def load_kang() -> ad.AnnData:
    return ad.read_h5ad(kang_path())


def commit() -> str:
    """Short hash of the checked-out commit, or 'unknown' outside a git checkout."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def provenance(command: str, seconds: float) -> str:
    """Markdown lines saying how, when and where a result was produced."""
    return (
        f"- command: `{command}`\n"
        f"- commit: {commit()}; run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {seconds:.0f} s wall\n"
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}\n"
    )


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB.

    Reads ``VmHWM`` from /proc (Linux): ``getrusage``'s ``ru_maxrss`` survives ``exec``, so a
    worker started by a large parent would report the parent's peak. Elsewhere, ``ru_maxrss``.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pinned_command() -> str:
    """This script's command line as the README gives it: pinned to core 1 at low priority."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(REPO) if script.is_relative_to(REPO) else script
    return " ".join(["taskset -c 1 nice -n 10 python", str(shown), *sys.argv[1:]])


def record(name: str, table: pd.DataFrame, report: Callable[[str, float], str], start: float) -> str:
    """The end of a benchmark script: ``<study>/<name>.csv`` (the table, written first, so a
    failing report loses no number), then ``<study>/<name>.md`` from ``report(command,
    seconds)`` with :func:`pinned_command` and the seconds since ``start``, both atomically;
    prints the report and returns it."""
    write_table(table, RESULTS / f"{name}.csv")
    text = report(pinned_command(), time.perf_counter() - start)
    atomic_write(RESULTS / f"{name}.md", lambda f: f.write(text.encode()))
    print(text)
    return text
