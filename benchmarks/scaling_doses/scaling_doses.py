"""One multi-task model for every dose vs one single-condition model per dose, as doses grow.

Run: taskset -c 1 nice -n 10 python benchmarks/scaling_doses/scaling_doses.py [--doses 2,4,8,16] [--seeds 1,2,19193]
     [--with-scgen]

An approach whose table benchmarks/scaling_doses/scaling_doses/<approach>.csv exists is not run again
(delete the file to rerun it); the summary is written from every table present.

Simulated data (mtpert.data.simulate; small, to keep the run short on one CPU core): 4 cell types,
500 genes, 50 cells per (cell type, dose) group and 50 control cells per cell type, doses
log-spaced from 0.05 to 5 (the Hill curve has its midpoint at 0.5). type_0 is held out at every
dose (its control cells are the input). Each seed draws its own data, split and initialization.
Approaches, each (number of doses, seed) in a fresh process so its peak resident memory is its own:

* ``multitask``: one ``mtae`` with the continuous dose encoding, trained on every dose at once;
* ``per_dose_mtae``: the same architecture and training settings without the dose: one ``mtae``
  per dose, each trained on the control cells and that dose only (a single-condition model);
* ``per_dose_scgen`` (``--with-scgen``): one scGen per dose at its published defaults (800-800
  hidden, latent 100), as the thesis ran single-perturbation baselines; needs a model registered
  as ``scgen``.

Every network stops early on its validation cells.
Recorded: total fit seconds, stored parameters (all models of an approach together), peak RSS and
RSS after loading the data, and per dose R² of mean expression over the top-100 true DEGs and the
rank of the prediction among the doses (mtpert.metrics.condition_rank, 0 best, 0.5 = dose-blind).
Writes benchmarks/scaling_doses/scaling_doses/<approach>.csv and scaling_doses.{md,png}.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for _common
from _common import RESULTS, commit, provenance

from mtpert.benchmark import make_fold
from mtpert.benchmark.holdout import seed_everything
from mtpert.data import DatasetSpec, simulate, single_dose
from mtpert.io import atomic_write, write_table
from mtpert.metrics import condition_rank, evaluate
from mtpert.models import MODELS, PerturbationModel, get_model
from mtpert.models.base import WEIGHTS_FILE

SPEC = DatasetSpec(dose_key="dose")
HELD_OUT = "type_0"
NETWORK = {
    "hidden": (128,),
    "latent_dim": 32,
    "max_epochs": 60,
    "patience": 10,
    "progress": False,
    "num_threads": 1,
}
"""The multi-task model's settings, shared by its single-condition twin."""


@dataclass(frozen=True)
class Approach:
    """A registered model, its constructor options, and whether one is trained per dose."""

    model: str
    options: Mapping[str, object]
    per_dose: bool


APPROACHES = {
    "multitask": Approach("mtae", NETWORK, per_dose=False),
    "per_dose_mtae": Approach("mtae", NETWORK, per_dose=True),
    "per_dose_scgen": Approach("scgen", {"progress": False, "num_threads": 1}, per_dose=True),
}
OUT = RESULTS / "scaling_doses"


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def doses_for(n: int) -> tuple[float, ...]:
    return tuple(float(d) for d in np.round(np.geomspace(0.05, 5.0, n), 4))


