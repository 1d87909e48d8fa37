"""One multi-task model for every perturbation vs one model per perturbation, on Norman 2019.

Run: taskset -c 1 nice -n 10 python benchmarks/norman_one_vs_many/norman_one_vs_many.py [--seeds 1,2,19193] [--model mtae] [--short 5,10,20]

The Norman 2019 K562 CRISPRa subset (33 conditions: 18 single activations and 15 pairs, 80-100
cells each, 100 control cells; ../shared/data or $MTPERT_DATA_DIR). Per seed, a random fifth of
each condition's cells, the control's included, is held out (obs column ``fold``); every
condition is predicted from the held-out control cells and scored against its held-out cells
(mtpert.data.holdout_group with group_key="fold": held-out cells of seen perturbations). Approaches,
on one CPU thread:

* ``one``: one ``--model`` trained on every condition's training cells at once;
* ``per_perturbation``: the same model and settings, one per condition, each trained on the
  control cells and that condition's cells only (a single-perturbation model, as scGen-era
  baselines are);
* ``one_<n>_epochs``, for each ``n`` of ``--short``: ``one`` trained for at most ``n`` epochs, so
  that its fit time comes near one single-perturbation model's (time to accuracy: an epoch of the
  multi-task model passes over every condition's cells, about 17 times a single model's).

Recorded per approach and seed: fit seconds (all models of the approach; for ``per_perturbation``
also the mean of one), stored parameters (all models), and the mean over conditions of R² of the
mean change on the top-20 DEGs and all genes, Pearson of the change, and E-distance relative to
control. Writes benchmarks/norman_one_vs_many/norman_one_vs_many.{md,csv}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for _common
from _common import REPO, provenance, record

from mtpert.benchmark import make_fold
from mtpert.benchmark.holdout import Holdout, seed_everything
from mtpert.data import DatasetSpec
from mtpert.data.registry import read_h5ad
from mtpert.metrics import evaluate
from mtpert.models import get_model

SPEC = DatasetSpec(condition_key="perturbation", combination_separator="+")
METRICS = ("r2_top20", "r2_all", "pearson_delta_all", "e_distance_rel")
TEST_FRACTION = 0.2
MIN_CELLS = 10
"""A fifth of the smallest condition (80 cells) is 16 held-out cells."""


def load_norman() -> AnnData:
    data_dir = Path(os.environ.get("MTPERT_DATA_DIR", REPO.parent / "shared" / "data"))
    path = data_dir / "norman2019_k562_crispra_subset.h5ad"
    if not path.is_file():
        sys.exit(f"{path} not found; set MTPERT_DATA_DIR to the folder holding norman2019_k562_crispra_subset.h5ad.")
    return read_h5ad(path)


def with_folds(adata, seed: int):
    """``adata`` with obs ``fold``: a random fifth of each condition's cells ``test``, the rest ``train``."""
    rng = np.random.default_rng(seed)
    fold = np.full(adata.n_obs, "train", dtype=object)
    for _, rows in adata.obs.groupby(SPEC.condition_key, observed=True).indices.items():
        fold[rng.choice(rows, round(TEST_FRACTION * len(rows)), replace=False)] = "test"
    adata = adata.copy()
    adata.obs["fold"] = fold
    return adata


def n_params(model) -> int:
    return int(model.fit_summary()["n_params"])


