"""The multi-task family under its new training defaults against the old, over whole benchmark grids.

The old runs are the committed grids (`kang_grid`, `screen_*`); the new ones are the same
benchmarks re-run for the multi-task models only, into a folder of their own, at a commit with
the new defaults (the commands are in `benchmarks/perf_grid_schedule/NOTES.md`). Then,
from the repository root:

    python benchmarks/perf_grid_schedule/grid_schedule.py \
        perf_grid_schedule/kang_grid_plateau:perf_grid_schedule/kang_grid_cosine \
        screen_mcfaline:perf_grid_schedule/screen_mcfaline_cosine ...

Each argument names an old and a new run folder under benchmarks/ (each unpacked first: `mtpert
study unpack`); tables name them by their last part. Runs are paired by
model, held-out target and seed. Writes benchmarks/perf_grid_schedule/perf_grid_schedule.{csv,md}: per
dataset and model, the mean of each headline metric over targets and seeds, old and new, their
difference, the share of paired runs where the new is better, and the mean fit seconds and epochs.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import BENCHMARKS, provenance, record

from mtpert.benchmark.report import HEADLINE
from mtpert.benchmark.store import ResultStore

RUN_KEYS = ["model", "split", "split_seed", "group", "condition", "dose", "seed"]
"""What pairs a run's score with its counterpart (those of the columns a folder has)."""
SHOWN = ["r2_top100", "r2_all", "deg_overlap_top100", "pearson_delta_all", "e_distance_rel", "mmd_rel"]
"""Metrics of the Markdown table (the CSV has every headline metric)."""


def paired(old_dir: str, new_dir: str) -> pd.DataFrame:
    """One row per target, seed and metric of the models both folders ran, with its old and new value.

    Only runs both folders have are paired (the table counts them per model). Where one folder
    does not record a key (runs written before ``split_seed`` existed), scores are averaged over
    it on both sides before pairing."""
    old, new = (ResultStore(BENCHMARKS / d).results() for d in (old_dir, new_dir))
    models = set(old["model"]) & set(new["model"])
    old, new = (t[t["model"].isin(models) & t["metric"].isin(HEADLINE)] for t in (old, new))
    keys = [k for k in [*RUN_KEYS, "metric"] if k in old and k in new and old[k].notna().any() and new[k].notna().any()]
    values = {"value": "mean", "fit_seconds": "mean", "epochs": "mean", "higher_is_better": "first"}
    old, new = (t.astype({k: str for k in keys}).groupby(keys, as_index=False).agg(values) for t in (old, new))
    both = old.merge(new.drop(columns="higher_is_better"), on=keys, suffixes=("_old", "_new"), validate="one_to_one")
    gain = (both["value_new"] - both["value_old"]).where(both["higher_is_better"], both["value_old"] - both["value_new"])
    return both.assign(better=gain > 0, dataset=f"{Path(old_dir).name} → {Path(new_dir).name}")


def summary(both: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, model and metric: means old and new, difference, share of runs improved, costs."""
    table = both.groupby(["dataset", "model", "metric"], sort=False).agg(
        old=("value_old", "mean"), new=("value_new", "mean"), new_better=("better", "mean"),
        runs=("value_new", "size"), fit_seconds_old=("fit_seconds_old", "mean"),
        fit_seconds_new=("fit_seconds_new", "mean"), epochs_old=("epochs_old", "mean"), epochs_new=("epochs_new", "mean"),
    ).reset_index()  # fmt: skip
    return table.assign(difference=table["new"] - table["old"])


def markdown(table: pd.DataFrame) -> str:
    """One block per dataset: a row per model, old -> new per shown metric, then the costs."""
    blocks = []
    for dataset, rows in table.groupby("dataset", sort=False):
        wide = rows[rows["metric"].isin(SHOWN)].pivot(index="model", columns="metric")
        out = pd.DataFrame(index=wide.index)
        for metric in [m for m in SHOWN if m in rows["metric"].unique()]:
            out[metric] = [f"{o:.3f} → {n:.3f}" for o, n in zip(wide["old", metric], wide["new", metric], strict=True)]
        costs = rows.groupby("model").first()
        out["fit s"] = [f"{o:.1f} → {n:.1f}" for o, n in zip(costs["fit_seconds_old"], costs["fit_seconds_new"], strict=True)]
        out["epochs"] = [f"{o:.0f} → {n:.0f}" for o, n in zip(costs["epochs_old"], costs["epochs_new"], strict=True)]
        out["targets x seeds"] = costs["runs"]
        blocks.append(f"## {dataset}\n\n" + out.reset_index().to_markdown(index=False) + "\n")
    return "\n".join(blocks)


def main() -> None:
    start = time.perf_counter()
    pairs = [arg.split(":", 1) for arg in sys.argv[1:]]
    if not pairs or any(len(p) != 2 for p in pairs):
        raise SystemExit("usage: grid_schedule.py OLD:NEW [OLD:NEW ...] (run folders under benchmarks/)")
    table = summary(pd.concat([paired(old, new) for old, new in pairs], ignore_index=True))
    mean_change = table[table["model"] != "noise_ceiling"].groupby("metric")["difference"].mean()

    def report(command: str, seconds: float) -> str:
        return (
            "# The multi-task family: new training defaults against the old, over whole grids\n\n"
            + provenance(command.replace("taskset -c 1 nice -n 10 ", ""), seconds)
            + "\nOld: lr 1e-3 held until plateaus, up to 100 epochs, patience 15. New: cosine schedule from "
            "lr 3e-3 over 30 epochs, patience 15. Cells: mean over held-out targets and seeds, old → new "
            "(distances relative to control: lower is better). The CSV adds every headline metric, the "
            "difference and the share of paired runs where the new defaults score better.\n\n"
            + markdown(table)
            + "\nMean difference (new - old) over datasets and models (the noise ceiling, the same in both, left out): "
            + ", ".join(f"{m} {mean_change[m]:+.4f}" for m in SHOWN if m in mean_change)
            + "\n"
        )

    record("perf_grid_schedule", table, report, start)


if __name__ == "__main__":
    main()