def n_stored(model: PerturbationModel) -> int:
    """Numbers the saved model holds (weights and buffers): its size on disk, in values."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save(tmp)
        tensors = torch.load(f"{tmp}/{WEIGHTS_FILE}", weights_only=True)
    return int(sum(t.numel() for t in tensors.values()))


def run(config: tuple[int, str, int]) -> list[dict]:
    """Fit one approach at one number of doses and score it per dose; runs in its own process."""
    n_doses, approach, seed = config
    sim = simulate(n_cell_types=4, n_genes=500, n_cells=50, doses=doses_for(n_doses), seed=seed)
    fold = make_fold(sim, SPEC, HELD_OUT, seed=seed, n_hvg=0)
    data, split = fold.data, fold.split
    train, val = split.subset(data, "train"), split.subset(data, "val")
    loaded_mb = peak_rss_mb()
    how = APPROACHES[approach]
    preset = get_model(how.model)
    control = data[split.targets[0].control]
    preds, fit_seconds, stored = {}, 0.0, 0
    if not how.per_dose:
        seed_everything(seed)
        start = time.perf_counter()
        model = preset(SPEC, **how.options).fit(train, val)
        fit_seconds = time.perf_counter() - start
        stored = n_stored(model)
        preds = {t.dose: model.predict(control, t.condition, t.dose) for t in split.targets}
    for target in split.targets if how.per_dose else ():  # control cells and that dose, no dose key
        (train_d, spec), (val_d, _) = (single_dose(c, SPEC, target.dose) for c in (train, val))
        seed_everything(seed)
        start = time.perf_counter()
        model = preset(spec, **how.options).fit(train_d, val_d)
        fit_seconds += time.perf_counter() - start
        stored += n_stored(model)
        preds[target.dose] = model.predict(control, target.condition)
    truths = {t.dose: data[t.truth] for t in split.targets}
    ranks = condition_rank(truths, preds)
    return [
        {
            "n_doses": n_doses,
            "approach": approach,
            "seed": seed,
            "dose": dose,
            "r2_top100": float(
                evaluate(control, truths[dose], pred, metrics="r2_top100")["value"].iloc[0]
            ),
            "rank": float(ranks[dose]),
            "fit_seconds": fit_seconds,
            "n_stored": stored,
            "peak_rss_mb": peak_rss_mb(),
            "rss_after_loading_mb": loaded_mb,
            "n_train_cells": train.n_obs,
        }
        for dose, pred in preds.items()
    ]


def summarize(results: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per (n_doses, approach), means over seeds: totals, and accuracy averaged over doses; and
    each per-dose approach over the multi-task model."""
    runs = results.groupby(["n_doses", "approach", "seed"]).agg(
        fit_seconds=("fit_seconds", "first"),
        n_stored=("n_stored", "first"),
        peak_rss_mb=("peak_rss_mb", "first"),
        training_rss_mb=("training_rss_mb", "first"),
        r2_top100=("r2_top100", "mean"),
        rank=("rank", "mean"),
    )
    table = runs.groupby(["n_doses", "approach"]).mean()
    table["r2_top100_sd_seeds"] = runs["r2_top100"].groupby(["n_doses", "approach"]).std()
    base = table.xs("multitask", level="approach")
    ratios = []
    for approach in (
        table.index.get_level_values("approach").unique().drop("multitask", errors="ignore")
    ):
        mine = table.xs(approach, level="approach")
        ratios.append(
            pd.DataFrame(
                {
                    "approach": approach,
                    "time_ratio": mine["fit_seconds"] / base["fit_seconds"],
                    "params_ratio": mine["n_stored"] / base["n_stored"],
                    "training_memory_ratio": mine["training_rss_mb"] / base["training_rss_mb"],
                    "r2_top100_difference": mine["r2_top100"] - base["r2_top100"],
                }
            )
        )
    return table, pd.concat(ratios).reset_index().set_index(
        ["n_doses", "approach"]
    ) if ratios else pd.DataFrame()