def run(seed: int, name: str, options: dict, short: tuple[int, ...] = ()) -> list[dict]:
    fold = make_fold(with_folds(load_norman(), seed), SPEC, Holdout("test", group_key="fold"), seed=seed, n_hvg=0, min_cells=MIN_CELLS)
    data, split = fold.data, fold.split
    params = {"num_threads": 1, "progress": False, **options}
    rows = []

    def score(approach: str, condition: str, pred, target) -> dict:
        table = evaluate(data[target.control], data[target.truth], pred, metrics=METRICS, seed=seed)
        return {"approach": approach, "seed": seed, "condition": condition, **dict(zip(table["metric"], table["value"], strict=True))}

    for approach, epochs in [("one", {}), *((f"one_{n}_epochs", {"max_epochs": n}) for n in short)]:
        seed_everything(seed)
        start = time.perf_counter()
        one = get_model(name)(SPEC, **params, **epochs).fit(split.subset(data, "train"), split.subset(data, "val"))
        one_seconds = time.perf_counter() - start
        for target in split.targets:
            rows.append(score(approach, target.condition, one.predict(data[target.control], target.condition), target) | {
                "fit_seconds": one_seconds, "n_params": n_params(one), "n_models": 1, "epochs": len(one.history)})  # fmt: skip
    condition = data.obs[SPEC.condition_key].astype(str)
    per_seconds, per_params = [], []
    for target in split.targets:
        mine = data.obs_names[(condition == SPEC.control) | (condition == target.condition)]  # control and this condition
        train, val = (data[names[names.isin(mine)]] for names in (split.train, split.val))
        seed_everything(seed)
        start = time.perf_counter()
        model = get_model(name)(SPEC, **params).fit(train, val)
        per_seconds.append(time.perf_counter() - start)
        per_params.append(n_params(model))
        rows.append(score("per_perturbation", target.condition, model.predict(data[target.control], target.condition), target)
                    | {"epochs": len(model.history)})  # fmt: skip
    for row in rows:
        if row["approach"] == "per_perturbation":
            row |= {"fit_seconds": sum(per_seconds), "fit_seconds_one_model": float(np.mean(per_seconds)),
                    "n_params": sum(per_params), "n_models": len(per_params)}  # fmt: skip
    return rows


def report(table: pd.DataFrame, name: str, command: str, seconds: float) -> str:
    summary = table.groupby("approach").agg(
        n_models=("n_models", "first"), fit_seconds=("fit_seconds", "mean"), epochs=("epochs", "mean"), n_params=("n_params", "mean"),
        **{m: (m, "mean") for m in METRICS},
    )  # fmt: skip
    one, many = summary.loc["one"], summary.loc["per_perturbation"]
    single = table.loc[table["approach"] == "per_perturbation", "fit_seconds_one_model"].mean()
    lines = [
        f"# One multi-task `{name}` for every perturbation vs one per perturbation (Norman 2019)\n",
        provenance(command, seconds),
        f"Seeds {sorted(int(s) for s in table['seed'].unique())}; {table['condition'].nunique()} conditions, each predicted from held-out "
        f"control cells and scored against its held-out fifth of cells. One CPU thread. Means over conditions and seeds.\n",
        summary.to_markdown(floatfmt=".3f") + "\n",
        f"- fit time: one model for all {many['n_models']:.0f} conditions {one['fit_seconds']:.1f} s; one model per "
        f"perturbation {many['fit_seconds']:.1f} s in all, {single:.1f} s each on average: the multi-task model costs "
        f"{one['fit_seconds'] / single:.2f}x one single-perturbation model and {one['fit_seconds'] / many['fit_seconds']:.2f}x all of them.",
        f"- parameters: {one['n_params']:,.0f} vs {many['n_params']:,.0f} ({many['n_params'] / one['n_params']:.1f}x).",
        "- accuracy (one minus per-perturbation): " + ", ".join(f"{m} {one[m] - many[m]:+.3f}" for m in METRICS)
        + " (higher is better except e_distance_rel).",
        *(
            f"- {approach}: fit {row['fit_seconds']:.1f} s ({row['fit_seconds'] / single:.2f}x one single-perturbation model), "
            + ", ".join(f"{m} {row[m] - many[m]:+.3f}" for m in METRICS) + " against per-perturbation."
            for approach, row in summary.iterrows() if approach.startswith("one_")
        ),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,19193")
    parser.add_argument("--model", default="mtae")
    parser.add_argument("--params", type=json.loads, default={}, help="JSON hyperparameters of --model, for both approaches")
    parser.add_argument("--short", default="", help="comma-separated epoch limits of the one model (time to accuracy)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    short = tuple(int(n) for n in args.short.split(",") if n)
    start = time.perf_counter()
    rows = [row for seed in (int(s) for s in args.seeds.split(",")) for row in run(seed, args.model, args.params, short)]
    table = pd.DataFrame(rows)
    record("norman_one_vs_many", table, lambda command, seconds: report(table, args.model, command, seconds), start)


if __name__ == "__main__":
    main()
