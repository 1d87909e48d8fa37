"""The field's own models beside mtpert's, per dataset: scores, costs, CI-backed verdicts and time
to accuracy, read from the study stores the peers' runs were added to.

Run (after the benchmarks in study.yaml): python benchmarks/peers/peers_summary.py
Writes benchmarks/peers/peers.csv (every comparison: mtpert model vs peer, per dataset and metric,
the paired difference, its bootstrap 95% CI and the verdict), costs.csv (per dataset and model:
runs, median train seconds and peak memory) and peers.md (the tables a reader wants).

- Train time is the peer's own (``peer_train_seconds``: from the start of its ``train`` function,
  its imports included) and mtpert's ``fit_seconds``; peak memory is the peer process's
  (``peer_peak_rss_mb``) or the mtpert worker's (``peak_rss_mb``).
- A verdict pairs the two models' scores on the same held-out target, seed and split seed
  (``mtpert.benchmark.verdict``): "won" where the 95% CI of mtpert's advantage excludes zero.
- Time to accuracy: on each fold where mtpert's model scores at least the peer's R² top-100,
  the peer's train time divided by mtpert's; the summary is the median ratio over those folds and
  how many folds qualify.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for _common
from _common import BENCHMARKS, RESULTS, provenance

from mtpert.benchmark.store import ResultStore
from mtpert.benchmark.verdict import paired_verdict
from mtpert.io import atomic_write, write_table

PEERS = ("pertpy_scgen", "cpa", "state", "cellflow")
MTPERT = ("mtae_plus_ot_anchored", "mtae_plus_ot")
"""mtpert's default and the family's best un-anchored variant."""
BASELINES = ("control", "mean_shift", "additive", "linear")
STORES = {
    "Kang (held-out cell type)": "kang_grid",
    "Norman (unseen pairs)": "screen_norman",
    "Papalexi (held-out replicate)": "screen_papalexi",
}
COMPARISON = (
    "Model minus peer (positive: the model is better; distances negated), paired over held-out targets x seeds, "
    "with its 95% bootstrap CI; won or lost where the CI excludes 0:"
)
FAMILIES = {
    "R² all": "r2_all",
    "R² top-20": "r2_top20",
    "R² top-100": "r2_top100",
    "Pearson Δ": "pearson_delta_all",
    "direction top-100": "direction_top100",
    "DEG overlap top-100": "deg_overlap_top100",
    "E-distance rel": "e_distance_rel",
    "MMD rel": "mmd_rel",
    "false-positive effect": "effect_false_positive",
}


def main() -> None:
    started = time.perf_counter()
    comparisons, costs, scores, speed = [], [], [], []
    for dataset, store in STORES.items():
        results = ResultStore(BENCHMARKS / store).results()
        peers = [p for p in PEERS if p in set(results["model"])]
        if not peers:
            continue
        models = [m for m in (*MTPERT, *BASELINES, *peers) if m in set(results["model"])]
        metrics = [m for m in FAMILIES.values() if m in set(results["metric"])]
        verdict = paired_verdict(
            results, baselines=peers, metrics=metrics, models=[m for m in models if m not in peers]
        )
        comparisons.append(verdict.assign(dataset=dataset))
        runs = results.drop_duplicates("run_id").set_index("run_id")
        train = (
            runs["peer_train_seconds"].fillna(runs["fit_seconds"])
            if "peer_train_seconds" in runs
            else runs["fit_seconds"]
        )
        memory = (
            runs[["peak_rss_mb", "peer_peak_rss_mb"]].max(axis=1)
            if "peer_peak_rss_mb" in runs
            else runs["peak_rss_mb"]
        )
        table = pd.DataFrame({"model": runs["model"], "train_s": train, "peak_mb": memory})
        cost = table.groupby("model").agg(
            runs=("train_s", "size"), train_s=("train_s", "median"), peak_mb=("peak_mb", "max")
        )
        costs.append(cost.loc[[m for m in models if m in cost.index]].assign(dataset=dataset))
        mean = (
            results[results["metric"].isin(metrics)]
            .groupby(["model", "metric"])["value"]
            .mean()
            .unstack()
        )
        scores.append(
            mean.loc[[m for m in models if m in mean.index], metrics].assign(dataset=dataset)
        )
        speed += time_to_accuracy(results, train, dataset, peers)
    verdicts = pd.concat(comparisons, ignore_index=True)
    write_table(verdicts, RESULTS / "peers.csv")
    write_table(pd.concat(costs).reset_index(), RESULTS / "costs.csv")
    text = report(
        pd.concat(scores),
        verdicts,
        pd.concat(costs),
        pd.DataFrame(speed),
        time.perf_counter() - started,
    )
    atomic_write(RESULTS / "peers.md", lambda f: f.write(text.encode()))


def time_to_accuracy(
    results: pd.DataFrame, train: pd.Series, dataset: str, peers: list[str]
) -> list[dict]:
    """Per peer: on the folds where mtpert's default scores at least the peer's R² top-100, the
    peer's train time over mtpert's (median, and the number of such folds of those both ran)."""
    keys = ["group", "condition", "seed"] + (["split_seed"] if "split_seed" in results else [])
    r2 = results[results["metric"] == "r2_top100"]
    fold = r2.groupby([*keys, "model"], dropna=False).agg(
        value=("value", "mean"), run_id=("run_id", "first")
    )
    fold = fold.assign(train_s=train.reindex(fold["run_id"]).to_numpy())
    by_fold = fold.reset_index().pivot_table(
        index=[k for k in keys if k != "condition"], columns="model", values=["value", "train_s"]
    )
    rows = []
    for peer in peers:
        if ("value", peer) not in by_fold or ("value", MTPERT[0]) not in by_fold:
            continue
        both = by_fold[
            [("value", MTPERT[0]), ("value", peer), ("train_s", MTPERT[0]), ("train_s", peer)]
        ].dropna()
        at_least = both[("value", MTPERT[0])] >= both[("value", peer)]
        ratio = both.loc[at_least, ("train_s", peer)] / both.loc[at_least, ("train_s", MTPERT[0])]
        rows.append(
            {"dataset": dataset, "peer": peer, "folds": len(both), "folds_mtpert_at_least_as_accurate": int(at_least.sum()),
             "median_speedup": float(np.median(ratio)) if len(ratio) else np.nan}
        )  # fmt: skip
    return rows


def report(
    scores: pd.DataFrame,
    verdicts: pd.DataFrame,
    costs: pd.DataFrame,
    speed: pd.DataFrame,
    seconds: float,
) -> str:
    names = {v: k for k, v in FAMILIES.items()}
    lines = [
        "# The field's own models beside mtpert's",
        "",
        provenance("python benchmarks/peers/peers_summary.py", seconds),
        "",
    ]
    for dataset in dict.fromkeys(scores["dataset"]):
        table = scores[scores["dataset"] == dataset].drop(columns="dataset").rename(columns=names)
        lines += [
            f"## {dataset}",
            "",
            "Mean over held-out targets and seeds (every run each model has):",
            "",
            table.round(3).to_markdown(),
            "",
        ]
        cost = costs[costs["dataset"] == dataset].drop(columns="dataset")
        lines += [
            "Runs, median train seconds (one thread each) and peak memory (MiB):",
            "",
            cost.round(1).to_markdown(),
            "",
        ]
        shown = [*MTPERT, *(b for b in BASELINES if b != "control")]
        mine = verdicts[(verdicts["dataset"] == dataset) & verdicts["model"].isin(shown)]
        if len(mine):
            cells = mine.assign(
                cell=[
                    f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}] {v}"
                    if v != "too few pairs"
                    else f"{d:+.3f} ({v})"
                    for d, lo, hi, v in mine[
                        ["difference", "ci_low", "ci_high", "verdict"]
                    ].itertuples(index=False)
                ],
                family=mine["metric"].map(names),
            )
            cells["comparison"] = cells["model"] + " − " + cells["baseline"]
            order = [f"{m} − {p}" for m in shown for p in PEERS]
            wide = cells.pivot_table(
                index="comparison", columns="family", values="cell", aggfunc="first"
            )
            wide = wide.reindex(
                index=[o for o in order if o in wide.index],
                columns=[f for f in FAMILIES if f in wide.columns],
            )
            lines += [
                COMPARISON,
                "", wide.to_markdown(), "",
            ]  # fmt: skip
    if len(speed):
        lines += [
            "## Time to accuracy",
            "",
            "Peer's train time / mtpert default's, on folds where mtpert's default has at least the peer's R² top-100:",
            "",
        ]
        lines += [speed.round(2).to_markdown(index=False), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
