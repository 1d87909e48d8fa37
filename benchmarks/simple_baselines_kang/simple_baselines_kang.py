"""Score the "control" and "mean shift" predictors on every eligible Kang cell type.

Run: python benchmarks/simple_baselines_kang/simple_baselines_kang.py
Writes benchmarks/simple_baselines_kang/simple_baselines_kang.{csv,md}: the full long table and a per-cell-type
summary (mean over seeds 1, 2, 19193; HVGs chosen without the held-out cells).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for _common
from _common import RESULTS, load_kang, provenance

from mtpert.benchmark import run_holdout
from mtpert.data import DatasetSpec
from mtpert.io import atomic_write, write_table

METRICS = ["deg_overlap_top100", "r2_all", "r2_top20", "r2_top100", "pearson_delta_all",
           "e_distance_rel", "wasserstein_rel", "euclidean_rel", "mean_pairwise_rel", "mmd_rel"]


def main() -> None:
    start = time.perf_counter()
    results = run_holdout(load_kang(), DatasetSpec(), ["control", "mean_shift"], seeds=(1, 2, 19193), on_progress=print)
    seconds = time.perf_counter() - start
    write_table(results, RESULTS / "simple_baselines_kang.csv")

    shown = results[results["metric"].isin(METRICS)]
    per_group = shown.pivot_table(index=["group", "model"], columns="metric", values="value")[METRICS]
    overall = shown.pivot_table(index="model", columns="metric", values="value")[METRICS]
    text = (
        "# Simple baselines on the shared Kang 2018 subset\n\n"
        + provenance("python benchmarks/simple_baselines_kang/simple_baselines_kang.py", seconds)
        + "\nEach eligible cell type (>= 20 control and stimulated cells) held out in turn; 2,000 HVGs "
        "chosen without its stimulated cells; mean over seeds 1, 2, 19193 (the two models are "
        "deterministic, the seed changes only the train/validation split). `*_rel` distances are "
        "pred-to-truth divided by control-to-truth in PCA space: < 1 beats predicting no change.\n\n"
        "## Mean over cell types\n\n" + overall.round(3).to_markdown() + "\n\n"
        "## Per held-out cell type\n\n" + per_group.round(3).to_markdown() + "\n"
    )
    atomic_write(RESULTS / "simple_baselines_kang.md", lambda f: f.write(text.encode()))
    print(text)


if __name__ == "__main__":
    main()
