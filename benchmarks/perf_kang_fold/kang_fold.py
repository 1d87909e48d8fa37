"""Speed, memory and accuracy of every model, and of the peers, on one Kang OOD fold, in one run.

Run (from the repository root, one pinned core):
    taskset -c 1 nice -n 10 python benchmarks/perf_kang_fold/kang_fold.py [--models mtae,scgen,...] [--bfloat16 mtae,...]
        [--pertpy-python .peers/pertpy-scgen/bin/python] [--scbutterfly-python ... --scbutterfly-script ...]

The fold: Kang 2018 CD4 Naive T held out (seed 1), 2,000 HVGs chosen without its stimulated cells,
the seeded train/validation split of :func:`mtpert.data.holdout_group`. Each mtpert model is
fitted in a fresh process (``--worker``) with one torch thread and its registered defaults
(early stopping on the validation cells), so peak resident memory is its own. pertpy 1.0.3's
scGen runs in its own virtual environment on the identical fit cells, train/validation division
and genes (benchmarks/parity_scgen/pertpy_scgen_peer.py) with the scGen tutorial's settings: up to 100
epochs, early stopping after 25 without improvement of the validation ELBO, batches of 32, one
XLA thread. The original scButterfly (0.0.9) runs through the parity runner of the scButterfly
baseline when its interpreter and script are given. Every prediction is scored by mtpert's
metrics against the same real cells.

``--bfloat16`` models run a second time with ``precision="bfloat16"`` (forward passes under
bfloat16 autocast), as rows ``<model> (bfloat16)``.

Writes benchmarks/perf_kang_fold/perf_kang_fold.{csv,md}: per model, train and predict seconds, peak
RSS, epochs run and best epoch, parameters, R² top-100 DEGs and R² all genes, and each model's
train time as a ratio of pertpy scGen's.
"""

from __future__ import annotations

import argparse
import inspect
import json
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
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "parity_scgen"))
from _common import RESULTS, load_kang, peak_rss_mb, provenance
from scgen_vs_pertpy import peer_prediction

from mtpert.benchmark import fit_and_score, fold_data
from mtpert.data import DatasetSpec, holdout_group
from mtpert.io import atomic_write, write_table
from mtpert.metrics import evaluate
from mtpert.models import MODELS

GROUP = "CD4 Naive T"
SEED = 1
METRICS = ["r2_top100", "r2_all"]
REFERENCE = "pertpy scGen"
"""The peer every train time is divided by."""
MAIN = "mtae"
"""The model the target is about (FiLM multi-task AE: >= 5x faster than the peer scGen)."""


def run_worker(fold: Path, name: str, threads: int, precision: str | None = None) -> dict[str, float]:
    """Fit and score one registered model on the saved fold (under ``precision`` where given);
    runs in its own process."""
    data = ad.read_h5ad(fold)
    loaded_mb = peak_rss_mb()
    spec = DatasetSpec()
    split = holdout_group(data, spec, GROUP, seed=SEED)
    params = (
        {"num_threads": threads, "progress": False} if "num_threads" in _init_args(name) else {}
    )
    params |= {"precision": precision} if precision else {}
    result = fit_and_score(data, split, spec, name, SEED, params)
    model = result.models[None]
    summary = model.fit_summary()
    scores = result.scores.set_index("metric")["value"]
    return {
        "train_seconds": result.fit_seconds,
        "predict_seconds": result.predict_seconds,
        "peak_rss_mb": peak_rss_mb(),
        "rss_after_loading_mb": loaded_mb,
        "epochs": float(len(model.history)) if hasattr(model, "history") else np.nan,
        "best_epoch": _best_epoch(model),
        "n_params": summary["n_params"],
        **{m: float(scores[m]) for m in METRICS},
    }


def _init_args(name: str) -> set[str]:
    return set(inspect.signature(MODELS[name].cls).parameters)


def _best_epoch(model: object) -> float:
    """Epoch with the lowest monitored validation loss (the weights kept), if the model trains."""
    net = getattr(model, "net", None)
    if net is None or not hasattr(model, "history"):
        return np.nan
    history = model.history  # type: ignore[attr-defined]
    columns = [f"val_{k}" for k in net.monitored if f"val_{k}" in history]
    return float(history[columns].sum(axis=1).idxmin() + 1) if columns else np.nan


