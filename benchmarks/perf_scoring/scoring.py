"""Scoring many perturbations: mtpert's evaluation suite against cell-eval 0.8 on the same predictions.

Run: python benchmarks/perf_scoring/scoring.py --celleval-python PEER/bin/python
    [--perturbations 1000] [--cells 200] [--genes 2000] [--threads 1] [--workdir DIR] [--reuse-peer]

Data: one simulated CRISPRi screen (:func:`mtpert.data.simulate_screen`, one cell line, no pairs,
seed 0) of ``--perturbations`` knock-downs over ``--genes`` genes with ``2 x --cells`` cells per
perturbation and as many control cells, log-normalized, split by replicate: replicate 1 is the
truth; replicate 2's perturbed cells are the prediction (a model as good as a second draw of the
same cells), with replicate 1's control cells beside them, because cell-eval measures a predicted
change from the prediction file's own control cells and mtpert from the real ones. Files go under
``--workdir`` (default /tmp/mtpert_scoring; never the repository) and are reused when their
parameters match.

Each tool scores in a fresh process, reading the two files itself, on ``--threads`` threads (BLAS,
numba, polars): mtpert every per-target metric with ``evaluate_prediction(space="group")`` plus the
across-target ones (``evaluate_across``), cell-eval its full profile (its differential expression
included). Seconds are the scoring alone, without reading the files; peak memory is each process's
own high-water mark, reading included (for mtpert also its high-water mark once the two files are
read, before scoring; cell-eval's runner does not report it).

Values both compute are compared per perturbation: mtpert's ``pearson_delta_all`` with cell-eval's
``pearson_delta``, and mtpert's ``discrimination`` with ``(1 - discrimination_score_cosine) * N /
(N - 1)`` (cell-eval divides the rank by all N perturbations, mtpert by the N - 1 others). Their
DEG metrics are not comparable: cell-eval tests with Wilcoxon and an FDR cut-off, mtpert ranks by a
moderated Welch t.

Writes benchmarks/perf_scoring/perf_scoring.{csv,md}; with ``--profile``, only
benchmarks/perf_scoring/perf_scoring_profile.md (mtpert's scoring under cProfile, in this process);
with ``--py-spy PATH`` (the py-spy 0.4 executable), only benchmarks/perf_scoring/perf_scoring_pyspy.md:
the mtpert worker sampled by py-spy, which does not slow it as cProfile does, with each function's
share of the scoring samples, its own and with what it calls.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import RESULTS, peak_rss_mb, provenance

HERE = Path(__file__).resolve().parent
NAME = "perf_scoring"
PERT_COL = "perturbation"
CONTROL = "control"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--perturbations", type=int, default=1000)
    parser.add_argument("--cells", type=int, default=200, help="cells per perturbation in truth and in prediction")
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1, help="threads of each tool")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mtpert_scoring"))
    parser.add_argument("--celleval-python", type=Path, help="python of a venv with cell-eval 0.8")
    parser.add_argument("--reuse-peer", action="store_true", help="keep cell-eval's earlier result in --workdir")
    parser.add_argument(
        "--profile", action="store_true",
        help="instead: profile mtpert's scoring (cProfile) and write perf_scoring_profile.md only",
    )  # fmt: skip
    parser.add_argument(
        "--py-spy", type=Path, dest="py_spy",
        help="instead: sample mtpert's worker with this py-spy executable and write perf_scoring_pyspy.md only",
    )  # fmt: skip
    parser.add_argument("--worker", choices=["mtpert"], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def make_data(args: argparse.Namespace) -> tuple[Path, Path]:
    """The truth and prediction files for these parameters, drawn unless already there."""

    from mtpert.data import log_normalize, simulate_screen

    params = {"perturbations": args.perturbations, "cells": args.cells, "genes": args.genes, "seed": 0}
    folder = args.workdir / "data"
    truth_path, pred_path, params_path = folder / "truth.h5ad", folder / "pred.h5ad", folder / "params.json"
    if params_path.is_file() and json.loads(params_path.read_text()) == params:
        return truth_path, pred_path
    folder.mkdir(parents=True, exist_ok=True)
    params_path.unlink(missing_ok=True)
    screen = simulate_screen(
        n_lines=1, n_genes=args.genes, n_regulators=args.perturbations, n_pairs=0,
        n_cells=2 * args.cells, n_replicates=2, seed=0,
    )  # fmt: skip
    log_normalize(screen)
    screen.X = screen.X.astype(np.float32)
    first = (screen.obs["replicate"] == "rep_1").to_numpy()
    control = (screen.obs[PERT_COL] == CONTROL).to_numpy()
    truth, pred = screen[first].copy(), screen[(~first & ~control) | (first & control)].copy()
    pred.obs_names = [f"pred_{name}" for name in pred.obs_names]
    for adata in (truth, pred):
        del adata.uns["simulation"]  # holds the spec as a dict; nothing either tool reads
        adata.obs = adata.obs[["cell_type", PERT_COL]]
    truth.write_h5ad(truth_path)
    pred.write_h5ad(pred_path)
    params_path.write_text(json.dumps(params))
    return truth_path, pred_path


def score_mtpert(args: argparse.Namespace, truth_path: Path, pred_path: Path) -> None:
    """Worker: every mtpert metric on the two files; writes per-target values and the timing."""
    os.environ["OMP_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)
    import anndata as ad
    import ot  # noqa: F401  (imported by the distances on first use; not part of the scoring time)

    from mtpert.data import DatasetSpec
    from mtpert.metrics import evaluate_across, evaluate_prediction

    truth, pred = ad.read_h5ad(truth_path), ad.read_h5ad(pred_path)
    loaded_mb = peak_rss_mb()
    spec = DatasetSpec(cell_type_key="cell_type", condition_key=PERT_COL, control=CONTROL)
    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        profiler.enable()
    start = time.perf_counter()
    per_target = evaluate_prediction(truth, pred, spec, space="group")
    per_target_seconds = time.perf_counter() - start
    across = evaluate_across(truth, pred, spec)
    seconds = time.perf_counter() - start
    if profiler is not None:
        profiler.disable()
        write_profile(profiler, seconds)
        return
    scores = pd.concat([per_target, across], ignore_index=True)
    scores.to_csv(args.workdir / "mtpert_scores.csv", index=False)
    timing = {
        "seconds": seconds, "per_target_seconds": per_target_seconds, "peak_rss_mb": peak_rss_mb(),
        "peak_rss_after_reading_mb": loaded_mb,
        "metrics": int(scores["metric"].nunique()), "threads": args.threads,
    }  # fmt: skip
    (args.workdir / "mtpert_timing.json").write_text(json.dumps(timing))


def write_profile(profiler: cProfile.Profile, seconds: float) -> None:
    """The functions that take the most time of their own, as a Markdown page."""
    from mtpert.io import atomic_write

    listing = io.StringIO()
    pstats.Stats(profiler, stream=listing).sort_stats("tottime").print_stats(25)
    text = (
        "# Where mtpert's scoring of 1,000 perturbations spends its time (cProfile)\n\n"
        + provenance("python " + " ".join(sys.argv), seconds)
        + "- the mtpert worker of `perf_scoring.md` under cProfile (which slows it), sorted by own time\n\n"
        + "```\n" + listing.getvalue().strip() + "\n```\n"
    )
    atomic_write(RESULTS / f"{NAME}_profile.md", lambda f: f.write(text.encode()))


SCORING_FRAMES = ("evaluate_prediction", "evaluate_across")
"""A py-spy sample counts as scoring when one of these functions is on its stack (the rest is
imports and reading the files)."""


def sample_with_py_spy(args: argparse.Namespace, worker: list[str], seconds_before: float) -> None:
    """Run the mtpert worker under ``py-spy record`` (100 samples a second, raw stacks) and write
    the functions with the largest shares of the scoring samples, own and inclusive."""
    from mtpert.io import atomic_write

    raw = args.workdir / "py_spy_raw.txt"
    start = time.perf_counter()
    command = [str(args.py_spy), "record", "--rate", "100", "--format", "raw", "--output", str(raw), "--", *worker]
    subprocess.run(command, check=True)
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not any(f.startswith(SCORING_FRAMES) for f in frames):
            continue
        total += int(count)
        own[_frame_name(frames[-1])] += int(count)
        for name in {_frame_name(f) for f in frames}:
            inclusive[name] += int(count)

    def table(counts: collections.Counter[str], title: str) -> str:
        rows = [{"function": name, "share": n / total, "samples": n} for name, n in counts.most_common(25)]
        return f"## {title}\n\n" + pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f") + "\n"

    text = (
        "# Where mtpert's scoring of 1,000 perturbations spends its time (py-spy)\n\n"
        + provenance("python " + " ".join(sys.argv), seconds_before + time.perf_counter() - start)
        + f"- the mtpert worker of `perf_scoring.md` sampled by py-spy {_py_spy_version(args.py_spy)} at 100 Hz; "
        f"{total} samples ({total / 100:.0f} s) with {' or '.join(SCORING_FRAMES)} on the stack, the scoring; "
        "shares are of those (native code is charged to the Python function that called it)\n\n"
        + table(own, "Own time (the function itself, at the top of the stack)")
        + "\n"
        + table(inclusive, "Inclusive time (the function and everything it calls)")
    )
    atomic_write(RESULTS / f"{NAME}_pyspy.md", lambda f: f.write(text.encode()))
    print(text)


def _frame_name(frame: str) -> str:
    """``function (path/to/module.py:line)`` -> ``module.py:function`` (line numbers vary within a function)."""
    function, _, where = frame.partition(" (")
    return f"{Path(where.rsplit(':', 1)[0]).name}:{function}" if where else function


def _py_spy_version(executable: Path) -> str:
    return subprocess.run([str(executable), "--version"], capture_output=True, text=True, check=True).stdout.split()[-1]


def run_peer(args: argparse.Namespace, truth_path: Path, pred_path: Path) -> None:
    out = args.workdir / "celleval"
    if args.reuse_peer and (out / "celleval_timing.json").is_file():
        return
    if args.celleval_python is None:
        sys.exit("--celleval-python is needed (or --reuse-peer with an earlier cell-eval run in --workdir).")
    command = [
        str(args.celleval_python), str(HERE / "_celleval_peer.py"), "--truth", str(truth_path), "--pred", str(pred_path),
        "--pert-col", PERT_COL, "--control", CONTROL, "--threads", str(args.threads), "--out-dir", str(out),
    ]  # fmt: skip
    subprocess.run(command, check=True)


def compare(args: argparse.Namespace) -> tuple[pd.DataFrame, dict[str, dict[str, float]]]:
    """The timing table, and the per-perturbation differences of the values both compute (largest,
    median, and the Pearson r of the two tools' values over perturbations)."""
    ours = json.loads((args.workdir / "mtpert_timing.json").read_text())
    theirs = json.loads((args.workdir / "celleval" / "celleval_timing.json").read_text())
    peer = pd.read_csv(args.workdir / "celleval" / "celleval_per_perturbation.csv").set_index(PERT_COL)
    scores = pd.read_csv(args.workdir / "mtpert_scores.csv")
    values = scores.pivot_table(index="condition", columns="metric", values="value", dropna=False)
    n = len(peer)
    shared = {
        "pearson_delta_all vs pearson_delta": (values["pearson_delta_all"], peer["pearson_delta"]),
        "discrimination vs (1 - discrimination_score_cosine) N/(N-1)": (
            values["discrimination"], (1 - peer["discrimination_score_cosine"]) * n / (n - 1)
        ),
    }
    differences = {}
    for name, (a, b) in shared.items():
        gap = (a - b.reindex(a.index)).abs()
        differences[name] = {"max": float(gap.max()), "median": float(gap.median()), "pearson": float(a.corr(b.reindex(a.index)))}
    peer_metrics = len([c for c in peer.columns if c != PERT_COL])
    table = pd.DataFrame(
        [
            {"tool": "mtpert", "seconds": ours["seconds"], "peak_rss_mb": ours["peak_rss_mb"],
             "peak_rss_after_reading_mb": ours["peak_rss_after_reading_mb"], "metrics": ours["metrics"]},
            {"tool": f"cell-eval {theirs['cell_eval_version']}", "seconds": theirs["seconds"],
             "peak_rss_mb": theirs["peak_rss_mb"], "peak_rss_after_reading_mb": np.nan, "metrics": peer_metrics},
        ]
    )  # fmt: skip
    table["threads"] = args.threads
    table["perturbations"], table["cells_each"], table["genes"] = args.perturbations, args.cells, args.genes
    table["speedup_vs_celleval"] = theirs["seconds"] / table["seconds"]
    return table, differences


def write(table: pd.DataFrame, differences: dict[str, dict[str, float]], command: str, seconds: float) -> None:
    from mtpert.io import atomic_write, write_table

    write_table(table, RESULTS / f"{NAME}.csv")
    ours = table.iloc[0]
    met_time, met_ratio = ours["seconds"] <= 120, ours["speedup_vs_celleval"] >= 10
    lines = [
        "# Scoring many perturbations: mtpert vs cell-eval 0.8 on the same predictions\n",
        provenance(command, seconds),
        f"- {ours['threads']} thread(s) per tool, each in its own process; scoring time without reading the files",
        (f"- data: simulated screen, {ours['perturbations']} knock-downs x {ours['cells_each']} cells in truth and in "
        f"prediction (and as many control cells) x {ours['genes']} genes; see the script's docstring\n"),
        (f"Targets (all metrics for 1,000 perturbations in at most 2 minutes; at least 10x faster than cell-eval): "
        f"time **{'met' if met_time else 'NOT met'}** ({ours['seconds']:.0f} s), ratio **{'met' if met_ratio else 'NOT met'}** "
        f"({ours['speedup_vs_celleval']:.1f}x).\n"),
        table.to_markdown(index=False, floatfmt=".3g"),
        "\nDifference per perturbation of the values both tools compute:\n",
        *(
            f"- {name}: largest {d['max']:.2g}, median {d['median']:.2g}; Pearson r of the two {d['pearson']:.4f}"
            for name, d in differences.items()
        ),
        "",
    ]
    text = "\n".join(lines)
    atomic_write(RESULTS / f"{NAME}.md", lambda f: f.write(text.encode()))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    truth_path, pred_path = make_data(args)
    if args.worker == "mtpert" or args.profile:
        score_mtpert(args, truth_path, pred_path)
        return
    worker = [sys.executable, __file__, "--worker", "mtpert", *sys.argv[1:]]
    if args.py_spy is not None:
        sample_with_py_spy(args, worker, time.perf_counter() - start)
        return
    run_peer(args, truth_path, pred_path)
    subprocess.run(worker, check=True)
    table, differences = compare(args)
    print(table.to_string(index=False), differences, sep="\n")
    write(table, differences, "python " + " ".join(sys.argv), time.perf_counter() - start)


if __name__ == "__main__":
    main()
