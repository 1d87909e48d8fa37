"""Parity of mtpert's ``scgen`` with pertpy 1.0.3's ``Scgen`` on identical Kang splits.

Run: bash benchmarks/parity_scgen/scgen_vs_pertpy.sh [--groups "CD4 Naive T,CD14 Mono,B"] [--seeds 1]
[--epochs 100] (the .sh builds pertpy's venv, then calls this script with --peer-python).

For each held-out cell type and seed, the data are prepared as :func:`mtpert.benchmark.make_fold`
prepares them (2,000 HVGs chosen without the held-out stimulated cells; the seeded train/val
split); the fit cells, their train/val division and the target's control cells go to a temporary
h5ad that pertpy's process reads with its own interpreter. Both models get the published
hyperparameters, the same cells and the same validation cells, and train for the same number of
epochs without early stopping. Both predictions are scored by mtpert's metrics against the same
real cells. Writes benchmarks/parity_scgen/parity_scgen.{csv,md}.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import RESULTS, load_kang, provenance  # noqa: E402

from mtpert._array import dense  # noqa: E402
from mtpert.benchmark import make_fold  # noqa: E402
from mtpert.data import DatasetSpec  # noqa: E402
from mtpert.io import atomic_write, write_table  # noqa: E402
from mtpert.metrics import evaluate_prediction  # noqa: E402
from mtpert.models import get_model  # noqa: E402

PEER = Path(__file__).with_name("pertpy_scgen_peer.py")
METRICS = ["r2_all", "r2_top100"]
TOLERANCE = 0.05
"""Largest |R²(mtpert) - R²(pertpy)| called agreement, on each metric."""


def peer_prediction(
    peer_python: str,
    fit: ad.AnnData,
    target: pd.Index,
    spec: DatasetSpec,
    epochs: int,
    seed: int,
    patience: int = 0,
) -> tuple[np.ndarray, dict[str, float]]:
    """pertpy's predicted cells for ``target`` (control cells in ``fit``), clipped at 0 as mtpert
    clips its own (the decoder's raw output can be negative, which log1p data never is), and
    what the peer recorded (train and predict seconds, epochs, peak memory; see PEER)."""
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "fit.h5ad", Path(tmp) / "pred.h5ad"
        fit = fit.copy()
        fit.obs["target"] = fit.obs_names.isin(target)
        fit.uns["keys"] = {
            "cell_type": spec.cell_type_key,
            "condition": spec.condition_key,
            "control": spec.control,
            "perturbed": spec.conditions(fit)[0],
        }
        fit.write_h5ad(inp)
        env = {**os.environ, "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}
        cmd = [peer_python, str(PEER), str(inp), str(out), "--epochs", str(epochs), "--seed", str(seed),
               "--patience", str(patience)]  # fmt: skip
        subprocess.run(cmd, check=True, env=env)
        pred = ad.read_h5ad(out)
    return np.clip(pred[target].X, 0.0, None), {k: float(v) for k, v in pred.uns.items()}


def run(args: argparse.Namespace) -> pd.DataFrame:
    spec = DatasetSpec()
    raw = load_kang()
    rows = []
    for group in args.groups:
        for seed in args.seeds:
            fold = make_fold(raw, spec, group, seed=seed)
            data, split = fold.data, fold.split
            (target,) = split.targets
            train, val = split.subset(data, "train"), split.subset(data, "val")
            control, truth = data[target.control], data[target.truth]

            model = get_model("scgen")(
                spec, max_epochs=args.epochs, patience=args.epochs, seed=seed, num_threads=1, progress=False
            )
            start = time.perf_counter()
            model.fit(train, val)
            seconds = {"mtpert": time.perf_counter() - start}
            preds = {"mtpert": model.predict(control, target.condition).X}

            fit = data[split.train.append(split.val)].copy()
            fit.obs["split"] = np.where(fit.obs_names.isin(split.train), "train", "val")
            preds["pertpy"], peer = peer_prediction(
                args.peer_python, fit, target.control, spec, args.epochs, seed
            )
            seconds["pertpy"] = peer["train_seconds"]
            preds["control (reference)"], seconds["control (reference)"] = control.X, 0.0

            for name, X in preds.items():
                pred = ad.AnnData(dense(X), obs=control.obs.copy(), var=control.var[[]].copy())
                pred.obs[spec.condition_key] = target.condition
                scores = evaluate_prediction(ad.concat([control, truth]), pred, spec, metrics=METRICS, seed=seed)
                for metric, value in zip(scores["metric"], scores["value"], strict=True):
                    rows.append({"group": group, "seed": seed, "implementation": name, "metric": metric,
                                 "value": value, "train_seconds": seconds[name], "epochs": args.epochs})
            print(f"{group} | seed {seed} | train seconds {seconds}", flush=True)
    return pd.DataFrame(rows)


def summarize(results: pd.DataFrame) -> str:
    """Markdown: both implementations side by side per cell type, the gap, and the verdict."""
    wide = results.pivot_table(index=["group", "seed", "metric"], columns="implementation", values="value")
    wide["|diff|"] = (wide["mtpert"] - wide["pertpy"]).abs()
    wide["within"] = np.where(wide["|diff|"] <= TOLERANCE, "yes", "no")
    cost = results.drop_duplicates(["group", "seed", "implementation"]).pivot_table(
        index=["group", "seed"], columns="implementation", values="train_seconds"
    )[["mtpert", "pertpy"]]
    n_within = int((wide["within"] == "yes").sum())
    return (
        f"Tolerance: |R²(mtpert) - R²(pertpy)| <= {TOLERANCE} on each metric; "
        f"{n_within} of {len(wide)} comparisons are within it.\n\n"
        + wide.reset_index().to_markdown(index=False, floatfmt=".3f")
        + "\n\nTrain seconds (one CPU thread each):\n\n"
        + cost.reset_index().to_markdown(index=False, floatfmt=".0f")
        + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-python", required=True, help="interpreter of the pertpy venv")
    parser.add_argument("--groups", type=lambda s: s.split(","), default=["CD4 Naive T", "CD14 Mono", "B"])
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[1])
    parser.add_argument("--epochs", type=int, default=100)
    args = parser.parse_args()
    start = time.perf_counter()
    results = run(args)
    write_table(results, RESULTS / "parity_scgen.csv")
    command = (
        f'bash benchmarks/parity_scgen/scgen_vs_pertpy.sh --groups "{",".join(args.groups)}" '
        f"--seeds {','.join(map(str, args.seeds))} --epochs {args.epochs}"
    )
    text = (
        "# scGen parity: mtpert `scgen` vs pertpy 1.0.3 `Scgen` (scvi-tools 1.4.2, JAX, CPU)\n\n"
        + provenance(command, time.perf_counter() - start)
        + f"- {args.epochs} epochs for both, no early stopping; batch 32; published defaults "
        "(800 x 2 hidden, latent 100, dropout 0.2, KL weight 5e-5, lr 1e-3); same HVGs, same "
        "train/val cells, same target control cells; scored by mtpert's metrics\n\n"
        + summarize(results)
    )
    atomic_write(RESULTS / "parity_scgen.md", lambda f: f.write(text.encode()))
    print(text)


if __name__ == "__main__":
    main()
