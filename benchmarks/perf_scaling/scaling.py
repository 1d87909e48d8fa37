"""Training throughput and peak memory vs number of cells, and evaluation time vs cells per target.

Run (one pinned core): taskset -c 1 nice -n 10 python benchmarks/perf_scaling/scaling.py
    [--jobs mtae@10000,mtae@100000,mtae@1000000:backed,scgen@10000,scgen@100000] [--workdir DIR]

Data: simulated log-normalized cells x 2,000 genes (4 cell types, control and stimulated),
written as CSR h5ad files under ``--workdir`` (default /tmp/mtpert_scaling; never the
repository). 100,000 cells are drawn in four chunks of 25,000 (simulator seeds 0-3, rows shuffled);
the 10,000-cell file is the first 10,000 of them, and the 1,000,000-cell file is the 100,000 written
ten times, each time in a new random row order, chunk by chunk (so the draw never holds 1M cells in
memory; throughput and memory do not depend on cells being distinct).

Each job fits one registered model for exactly one epoch (no validation cells) in a fresh process
with one torch thread, on the file read into memory, or backed (``read_h5ad(backed="r")``,
minibatches read from disk) with ``:backed``. Throughput is cells / fit wall seconds, where the
fit includes its passes over the data besides the epoch (validation of the matrix, gene means).
Peak memory is the process's peak RSS. The evaluation suite is timed on targets of 300, 1,000 and
2,000 cells each of control, truth and prediction.

Writes benchmarks/perf_scaling/<name>.{csv,md,png} and <name>_eval.csv (``--name``, default perf_scaling).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import anndata as ad
import h5py
import matplotlib
import numpy as np
import pandas as pd
import scipy.sparse as sp

matplotlib.use("Agg")
import matplotlib.pyplot as plt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import RESULTS, peak_rss_mb, provenance

from mtpert.data import DatasetSpec, log_normalize, simulate
from mtpert.io import atomic_write, write_table
from mtpert.metrics import evaluate
from mtpert.models import get_model

SPEC = DatasetSpec()
N_GENES = 2000
BASE_CHUNKS = 4
BASE_CHUNK_CELLS = 25_000
EVAL_CELLS = 10_000
"""Cells of the file the evaluation targets are drawn from."""
DEFAULT_JOBS = (
    "mtae@10000,mtae@100000,mtae@100000:backed,scgen@10000,scgen@100000,mtae@1000000:backed"
)


def draw_base() -> list[ad.AnnData]:
    """Four shuffled chunks of 25,000 log-normalized simulated cells (seeds 0-3)."""
    chunks = []
    for seed in range(BASE_CHUNKS):
        n_cells = BASE_CHUNK_CELLS // 8  # 4 cell types x (control, stimulated)
        chunk = simulate(n_cell_types=4, n_genes=N_GENES, n_cells=n_cells, seed=seed)
        del chunk.uns["simulation"]
        log_normalize(chunk)
        del chunk.layers["counts"]
        order = np.random.default_rng(seed).permutation(chunk.n_obs)
        chunk = chunk[order].copy()
        chunk.obs_names = [f"s{seed}_{i}" for i in range(chunk.n_obs)]
        chunks.append(chunk)
    return chunks


def write_chunks(path: Path, chunks: list[ad.AnnData]) -> None:
    """One h5ad of the chunks' rows, written chunk by chunk (X grows on disk)."""
    obs = pd.concat([c.obs for c in chunks])
    obs.index = [f"c{i}" for i in range(len(obs))]
    tmp = path.with_suffix(".tmp")
    with h5py.File(tmp, "w") as f:
        ad.io.write_elem(f, "obs", obs)
        ad.io.write_elem(f, "var", chunks[0].var)
        ad.io.write_elem(f, "X", sp.csr_matrix(chunks[0].X, dtype=np.float32))
        X = ad.io.sparse_dataset(f["X"])
        for chunk in chunks[1:]:
            X.append(sp.csr_matrix(chunk.X, dtype=np.float32))
        for key in ("layers", "obsm", "varm", "obsp", "varp", "uns"):
            ad.io.write_elem(f, key, {})
    tmp.replace(path)


def build_files(workdir: Path, sizes: set[int]) -> dict[int, Path]:
    """The simulated files for ``sizes`` (10k, 100k, 1M), drawn once and reused."""
    workdir.mkdir(parents=True, exist_ok=True)
    paths = {n: workdir / f"sim_{n}.h5ad" for n in sizes}
    if all(p.is_file() for p in paths.values()):
        return paths
    base = draw_base()
    rng = np.random.default_rng(0)
    for n, path in paths.items():
        if path.is_file():
            continue
        if n <= BASE_CHUNKS * BASE_CHUNK_CELLS:
            write_chunks(path, [ad.concat(base)[:n].copy()])
        else:  # repeats of the base draw, each in a new row order
            whole = ad.concat(base)
            repeats = n // whole.n_obs
            write_chunks(path, [whole[rng.permutation(whole.n_obs)] for _ in range(repeats)])
        print(f"wrote {path} ({path.stat().st_size / 2**30:.2f} GiB)", flush=True)
    return paths


def run_job(path: Path, name: str, backed: bool) -> dict[str, float]:
    """One epoch of ``name`` on the file; runs in its own process."""
    data = ad.read_h5ad(path, backed="r") if backed else ad.read_h5ad(path)
    loaded_mb = peak_rss_mb()
    params = {"max_epochs": 1, "progress": False, "num_threads": 1, "seed": 0}
    model = get_model(name)(SPEC, **params)
    start = time.perf_counter()
    model.fit(data)
    seconds = time.perf_counter() - start
    return {
        "fit_seconds": seconds,
        "cells_per_second": data.n_obs / seconds,
        "peak_rss_mb": peak_rss_mb(),
        "rss_after_loading_mb": loaded_mb,
        "file_gib": path.stat().st_size / 2**30,
    }


