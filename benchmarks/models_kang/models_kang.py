"""Every registered model vs "mean shift" and "control" on the shared Kang subset.

Run: python benchmarks/models_kang/models_kang.py [--seeds 1,2,19193] [--name models_kang] [--params JSON] [model ...]
Each eligible cell type (>= 20 control and stimulated cells) is held out in turn, with HVGs chosen
without its stimulated cells, under seeds 1, 2 and 19193; the whole evaluation suite is scored.
Each (model, seed) runs in a fresh process, so its peak resident memory is its own; one whose
table already exists is skipped (delete benchmarks/models_kang/<name>/<model>_seed<seed>.csv to
rerun it). ``--params`` passes the same hyperparameter overrides to every model named (e.g.
'{"prediction": "residual"}'). Writes benchmarks/models_kang/<name>.md from every table present.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for _common
from _common import RESULTS, load_kang, peak_rss_mb, provenance

from mtpert.benchmark import run_holdout
from mtpert.data import DatasetSpec
from mtpert.io import atomic_write, write_table
from mtpert.models import MODELS

HEADLINE = ["deg_overlap_top100", "r2_all", "r2_top20", "r2_top100", "r2_top100_boot", "pearson_delta_all",
            "pearson_delta_top100", "e_distance_rel", "wasserstein_rel", "euclidean_rel", "mean_pairwise_rel",
            "mmd_rel"]


def table_path(out: Path, name: str, seed: int) -> Path:
    return out / f"{name}_seed{seed}.csv"


def run_model(job: tuple[str, int], out: Path, params: dict) -> str:
    """Fit and score model ``name`` on every fold of one seed; runs in its own process."""
    name, seed = job
    raw = load_kang()
    loaded_mb = peak_rss_mb()
    start = time.perf_counter()
    results = run_holdout(
        raw, DatasetSpec(), [name], seeds=(seed,), model_params={name: params},
        on_progress=lambda m: print(m, flush=True),
    )
    results["wall_seconds_all_folds"] = time.perf_counter() - start
    results["peak_rss_mb"] = peak_rss_mb()
    results["rss_after_loading_mb"] = loaded_mb
    write_table(results, table_path(out, name, seed))
    return f"{name} seed {seed}"


def summarize(results: pd.DataFrame) -> str:
    """The Markdown summary: headline means, cost, per-cell-type R², comparison with mean shift."""
    headline = results[results["metric"].isin(HEADLINE)]
    means = headline.pivot_table(index="model", columns="metric", values="value")[HEADLINE]
    spread = headline.groupby(["model", "metric", "seed"])["value"].mean().groupby(["model", "metric"]).std()
    cost = results.groupby("model").agg(
        fit_s_median=("fit_seconds", "median"), fit_s_max=("fit_seconds", "max"),
        peak_rss_mb=("peak_rss_mb", "max"), rss_after_loading_mb=("rss_after_loading_mb", "max"),
    )
    fit_by_seed = results.pivot_table(index="model", columns="seed", values="fit_seconds", aggfunc="median")
    cost = cost.join(fit_by_seed.add_prefix("fit_s_median_seed"))
    order = means.sort_values("r2_top100", ascending=False).index
    per_group = (
        results[results["metric"] == "r2_top100"]
        .pivot_table(index="group", columns="model", values="value")[order]
    )
    # where each model beats mean shift: per metric, cell types whose seed-mean is better
    lines = []
    by_group = headline.groupby(["model", "group", "metric"])["value"].mean().unstack("metric")
    higher = results.drop_duplicates("metric").set_index("metric")["higher_is_better"]
    if "mean_shift" in means.index:
        reference = by_group.loc["mean_shift"]
        for model in order:
            if model in ("mean_shift", "control"):
                continue
            wins = []
            for metric in HEADLINE:
                diff = by_group.loc[model][metric] - reference[metric]
                better = (diff > 0) if higher[metric] else (diff < 0)
                wins.append(f"{metric} {int(better.sum())}/{len(better)}")
            lines.append(f"- **{model}** beats mean shift on: " + ", ".join(wins))
    return (
        "## Mean over held-out cell types and seeds\n\n" + means.loc[order].round(3).to_markdown() + "\n\n"
        "## Spread across seeds (std of the per-seed means)\n\n"
        + spread.unstack("metric")[HEADLINE].loc[order].round(3).to_markdown() + "\n\n"
        "## Cost (2,000 HVGs, ~1.7k training cells per fold; CPU)\n\n" + cost.loc[order].round(1).to_markdown() + "\n\n"
        "## R² over the top-100 true DEGs, per held-out cell type (mean over seeds)\n\n"
        + per_group.round(3).to_markdown() + "\n\n"
        "## Against mean shift (cell types where the model's seed-mean is better)\n\n" + "\n".join(lines) + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=list(MODELS), help="registered model names (default: all)")
    parser.add_argument("--seeds", default="1,2,19193", help="comma-separated seeds")
    parser.add_argument("--name", default="models_kang", help="results name in the study folder, benchmarks/models_kang/")
    parser.add_argument("--params", default="{}", help="JSON hyperparameter overrides for every model named")
    args = parser.parse_args()
    unknown = set(args.models) - set(MODELS)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; registered: {list(MODELS)}")
    seeds = tuple(int(s) for s in args.seeds.split(","))
    out = RESULTS / args.name
    params = json.loads(args.params)
    todo = [(n, s) for s in seeds for n in args.models if not table_path(out, n, s).is_file()]
    start = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context, max_tasks_per_child=1) as pool:
        for done in pool.map(partial(run_model, out=out, params=params), todo):
            print(f"finished {done}", flush=True)
    seconds = time.perf_counter() - start
    tables = [pd.read_csv(path) for path in sorted(out.glob("*_seed*.csv"))]
    results = pd.concat(tables, ignore_index=True)
    command = "python benchmarks/models_kang/models_kang.py " + " ".join(
        [f"--seeds {args.seeds}", f"--name {args.name}", *([f"--params '{args.params}'"] if params else []), *args.models]
    )
    text = (
        "# Models on the shared Kang 2018 subset\n\n"
        + provenance(command, seconds)
        + f"\nHeld-out cell types: {', '.join(sorted(results['group'].unique()))} (>= 20 control and stimulated "
        f"cells each); seeds {args.seeds}; 2,000 HVGs chosen without the held-out stimulated "
        "cells. `*_rel` distances: pred-to-truth over control-to-truth in PCA space (< 1 beats predicting no "
        "change). The wall time above covers only the models run in this invocation; per-model tables "
        f"are in `{args.name}/`.\n\n" + summarize(results)
    )
    atomic_write(RESULTS / f"{args.name}.md", lambda f: f.write(text.encode()))
    print(text)

if __name__ == "__main__":
    main()
