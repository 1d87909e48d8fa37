"""Why the multi-task models did harm on the McFaline screen, and the defaults that fix it.

Run: python benchmarks/screens_defaults/screens_defaults.py [--datasets mcfaline,kang,norman,papalexi]
Writes benchmarks/screens_defaults/screens_defaults.md (tables) and screens_defaults.csv (the mean of every
metric per dataset, model, held-out target and seed).

Each factor the issue names is isolated by one variant of ``mtae`` (all fitted under the same
seeds, so two variants that differ only in how they predict share their training):
``before`` is the former default (decoded prediction, no bound on the change); ``residual`` adds
the decoded change to each control cell; ``residual_additive`` / ``residual_small`` /
``residual_15_epochs`` change the conditioning, the capacity or the training length of that;
``decoded_bounded`` and ``now`` (residual and bounded: the defaults) add ``bound_change``.
Diagnostics beside the metrics: ``change_x``, the size (RMS over genes) of the predicted mean
change over that of the true one; ``spread_x``, the predicted cells' per-gene variance over the
true cells'; ``bounded``, the share of targets whose prediction ``bound_change`` scaled down, and
``bound_scale``, the factor it scaled the mean change by (from the unbounded twin; 1: untouched);
``recon_gain``, 1 - the best validation reconstruction error over that of
predicting each validation cell by its group's and condition's mean training cell.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for _common
from _common import REPO, RESULTS, provenance

from mtpert._array import dense
from mtpert.benchmark import Holdout, fit_and_score, make_fold, noise_ceiling
from mtpert.benchmark.holdout import Fold, Prediction
from mtpert.data import DatasetSpec
from mtpert.io import atomic_write, write_table
from mtpert.models import MultiTaskModel, PerturbationModel, get_model

DATA = Path(os.environ.get("MTPERT_DATA_DIR", REPO.parent / "shared" / "data"))
"""The shared real data (never copied into the repository)."""
METRICS = ["r2_all", "r2_top20", "r2_top100", "pearson_delta_all", "e_distance_rel"]
DIAGNOSTICS = ["change_x", "spread_x", "bounded", "bound_scale", "recon_gain"]
BEFORE = {"prediction": "decoded", "bound_change": False}
UNBOUNDED = {"prediction": "residual", "bound_change": False}
MTAE_VARIANTS: dict[str, tuple[str, dict]] = {
    "mtae before": ("mtae", BEFORE),
    "mtae residual": ("mtae", UNBOUNDED),
    "mtae residual_additive": ("mtae", {**UNBOUNDED, "conditioning": "additive"}),
    "mtae residual_small": ("mtae", {**UNBOUNDED, "hidden": (64,), "latent_dim": 16}),
    "mtae residual_15_epochs": ("mtae", {**UNBOUNDED, "max_epochs": 15}),
    "mtae decoded_bounded": ("mtae", {"prediction": "decoded"}),
    "mtae now": ("mtae", {}),
    "mtae_plus_ot before": ("mtae_plus_ot", BEFORE),
    "mtae_plus_ot now": ("mtae_plus_ot", {}),
}
BEFORE_AFTER = {k: MTAE_VARIANTS[k] for k in ("mtae before", "mtae residual", "mtae now")}
TWINS = {"mtae now": "mtae residual"}
"""A bounded variant and its twin trained identically without the bound (same options, same seed)."""


def rms(values: np.ndarray) -> float:
    return float(np.sqrt((values**2).mean()))


def diagnostics(prediction: Prediction, model: PerturbationModel) -> dict[str, float]:
    """``change_x``, ``spread_x`` and, for a model with ``bound_change``, ``bounded``: 1 if the
    bound scaled the prediction down (its mean change is at the bound), else 0."""
    control, truth, pred = (dense(a.X) for a in (prediction.control, prediction.truth, prediction.pred))
    change = rms(pred.mean(0) - control.mean(0))
    values = {"change_x": change / rms(truth.mean(0) - control.mean(0)), "spread_x": float(pred.var(0).mean() / truth.var(0).mean())}
    bound = model.change_bound(prediction.target.condition) if isinstance(model, MultiTaskModel) else None
    if bound is not None:
        values["bounded"] = float(change >= bound * (1 - 1e-3))
    return values


def group_mean_mse(fold: Fold, spec: DatasetSpec) -> float:
    """MSE of predicting each validation cell by the mean training cell of its group and condition."""
    train, val = fold.split.subset(fold.data, "train"), fold.split.subset(fold.data, "val")
    keys = [spec.cell_type_key, spec.condition_key]
    means = pd.DataFrame(dense(train.X), index=pd.MultiIndex.from_frame(train.obs[keys].astype(str))).groupby(level=keys).mean()
    expected = means.reindex(pd.MultiIndex.from_frame(val.obs[keys].astype(str))).to_numpy()
    return float(np.nanmean((dense(val.X) - expected) ** 2))


def run_fold(dataset: str, fold: Fold, spec: DatasetSpec, seed: int, variants: dict[str, tuple[str, dict]], baselines: Sequence[str]) -> pd.DataFrame:
    """Scores and diagnostics of every baseline and variant on one fold, one row per target and metric."""
    rows, models, predictions = [], {}, {}
    baseline_mse = group_mean_mse(fold, spec)
    runs = [(name, name, {}) for name in baselines] + [(label, model, params) for label, (model, params) in variants.items()]
    for label, model, params in runs:
        runtime = {"progress": False, "num_threads": 1} if "num_threads" in get_model(model).cls.parameters() else {}
        result = fit_and_score(fold.data, fold.split, spec, label, seed, {**params, **runtime}, registered=model)
        fitted = models[label] = result.models[None]
        predictions[label] = result.predictions
        print(f"{dataset} | {fold.split.targets[0].group} | {label} | seed {seed}: fit {result.fit_seconds:.0f} s", flush=True)
        scores = result.scores[result.scores["metric"].isin(METRICS)]
        rows.append(scores.assign(model=label, fit_seconds=result.fit_seconds))
        for prediction in result.predictions:
            extra = diagnostics(prediction, fitted)
            if hasattr(fitted, "history"):
                extra["recon_gain"] = 1.0 - float(fitted.history["val_recon"].min()) / baseline_mse
            rows.append(pd.DataFrame({"group": prediction.target.group, "condition": prediction.target.condition, "model": label, "metric": list(extra), "value": list(extra.values())}))
    for bounded, twin in TWINS.items():
        for prediction in predictions.get(twin, ()):
            control, pred = dense(prediction.control.X), dense(prediction.pred.X)
            bound = models[bounded].change_bound(prediction.target.condition)
            scale = 1.0 if bound is None else min(1.0, bound / rms(pred.mean(0) - control.mean(0)))
            rows.append(pd.DataFrame({"group": prediction.target.group, "condition": prediction.target.condition, "model": bounded, "metric": ["bound_scale"], "value": [scale]}))
    ceiling = noise_ceiling(fold.data, fold.split, seed)
    rows.append(ceiling[ceiling["metric"].isin(METRICS)].assign(model="noise_ceiling"))
    table = pd.concat(rows, ignore_index=True)
    return table.assign(dataset=dataset, seed=seed)[["dataset", "seed", "group", "condition", "model", "metric", "value"]]


def mcfaline(seeds: Iterable[int]) -> pd.DataFrame:
    spec = DatasetSpec(condition_key="perturbation", control="control")
    raw = ad.read_h5ad(DATA / "mcfaline2023_gbm_crispri_3lines.h5ad")
    return pd.concat(
        run_fold("mcfaline", make_fold(raw, spec, line, seed=seed), spec, seed, MTAE_VARIANTS, ["control", "mean_shift"])
        for line in spec.cell_types(raw)
        for seed in seeds
    )


def kang(seeds: Iterable[int]) -> pd.DataFrame:
    spec = DatasetSpec()
    raw = ad.read_h5ad(DATA / "kang2018_pbmc_ifnb_2k.h5ad")
    return pd.concat(
        run_fold("kang", make_fold(raw, spec, group, seed=seed), spec, seed, BEFORE_AFTER, ["control", "mean_shift"])
        for group in ("CD14 Mono", "CD4 Naive T", "B")
        for seed in seeds
    )


def norman(split_seeds: Iterable[int]) -> pd.DataFrame:
    spec = DatasetSpec(condition_key="perturbation", control="control", combination_separator="+")
    raw = ad.read_h5ad(DATA / "norman2019_k562_crispra_subset.h5ad")
    tables = []
    for split_seed in split_seeds:
        fold = make_fold(raw, spec, Holdout(str(split_seed), "combination"), seed=1)
        tables.append(run_fold("norman", fold, spec, 1, BEFORE_AFTER, ["control", "additive"]).assign(group=f"split seed {split_seed}"))
    return pd.concat(tables)


def papalexi() -> pd.DataFrame:
    spec = DatasetSpec(condition_key="perturbation", control="control")
    raw = ad.read_h5ad(DATA / "papalexi2021_thp1_crispr.h5ad")
    fold = make_fold(raw, spec, Holdout("rep_3", group_key="replicate"), seed=1)
    return run_fold("papalexi", fold, spec, 1, BEFORE_AFTER, ["control", "mean_shift"])


def summary(results: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Mean of each metric and diagnostic over targets and seeds."""
    shown = [m for m in METRICS + DIAGNOSTICS if m in set(results["metric"])]
    table = results.pivot_table(index=list(by), columns="metric", values="value", sort=False)
    return table.reindex(columns=shown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="mcfaline,kang,norman,papalexi")
    args = parser.parse_args()
    chosen = args.datasets.split(",")
    start = time.perf_counter()
    parts = {
        "mcfaline": lambda: mcfaline((1, 2)),
        "kang": lambda: kang((1, 2, 3)),
        "norman": lambda: norman((1, 2, 3)),
        "papalexi": papalexi,
    }
    results = pd.concat([parts[name]() for name in chosen], ignore_index=True)
    seconds = time.perf_counter() - start
    per_target = results.groupby(["dataset", "model", "group", "seed", "metric"], sort=False)["value"].mean().reset_index()
    write_table(per_target, RESULTS / "screens_defaults.csv")

    sections = {
        "mcfaline": "McFaline 2023: each glioblastoma line held out (every perturbation), seeds 1, 2",
        "kang": "Kang 2018: CD14 Mono, CD4 Naive T and B held out, seeds 1, 2, 3",
        "norman": "Norman 2019: held-out pairs (combination split, split seeds 1, 2, 3; seed 1)",
        "papalexi": "Papalexi 2021: replicate rep_3's perturbed cells held out (every knock-out), seed 1",
    }
    text = [
        "# Multi-task defaults on screens: McFaline, Kang, Norman, Papalexi\n\n",
        provenance(f"python benchmarks/screens_defaults/screens_defaults.py --datasets {args.datasets}", seconds),
        (
            "\n`before`: the former defaults (`prediction: decoded`, no `bound_change`); `now`: the "
            "current defaults (`prediction: residual`, `bound_change: true`); the other `mtae` rows "
            "isolate one factor each (see the script's docstring). Mean over held-out targets and "
            "seeds. Diagnostics: `change_x` predicted / true size of the mean change; `spread_x` "
            "predicted / true per-gene variance; `bounded` the share of targets `bound_change` scaled down, "
            "`bound_scale` the mean factor it scaled their mean change by; "
            "`recon_gain` 1 - validation reconstruction error / that of the group-and-condition mean.\n"
        ),
    ]
    for name in chosen:
        subset = results[results["dataset"] == name]
        text.append(f"\n## {sections[name]}\n\n" + summary(subset, ["model"]).round(3).to_markdown() + "\n")
        if name == "mcfaline":
            for metric in ("r2_all", "e_distance_rel", "change_x"):
                per_line = subset[subset["metric"] == metric].pivot_table(index="model", columns="group", values="value", sort=False)
                text.append(f"\n### {metric} per held-out line\n\n" + per_line.round(3).to_markdown() + "\n")
    atomic_write(RESULTS / "screens_defaults.md", lambda f: f.write("".join(text).encode()))
    print("".join(text))


if __name__ == "__main__":
    main()
