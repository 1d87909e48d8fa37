"""Which simple change points best at a held-out group's true change, on the screens where the
anchored model loses Pearson Δ? Closed-form anchors only, no network.

Run: taskset -c 1 nice -n 10 python benchmarks/anchor_direction/anchor_direction.py

On McFaline (a line held out) and Papalexi (a replicate held out), split seed 1 as the benchmark
makes it, each candidate change is built from the training cells and scored against each held-out
knock-down's true change (its perturbed cells' mean minus its own control cells' mean, over all
genes) by Pearson r, the metric ``pearson_delta_all``. Pearson ignores scale, so an anchor's
weight does not matter here; which direction it points in does. The candidates:

* ``pooled``: the mean shift baseline's change (one mean over every training cell of the cell
  type; Papalexi's training control cells include the held-out replicate's own);
* ``group_average``: the anchored model's change, each training group's change from its own
  control cells, averaged with equal weight;
* ``matched_controls``: the pooled perturbed cells minus the training groups' control means
  weighted as the perturbed cells are (the pooled change without the held-out group's controls);
* ``shared``: the screen's shared response, the mean of ``group_average`` over the knock-downs
  (the ``global_mean`` baseline's direction);
* ``shared_plus_deviation``: ``shared`` plus each knock-down's deviation from it, both weighted
  by :func:`mtpert.models.anchor.anchor_weights` (``expected``), and ``..._lower_bound`` with the
  deviations weighted by the ``lower_bound`` rule (no deviation where it does not repeat);
* ``anchor_denoised``: the anchored model's closed-form prediction, ``group_average`` times its
  anchor weight plus, where it pays on the training groups, the denoising of the held-out group's
  control cells (:class:`mtpert.models.anchor.ControlReference`, ``denoise_control``), which
  removes the part of their mean's deviation from the groups' average that noise explains.

Writes benchmarks/anchor_direction/anchor_direction.{csv,md}.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for _common
from _common import REPO, provenance, record

from mtpert._array import dense
from mtpert.benchmark.executors import load
from mtpert.data import DatasetSpec
from mtpert.data.folds import Holdout, make_fold
from mtpert.models.anchor import ControlReference, anchor_weights
from mtpert.models.simple import MeanChanges, mean_changes

DATA_DIR = Path(os.environ.get("MTPERT_DATA_DIR", str(REPO.parent / "shared" / "data")))
SCREENS = {  # file, spec, and the held-out unit's column (the groups the anchor is judged over)
    "mcfaline": (
        "mcfaline2023_gbm_crispri_3lines.h5ad",
        DatasetSpec(condition_key="perturbation"),
        "cell_type",
    ),
    "papalexi": (
        "papalexi2021_thp1_crispr.h5ad",
        DatasetSpec(condition_key="perturbation", guide_key="guide"),
        "replicate",
    ),
}
SEED = 1
MIN_CELLS = 5


def candidates(
    train, spec: DatasetSpec, unit: str, held_out_control: np.ndarray
) -> dict[str, dict[str, np.ndarray]]:
    """Each candidate's change (genes,) per training knock-down, from the training cells (and
    for ``anchor_denoised`` the held-out group's control cells)."""
    by_unit = DatasetSpec(**{**spec.to_dict(), "cell_type_key": unit})
    table = mean_changes(train, by_unit, MIN_CELLS, model="probe", noise=True)
    average = table.averaged()
    pooled = mean_changes(train, spec, MIN_CELLS, model="probe").averaged()
    n_keys = len(table.keys)
    shared_table = MeanChanges(
        [("shared", None)],
        table.groups,
        np.nanmean(table.changes, 0)[None],
        (np.nanmean(table.noise, 0) / n_keys)[None],
    )
    shared = anchor_weights(shared_table)[0] * shared_table.averaged()[0]
    deviations = MeanChanges(
        table.keys, table.groups, table.changes - shared_table.changes, table.noise
    )
    X, obs = dense(train.X), train.obs
    control = spec.is_control(train)
    units = obs[unit].astype(str).to_numpy()
    control_mean = {u: X[control & (units == u)].mean(0) for u in table.groups}
    weights = anchor_weights(table)
    reference, _ = ControlReference.of(table, weights)
    denoising = 0.0 if reference is None else reference.shift(held_out_control)
    out: dict[str, dict[str, np.ndarray]] = {}
    for k, (condition, _) in enumerate(table.keys):
        cells = (obs[spec.condition_key] == condition).to_numpy()
        matched = np.mean([control_mean[u] for u in units[cells]], axis=0)
        out[condition] = {
            "pooled": pooled[k],
            "group_average": average[k],
            "matched_controls": X[cells].mean(0) - matched,
            "shared": shared,
            "anchor_denoised": weights[k] * average[k] + denoising,
        }
    for rule in ("expected", "lower_bound"):
        weights = anchor_weights(deviations, rule)
        suffix = "" if rule == "expected" else "_lower_bound"
        for k, (condition, _) in enumerate(table.keys):
            out[condition][f"shared_plus_deviation{suffix}"] = (
                shared + weights[k] * deviations.averaged()[k]
            )
    return out


def score(screen: str) -> pd.DataFrame:
    """Pearson r of each candidate with each held-out knock-down's true change, every fold."""
    file, spec, unit = SCREENS[screen]
    raw = load(str(DATA_DIR / file), spec)
    rows = []
    for held_out in sorted(raw.obs[unit].astype(str).unique()):
        group_key = None if unit == spec.cell_type_key else unit
        fold = make_fold(raw, spec, Holdout(held_out, "group", None, group_key), seed=SEED, n_hvg=0)
        data, train = fold.data, fold.split.subset(fold.data, "train")
        X, obs = dense(data.X), data.obs
        held = (obs[unit].astype(str) == held_out).to_numpy()
        control = X[held & spec.is_control(data)]
        truth_control = control.mean(0)
        for condition, changes in candidates(train, spec, unit, control).items():
            cells = held & (obs[spec.condition_key] == condition).to_numpy()
            if cells.sum() < MIN_CELLS:
                continue
            truth = X[cells].mean(0) - truth_control
            for name, change in changes.items():
                r = np.corrcoef(change, truth)[0, 1] if np.ptp(change) else np.nan
                rows.append(
                    {
                        "screen": screen,
                        "held_out": held_out,
                        "condition": condition,
                        "candidate": name,
                        "r": r,
                    }
                )
    return pd.DataFrame(rows)


def report(table: pd.DataFrame, command: str, seconds: float) -> str:
    means = table.pivot_table(index="candidate", columns="screen", values="r", aggfunc="mean")
    folds = table.pivot_table(
        index="candidate", columns=["screen", "held_out"], values="r", aggfunc="mean"
    )
    return "\n".join(
        [
            "# Which simple change points best at a held-out group's true change\n",
            (
                "Generated by `anchor_direction.py`; see its docstring. Pearson r with each "
                "held-out knock-down's true change over all genes, averaged over the knock-downs "
                f"and held-out groups (split seed {SEED}).\n"
            ),
            means.round(4).to_markdown(),
            "\n## Per held-out group\n",
            folds.round(4).to_markdown(),
            "\n## Provenance\n",
            provenance(command, seconds),
        ]
    )


def main() -> None:
    start = time.perf_counter()
    table = pd.concat([score(screen) for screen in SCREENS], ignore_index=True)
    record(
        "anchor_direction", table, lambda command, seconds: report(table, command, seconds), start
    )


if __name__ == "__main__":
    main()
