"""mtpert's distances vs pertpy.tl.Distance on identical inputs: agreement and speed.

Run via benchmarks/metrics_vs_pertpy/metrics_vs_pertpy.sh (it sets up pertpy's own virtual environment).
For each eligible Kang cell type held out, the mean-shift prediction and the control cells are
compared with the true stimulated cells in the pair's PCA space (fit on control and truth).
Both libraries get the same arrays; MMD gets the same RBF bandwidth. Writes
benchmarks/metrics_vs_pertpy/metrics_vs_pertpy.{csv,md}.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pertpy as pt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for _common
from _common import RESULTS, load_kang, provenance

from mtpert.benchmark import make_fold
from mtpert.data import DatasetSpec, eligible_groups
from mtpert.io import atomic_write, write_table
from mtpert.metrics import EvalPair, e_distance, euclidean, mean_pairwise, mmd, wasserstein
from mtpert.models import get_model

warnings.filterwarnings("ignore")

# our function, pertpy metric name, extra pertpy kwargs (filled per pair for MMD)
DISTANCES = {
    "e_distance": (e_distance, "edistance"),
    "euclidean": (euclidean, "euclidean"),
    "mean_pairwise": (mean_pairwise, "mean_pairwise"),
    "mmd": (mmd, "mmd"),
    "wasserstein": (wasserstein, "wasserstein"),
}


def best_of(fn, repeats: int = 3) -> tuple[float, float]:
    """(result, fastest wall seconds) over ``repeats`` calls."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return float(result), min(times)


def main() -> None:
    start_all = time.perf_counter()
    spec = DatasetSpec()
    raw = load_kang()
    table = eligible_groups(raw, spec)
    rows = []
    pertpy_distances = {name: pt.tl.Distance(metric=metric) for name, (_, metric) in DISTANCES.items()}
    for group in table.index[table["eligible"]]:
        data, split = (fold := make_fold(raw, spec, group, seed=1)).data, fold.split
        target = split.targets[0]
        control, truth = data[target.control], data[target.truth]
        pred = get_model("mean_shift")(spec).fit(split.subset(data, "train")).predict(control, target.condition)
        pair = EvalPair(control, truth, pred)
        for which in ("pred", "control"):
            X, Y = pair.pcs[which], pair.pcs["truth"]
            for name, (ours, _) in DISTANCES.items():
                kwargs = {"gamma": pair.mmd_gamma} if name == "mmd" else {}
                pertpy_kwargs = {"kernel": "rbf", "gamma": pair.mmd_gamma} if name == "mmd" else {}
                ours_value, ours_s = best_of(lambda: ours(X, Y, **kwargs))
                pertpy_value, pertpy_s = best_of(lambda: pertpy_distances[name](X, Y, **pertpy_kwargs))
                rows.append(
                    {"group": group, "compared": f"{which} vs truth", "distance": name,
                     "mtpert": ours_value, "pertpy": pertpy_value,
                     "rel_diff": abs(ours_value - pertpy_value) / max(abs(pertpy_value), 1e-12),
                     "mtpert_s": ours_s, "pertpy_s": pertpy_s, "n_cells": f"{len(X)}x{len(Y)}"}
                )
        print(f"{group}: done")
    results = pd.DataFrame(rows)
    seconds = time.perf_counter() - start_all
    write_table(results, RESULTS / "metrics_vs_pertpy.csv")
    summary = results.groupby("distance").agg(
        max_rel_diff=("rel_diff", "max"),
        median_rel_diff=("rel_diff", "median"),
        mtpert_s=("mtpert_s", "sum"),
        pertpy_s=("pertpy_s", "sum"),
    )
    summary["speedup"] = summary["pertpy_s"] / summary["mtpert_s"]
    text = (
        "# mtpert distances vs pertpy.tl.Distance (pertpy 1.0.3)\n\n"
        + provenance("bash benchmarks/metrics_vs_pertpy/metrics_vs_pertpy.sh", seconds)
        + "\nSame PCA coordinates (50 PCs fit on control and truth) given to both; MMD with the same "
        "RBF gamma (median heuristic). Each eligible Kang cell type held out, the mean-shift "
        "prediction and the control cells each compared with the true stimulated cells "
        f"({len(results)} comparisons). Times are the fastest of 3 calls, summed over comparisons.\n\n"
        "pertpy's Wasserstein is the entropic (Sinkhorn, ott-jax default epsilon) regularized cost; "
        "mtpert's is the exact OT cost (POT `emd2`, squared-Euclidean ground cost), so those two "
        "are expected to differ by the entropic bias; the other four are the same definitions.\n\n"
        + summary.to_markdown(floatfmt=".3g")
        + "\n\n## Every comparison\n\n"
        + results.drop(columns=["mtpert_s", "pertpy_s"]).to_markdown(index=False, floatfmt=".4g")
        + "\n"
    )
    atomic_write(RESULTS / "metrics_vs_pertpy.md", lambda f: f.write(text.encode()))
    print(summary.to_string())


if __name__ == "__main__":
    main()
