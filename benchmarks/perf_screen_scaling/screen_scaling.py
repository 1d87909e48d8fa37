"""One multi-task epoch over a simulated screen: time and memory vs cells and vs perturbations.

Run: taskset -c 1 nice -n 10 python benchmarks/perf_screen_scaling/screen_scaling.py
    [--grid 1000@50000,1000@100000,1000@200000,10@200000,100@200000] [--model mtae] [--workdir DIR]

Each job ``P@N`` is a screen of ``P`` knock-downs and about ``N`` cells x 2,000 genes
(:func:`mtpert.data.simulate_screen`: one cell line, no pairs, ``N // (P + 1)`` cells per
perturbation and as many control cells, seed 0), log-normalized and written as a float32 CSR
h5ad under ``--workdir`` (default /tmp/mtpert_screen_scaling; never the repository; reused when
present). ``--model`` (default ``mtae``: one FiLM-conditioned model over every perturbation) then
fits exactly one epoch on the file read backed (``read_h5ad(backed="r")``, minibatches read from
disk), in a fresh process with one torch thread, with ``scaling.py``'s worker (its docstring says
what the fit time includes). Peak memory is the process's own high-water mark.

Writes benchmarks/perf_screen_scaling/perf_screen_scaling.{csv,md,png}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from _common import RESULTS, provenance, record

from mtpert.io import atomic_write

NAME = "perf_screen_scaling"
N_GENES = 2000
DEFAULT_GRID = "1000@50000,1000@100000,1000@200000,10@200000,100@200000"
EPOCH_SECONDS_TARGET = 300
MEMORY_GIB_TARGET = 8


def screen_file(workdir: Path, perturbations: int, cells: int) -> Path:
    """The screen of ``perturbations`` knock-downs and about ``cells`` cells, drawn unless there."""
    from mtpert.data import log_normalize, simulate_screen

    path = workdir / f"screen_{perturbations}_{cells}.h5ad"
    if path.is_file():
        return path
    workdir.mkdir(parents=True, exist_ok=True)
    screen = simulate_screen(
        n_lines=1, n_genes=N_GENES, n_regulators=perturbations, n_pairs=0,
        n_cells=cells // (perturbations + 1), n_replicates=1, seed=0,
    )  # fmt: skip
    log_normalize(screen)
    del screen.layers["counts"]
    screen.X = screen.X.astype(np.float32)
    # scaling.py's worker reads the default spec's keys: cell_type and condition
    screen.obs = screen.obs[["cell_type", "perturbation"]].rename(columns={"perturbation": "condition"})
    screen.uns = {}
    screen = screen[np.random.default_rng(0).permutation(screen.n_obs)].copy()
    tmp = path.with_suffix(".tmp.h5ad")
    screen.write_h5ad(tmp)
    tmp.replace(path)
    print(f"wrote {path} ({screen.n_obs} cells, {path.stat().st_size / 2**30:.2f} GiB)", flush=True)
    return path


def run_grid(args: argparse.Namespace) -> pd.DataFrame:
    rows = []
    for job in args.grid.split(","):
        perturbations, cells = (int(v) for v in job.split("@"))
        path = screen_file(args.workdir, perturbations, cells)
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            worker = [sys.executable, str(HERE / "scaling.py"), "--worker", str(path), args.model, "1", "--out", out.name]
            subprocess.run(worker, check=True)
            result = json.loads(Path(out.name).read_text())
        n_cells = round(result["cells_per_second"] * result["fit_seconds"])
        rows.append({"model": args.model, "perturbations": perturbations, "cells": cells, "n_cells": n_cells, **result})
        print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def plot(table: pd.DataFrame, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    most = table["perturbations"].max()
    by_cells = table[table["perturbations"] == most].sort_values("n_cells")
    by_perts = table[table["cells"] == table["cells"].max()].sort_values("perturbations")
    for ax, part, x, label in (
        (axes[0], by_cells, "n_cells", f"cells ({most} perturbations)"),
        (axes[1], by_perts, "perturbations", f"perturbations (about {by_perts['cells'].iloc[0]:,} cells)"),
    ):
        ax.plot(part[x], part["fit_seconds"], "o-", color="C0", label="one epoch (s)")
        ax.set(xscale="log", xlabel=label, ylabel="seconds (one epoch, 1 thread)", ylim=(0, EPOCH_SECONDS_TARGET * 1.1))
        ax.axhline(EPOCH_SECONDS_TARGET, color="C0", ls=":", lw=1, label=f"target: {EPOCH_SECONDS_TARGET} s")
        twin = ax.twinx()
        twin.plot(part[x], part["peak_rss_mb"] / 1024, "s--", color="C1", label="peak RSS (GiB)")
        twin.set(ylabel="peak RSS (GiB)", ylim=(0, None))
        ax.legend(loc="upper left", fontsize=8)
        twin.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))


def report(table: pd.DataFrame, command: str, seconds: float) -> str:
    largest = table.loc[(table["perturbations"] == table["perturbations"].max()).to_numpy()]
    largest = largest.loc[largest["cells"].idxmax()]
    met = largest["fit_seconds"] <= EPOCH_SECONDS_TARGET and largest["peak_rss_mb"] / 1024 <= MEMORY_GIB_TARGET
    by_cells = table[table["perturbations"] == largest["perturbations"]].sort_values("n_cells")
    by_perts = table[table["cells"] == largest["cells"]].sort_values("perturbations")

    def growth(part: pd.DataFrame, x: str) -> str:
        first, last = part.iloc[0], part.iloc[-1]
        return (f"{last[x] / first[x]:.0f}x the {x.replace('n_', '')} -> {last['fit_seconds'] / first['fit_seconds']:.2f}x "
                f"the time, {last['peak_rss_mb'] / first['peak_rss_mb']:.2f}x the peak memory")  # fmt: skip

    lines = [
        "# One multi-task epoch over a simulated screen: time and memory vs cells and perturbations\n",
        provenance(command, seconds),
        "- one torch thread, file read backed; see the script's docstring\n",
        (f"Target (one epoch over {int(largest['perturbations']):,} perturbations x {int(largest['n_cells']):,} cells "
        f"within {EPOCH_SECONDS_TARGET} s and {MEMORY_GIB_TARGET} GiB): **{'met' if met else 'NOT met'}** "
        f"({largest['fit_seconds']:.0f} s, {largest['peak_rss_mb'] / 1024:.2f} GiB, on one thread).\n"),
        f"- vs cells: {growth(by_cells, 'n_cells')}",
        f"- vs perturbations: {growth(by_perts, 'perturbations')}\n",
        table.to_markdown(index=False, floatfmt=".4g"),
        f"\n![screen scaling]({NAME}.png)\n",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default=DEFAULT_GRID, help="perturbations@cells, comma-separated")
    parser.add_argument("--model", default="mtae")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "mtpert_screen_scaling")
    args = parser.parse_args()
    start = time.perf_counter()
    table = run_grid(args)
    plot(table, RESULTS / f"{NAME}.png")
    record(NAME, table, lambda command, seconds: report(table, command, seconds), start)


if __name__ == "__main__":
    main()