def plot(table: pd.DataFrame, path) -> None:
    columns = [
        ("fit_seconds", "total fit seconds"),
        ("n_stored", "stored parameters"),
        ("training_rss_mb", "peak RSS - RSS after loading (MB)"),
        ("r2_top100", "mean R² top-100 DEGs"),
    ]
    fig, axes = plt.subplots(1, len(columns), figsize=(4 * len(columns), 3.3))
    for ax, (column, label) in zip(axes, columns, strict=True):
        for approach, part in table[column].groupby(level="approach"):
            part = part.droplevel("approach")
            ax.plot(part.index, part.to_numpy(), marker="o", label=approach)
        ax.set_xscale("log", base=2)
        ax.set_xticks(
            table.index.get_level_values("n_doses").unique(),
            [str(n) for n in table.index.get_level_values("n_doses").unique()],
        )
        ax.set_xlabel("number of doses")
        ax.set_ylabel(label)
        if column in ("fit_seconds", "n_stored"):
            ax.set_yscale("log")
    axes[0].legend(fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--doses", default="2,4,8,16", help="comma-separated numbers of doses")
    parser.add_argument("--seeds", default="1,2,19193", help="comma-separated seeds")
    parser.add_argument(
        "--with-scgen",
        action="store_true",
        help="also one scGen per dose (needs a registered 'scgen')",
    )
    args = parser.parse_args()
    approaches = ["multitask", "per_dose_mtae"] + (["per_dose_scgen"] if args.with_scgen else [])
    if args.with_scgen and "scgen" not in MODELS:
        parser.error("no model is registered as 'scgen' (it comes with the baselines branch)")
    todo = [a for a in approaches if not (OUT / f"{a}.csv").is_file()]
    # interleaved, so that a change in the machine's load affects every approach alike
    configs = [
        (int(n), a, int(s))
        for n in args.doses.split(",")
        for s in args.seeds.split(",")
        for a in todo
    ]
    start = time.perf_counter()
    rows: list[dict] = []
    with ProcessPoolExecutor(
        max_workers=1, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1
    ) as pool:
        for config, result in zip(configs, pool.map(run, configs), strict=True):
            print(f"done {config}: {result[0]['fit_seconds']:.1f} s", flush=True)
            rows += result
    seconds = time.perf_counter() - start
    for approach in todo:
        mine = pd.DataFrame([r for r in rows if r["approach"] == approach]).assign(
            commit=commit(),
            run_utc=f"{datetime.now(UTC):%Y-%m-%d %H:%M}",
            run_wall_seconds=round(seconds),
        )
        write_table(mine, OUT / f"{approach}.csv")
    present = [a for a in APPROACHES if (OUT / f"{a}.csv").is_file()]
    results = pd.concat([pd.read_csv(OUT / f"{a}.csv") for a in present], ignore_index=True)
    results["training_rss_mb"] = results["peak_rss_mb"] - results["rss_after_loading_mb"]
    table, ratios = summarize(results)
    plot(table, RESULTS / "scaling_doses.png")
    command = f"taskset -c 1 nice -n 10 python benchmarks/scaling_doses/scaling_doses.py --doses {args.doses} --seeds {args.seeds}"
    models = {a: get_model(APPROACHES[a].model).cls for a in present}
    seeds_per_approach = "; ".join(
        f"{a} {','.join(map(str, sorted(results.loc[results['approach'] == a, 'seed'].unique())))}" for a in present
    )
    text = (
        "# Scaling with the number of doses: one multi-task model vs one model per dose\n\n"
        + provenance(command + (" --with-scgen" if args.with_scgen else ""), seconds)
        + f"- run now: {', '.join(todo) or 'nothing (every table present)'}; the wall time covers only "
        f"these; per-approach tables in `scaling_doses/`\n"
        + "".join(
            f"- {a}: `{m.__module__}.{m.__qualname__}`; table made at commit {row['commit']}, "
            f"{row['run_utc']} UTC, by a run of {row['run_wall_seconds']} s wall\n"
            for a, m in models.items()
            for row in [results[results["approach"] == a].iloc[0]]
        )
        + "\n"
        + __doc__[__doc__.index("Simulated data") : __doc__.index("Writes")].strip()
        + "\n\n"
        "mtae settings (both mtae approaches): "
        + ", ".join(f"{k}={v}" for k, v in NETWORK.items())
        + "; one CPU thread, on a machine shared with other jobs (absolute times are noisy; the ratios "
        "compare runs made side by side). Peak RSS is of the whole process (Python, torch, the data); "
        "`training_rss_mb` is peak RSS minus RSS after loading the data, the part training added.\n\n"
        "## Totals per approach (all its models together; accuracy averaged over doses; means over "
        f"the seeds each approach ran: {seeds_per_approach})\n\n" + table.round(3).to_markdown() + "\n\n"
        "## Per-dose approaches over the multi-task model\n\n"
        + ratios.round(3).to_markdown()
        + "\n\n"
        "## R² over the top-100 true DEGs, per dose (means over seeds)\n\n"
        + results.pivot_table(index=["n_doses", "dose"], columns="approach", values="r2_top100")
        .round(3)
        .to_markdown()
        + "\n\n![scaling](scaling_doses.png)\n"
    )
    atomic_write(RESULTS / "scaling_doses.md", lambda f: f.write(text.encode()))
    print(text)


if __name__ == "__main__":
    main()