def run_mtpert(fold: Path, name: str, threads: int, precision: str | None = None) -> dict[str, float]:
    """:func:`run_worker` in a fresh interpreter (same CPU affinity), its JSON read back."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, __file__, "--worker", name, "--fold", str(fold), "--out", out.name,
               "--threads", str(threads), *(["--precision", precision] if precision else [])]  # fmt: skip
        try:
            subprocess.run(cmd, check=True)
        except subprocess.CalledProcessError as error:
            return {"note": f"failed (exit {error.returncode}; traceback in the log)"}
        return json.loads(Path(out.name).read_text())


def score(control: ad.AnnData, truth: ad.AnnData, X: np.ndarray) -> dict[str, float]:
    table = evaluate(control, truth, np.asarray(X, dtype=np.float32), metrics=METRICS, seed=SEED)
    return dict(zip(table["metric"], table["value"], strict=True))


def run_pertpy(python: str, data: ad.AnnData, spec: DatasetSpec) -> dict[str, float]:
    """pertpy's scGen on the fold's fit cells (train + val), published settings."""
    split = holdout_group(data, spec, GROUP, seed=SEED)
    (target,) = split.targets
    fit = data[split.train.append(split.val)].copy()
    fit.obs["split"] = np.where(fit.obs_names.isin(split.train), "train", "val")
    X, info = peer_prediction(python, fit, target.control, spec, epochs=100, seed=SEED, patience=25)
    return {**info, **score(data[target.control], data[target.truth], X)}


def run_scbutterfly(
    python: str, script: str, data: ad.AnnData, spec: DatasetSpec, timeout: float
) -> dict[str, float]:
    """The original scButterfly pipeline (tutorial settings) on the fold's cells: it makes its own
    80/20 division of the training cell types and pairs them by OT, as the original does. Given
    up after ``timeout`` seconds (recorded as such: a lower bound on its train time)."""
    split = holdout_group(data, spec, GROUP, seed=SEED)
    (target,) = split.targets
    cells = data[split.train.append(split.val).append(target.truth)]
    # X and obs only: the peer's anndata (< 0.11) cannot read newer encodings of uns entries
    cells = ad.AnnData(cells.X, obs=cells.obs.copy(), var=cells.var[[]].copy())
    role = np.where(cells.obs_names.isin(target.control), "target_control", "pool")
    cells.obs["parity_role"] = np.where(cells.obs_names.isin(target.truth), "target_truth", role)
    cells.obs = cells.obs.rename(
        columns={spec.cell_type_key: "cell_type", spec.condition_key: "condition"}
    )
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "cells.h5ad", str(Path(tmp) / "pred.npy")
        cells.write_h5ad(inp)
        try:
            subprocess.run([python, script, str(inp), out, str(SEED)], check=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {
                "train_seconds": np.nan,
                "note": f"stopped after {timeout:.0f} s without finishing",
            }
        except subprocess.CalledProcessError as error:
            return {"note": f"failed (exit {error.returncode}; traceback in the log)"}
        X = np.load(out)
        info = json.loads(Path(out + ".json").read_text())
    return {
        "train_seconds": info["train_seconds"],
        **score(data[target.control], data[target.truth], X),
    }


def run(args: argparse.Namespace) -> pd.DataFrame:
    spec = DatasetSpec()
    raw = load_kang()
    data = fold_data(raw, spec, GROUP)  # the fold's prepared data; each worker splits it under SEED
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fold = Path(tmp) / "fold.h5ad"
        data.write_h5ad(fold)
        for name in args.models:
            rows.append(
                {"model": name, "implementation": "mtpert", **run_mtpert(fold, name, args.threads)}
            )
            print(rows[-1], flush=True)
        for name in args.bfloat16:
            rows.append({"model": f"{name} (bfloat16)", "implementation": "mtpert",
                         **run_mtpert(fold, name, args.threads, "bfloat16")})  # fmt: skip
            print(rows[-1], flush=True)
    if args.pertpy_python:
        rows.append({"model": REFERENCE, "implementation": "pertpy 1.0.3 (scvi-tools 1.4.2, JAX)",
                     **run_pertpy(args.pertpy_python, data, spec)})  # fmt: skip
        print(rows[-1], flush=True)
    if args.scbutterfly_python and args.scbutterfly_script:
        rows.append({"model": "scButterfly (original)", "implementation": "scButterfly 0.0.9",
                     **run_scbutterfly(args.scbutterfly_python, args.scbutterfly_script, data, spec,
                                      args.peer_timeout)})  # fmt: skip
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    if REFERENCE in set(table["model"]):
        reference = table.set_index("model").loc[REFERENCE]
        table["train_time_vs_pertpy_scgen"] = table["train_seconds"] / reference["train_seconds"]
        table["r2_top100_minus_pertpy_scgen"] = table["r2_top100"] - reference["r2_top100"]
    return table


def summarize(table: pd.DataFrame) -> str:
    """The target's verdict in one sentence, then the table."""
    lines = []
    if {MAIN, REFERENCE} <= set(table["model"]):
        main, ref = table.set_index("model").loc[MAIN], table.set_index("model").loc[REFERENCE]
        speedup = ref["train_seconds"] / main["train_seconds"]
        accurate = main["r2_top100"] >= ref["r2_top100"]
        met = "met" if speedup >= 5 and accurate else "NOT met"
        lines.append(
            f"Target (FiLM multi-task AE trains >= 5x faster than the peer scGen at equal or better "
            f"R² top-100 DEGs): **{met}**: `{MAIN}` trained in {main['train_seconds']:.1f} s vs "
            f"{ref['train_seconds']:.1f} s for pertpy's scGen, **{speedup:.1f}x faster**, at R² "
            f"top-100 {main['r2_top100']:.3f} vs {ref['r2_top100']:.3f}.\n"
        )
    columns = ["model", "implementation", "train_seconds", "predict_seconds", "peak_rss_mb", "epochs",
               "best_epoch", "n_params", "r2_top100", "r2_all", "train_time_vs_pertpy_scgen",
               "r2_top100_minus_pertpy_scgen", "note"]  # fmt: skip
    shown = table[[c for c in columns if c in table]]
    return "\n".join(lines) + "\n" + shown.to_markdown(index=False, floatfmt=".3g") + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=lambda s: s.split(","), default=list(MODELS),
                        help="registered mtpert models (default: all)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="torch threads per mtpert model")
    parser.add_argument("--bfloat16", type=lambda s: s.split(","), default=[],
                        help="models to run again with precision='bfloat16'")  # fmt: skip
    parser.add_argument(
        "--pertpy-python", help="interpreter of a venv with pertpy 1.0.3 + scvi-tools"
    )
    parser.add_argument("--scbutterfly-python", help="interpreter of a venv with scButterfly 0.0.9")
    parser.add_argument("--scbutterfly-script", help="runner of the original scButterfly pipeline")
    parser.add_argument(
        "--peer-timeout", type=float, default=900, help="seconds before scButterfly is given up"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--fold", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = run_worker(args.fold, args.worker, args.threads, args.precision)
        args.out.write_text(json.dumps(result))
        return
    start = time.perf_counter()
    table = run(args)
    write_table(table, RESULTS / "perf_kang_fold.csv")
    cores = len(os.sched_getaffinity(0))
    text = (
        "# One Kang fold: train time, memory and accuracy of every model and the peers\n\n"
        + provenance(
            "taskset -c 1 nice -n 10 python " + " ".join(sys.argv), time.perf_counter() - start
        )
        + f"- ran on {cores} CPU core(s) (affinity), {args.threads} torch thread(s) per mtpert model, "
        "one XLA thread for pertpy; no GPU\n"
        f"- fold: {GROUP} held out, seed {SEED}, 2,000 HVGs chosen without its stimulated cells; each "
        "mtpert model in a fresh process with its registered defaults and early stopping\n\n"
        + summarize(table)
    )
    atomic_write(RESULTS / "perf_kang_fold.md", lambda f: f.write(text.encode()))
    print(text)


if __name__ == "__main__":
    main()