def eval_times(path: Path, sizes: list[int]) -> pd.DataFrame:
    """Median of 3 timings of the whole evaluation suite per target size (cells per side)."""
    data = ad.read_h5ad(path)
    control = data[SPEC.is_control(data)]
    perturbed = data[~SPEC.is_control(data)]
    rows = []
    for n in sizes:
        truth, pred = perturbed[:n], perturbed[n : 2 * n]
        times = []
        for _ in range(3):
            start = time.perf_counter()
            evaluate(control[:n], truth, pred)
            times.append(time.perf_counter() - start)
        rows.append({"cells_per_side": n, "eval_seconds": float(np.median(times))})
    return pd.DataFrame(rows)


def merged(new: pd.DataFrame, csv: Path, keys: list[str]) -> pd.DataFrame:
    """``new`` rows over those of an earlier run in ``csv`` (same keys: the new ones win), so
    long jobs can run separately and still share one table and figure."""
    if not csv.is_file():
        return new
    table = pd.concat([pd.read_csv(csv), new], ignore_index=True)
    return table.drop_duplicates(keys, keep="last").sort_values(keys).reset_index(drop=True)


def plot(jobs: pd.DataFrame, evals: pd.DataFrame, path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for (model, backed), part in jobs.groupby(["model", "backed"]):
        label = f"{model} ({'backed' if backed else 'in memory'})"
        axes[0].plot(part["n_cells"], part["cells_per_second"], "o-", label=label)
        axes[1].plot(part["n_cells"], part["peak_rss_mb"] / 1024, "o-", label=label)
    axes[0].set(xscale="log", xlabel="training cells", ylabel="cells / s (one epoch, 1 thread)")
    axes[1].set(xscale="log", yscale="log", xlabel="training cells", ylabel="peak RSS (GiB)")
    axes[1].axhline(8, color="grey", ls="--", lw=1)
    if len(evals):
        axes[2].plot(evals["cells_per_side"], evals["eval_seconds"], "o-")
    axes[2].set(xscale="log", xlabel="cells per side (control, truth, prediction)",
                ylabel="evaluation suite (s)")  # fmt: skip
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--jobs", default=DEFAULT_JOBS, help="model@n_cells[:backed], comma-separated"
    )
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "mtpert_scaling"
    )
    parser.add_argument(
        "--eval-sizes",
        type=lambda v: [int(x) for x in v.split(",") if x],
        default=[300, 1000, 2000],
        help="cells per side of the timed evaluation targets ('' skips them)",
    )
    parser.add_argument("--name", default="perf_scaling", help="stem of the result files")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)  # path model backed
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        path, name, backed = args.worker
        args.out.write_text(json.dumps(run_job(Path(path), name, backed == "1")))
        return
    start = time.perf_counter()
    stamp = f"{datetime.now(UTC):%Y-%m-%d %H:%M}"
    jobs = []
    for job in args.jobs.split(","):
        spec, _, mode = job.partition(":")
        name, n = spec.split("@")
        jobs.append((name, int(n), mode == "backed"))
    paths = build_files(
        args.workdir, {n for _, n, _ in jobs} | ({EVAL_CELLS} if args.eval_sizes else set())
    )
    rows = []
    for name, n, backed in jobs:
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                str(paths[n]),
                name,
                str(int(backed)),
                "--out",
                out.name,
            ]
            subprocess.run(cmd, check=True)
            rows.append(
                {
                    "model": name,
                    "n_cells": n,
                    "backed": backed,
                    **json.loads(Path(out.name).read_text()),
                    "run_utc": stamp,
                }
            )
        print(rows[-1], flush=True)
    table = merged(pd.DataFrame(rows), RESULTS / f"{args.name}.csv", ["model", "n_cells", "backed"])
    eval_csv = RESULTS / f"{args.name}_eval.csv"
    evals = eval_times(paths[EVAL_CELLS], args.eval_sizes) if args.eval_sizes else pd.DataFrame()
    evals = merged(
        evals.assign(run_utc=stamp) if len(evals) else evals, eval_csv, ["cells_per_side"]
    )
    write_table(table, RESULTS / f"{args.name}.csv")
    if len(evals):
        write_table(evals, eval_csv)
    plot(table, evals, RESULTS / f"{args.name}.png")
    cores = len(os.sched_getaffinity(0))
    text = (
        "# Scaling: training throughput and memory vs cells; evaluation time vs cells\n\n"
        + provenance(
            "taskset -c 1 nice -n 10 python " + " ".join(sys.argv), time.perf_counter() - start
        )
        + f"- {cores} CPU core(s) (affinity), one torch thread per job, no GPU; simulated cells x "
        f"{N_GENES} genes (see the script's docstring for how the files are drawn); one epoch per job, "
        "registered defaults otherwise; rows of earlier runs of this script are kept (``run_utc``)\n\n"
        + table.to_markdown(index=False, floatfmt=".4g")
        + "\n\nEvaluation suite (all metrics) per target:\n\n"
        + evals.to_markdown(index=False, floatfmt=".3g")
        + f"\n\n![scaling]({args.name}.png)\n"
    )
    atomic_write(RESULTS / f"{args.name}.md", lambda f: f.write(text.encode()))
    print(text)


if __name__ == "__main__":
    main()
