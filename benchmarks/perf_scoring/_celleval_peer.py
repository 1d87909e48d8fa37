"""Score a prediction with the peer tool cell-eval and record its wall time and peak memory.

Runs under cell-eval's own virtual environment, not mtpert's::

    /work/peers/celleval/bin/python benchmarks/perf_scoring/_celleval_peer.py \
        --truth TRUTH.h5ad --pred PRED.h5ad --pert-col COL --control LABEL \
        --threads N --out-dir DIR [--profile full]

Both files must be log-normalized (log1p) AnnData with the same genes in the same order and the
same set of labels in ``--pert-col``, control cells included in both: cell-eval computes every
predicted change from the control cells of the prediction file and every true change from those of
the truth file.

The timed span is everything cell-eval does once the two files are in memory: its input checks,
the differential expression of truth and prediction against their controls (pdex; skipped, as
cell-eval's own command line does for ``pds``, when the profile has no DE metric) and all metrics of
the profile. Reading the h5ad files is timed separately. ``--threads`` caps the threads of every
pool the run may use (numba for pdex, polars, BLAS/OpenMP); the variables are set before any of
those libraries is imported. A metric that fails stops the run (``break_on_error``); cell-eval
would otherwise only log the error and leave that column out.

Writes to ``--out-dir``:

* ``celleval_per_perturbation.csv``: cell-eval's per-perturbation table as it returns it, one row
  per perturbation and one column per metric (metrics that return a single number for the whole
  set, such as ``de_spearman_sig``, ``pearson_edistance`` and ``clustering_agreement``, repeat it
  on every row);
* ``celleval_timing.json``: ``seconds`` (the timed span), ``cpu_seconds`` (CPU time of this process
  over that span, all threads; steadier than wall time on a busy machine), ``peak_rss_mb`` (VmHWM
  of this process at the end, reading included), ``threads``, ``cell_eval_version``, ``profile``
  and a breakdown;
* ``cell-eval/``: the files cell-eval writes itself (``real_de.csv``, ``pred_de.csv``,
  ``results.csv``, ``agg_results.csv``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

# Profiles whose metric list contains no DE metric (cell_eval/_pipeline/_runner.py).
PROFILES_WITHOUT_DE = frozenset({"anndata", "pds"})
THREAD_VARIABLES = (
    "NUMBA_NUM_THREADS",
    "POLARS_MAX_THREADS",
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--truth", type=Path, required=True, help="true cells (.h5ad)")
    parser.add_argument("--pred", type=Path, required=True, help="predicted cells (.h5ad)")
    parser.add_argument("--pert-col", required=True, help="obs column holding perturbation labels")
    parser.add_argument("--control", required=True, help="label of the control cells")
    parser.add_argument(
        "--threads", type=int, default=1, help="thread cap for every pool (default 1)"
    )
    parser.add_argument("--out-dir", type=Path, required=True, help="folder for the outputs")
    parser.add_argument(
        "--profile",
        default="full",
        help="cell-eval metric profile: full, minimal, vcc, de, anndata or pds (default full)",
    )
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    return args


def cap_threads(threads: int) -> None:
    """Cap the thread pools of numba, polars and BLAS; call before importing them."""
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)


def peak_rss_mb() -> float:
    """Peak resident set size of this process (VmHWM), in MiB."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # the value is in kB
    raise RuntimeError("VmHWM not found in /proc/self/status")


def cpu_seconds() -> float:
    """User plus system CPU seconds of this process so far, all threads included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(args: argparse.Namespace) -> dict[str, object]:
    """Score the prediction with cell-eval, write the outputs and return the timing record."""
    cap_threads(args.threads)

    import importlib.metadata

    import anndata as ad
    from cell_eval import KNOWN_PROFILES, MetricsEvaluator

    if args.profile not in KNOWN_PROFILES:
        raise SystemExit(f"unknown profile {args.profile!r}; cell-eval knows {KNOWN_PROFILES}")

    args.out_dir.mkdir(parents=True, exist_ok=True)
    native_dir = args.out_dir / "cell-eval"
    skip_de = args.profile in PROFILES_WITHOUT_DE

    start = time.perf_counter()
    truth = ad.read_h5ad(args.truth)
    pred = ad.read_h5ad(args.pred)
    read_seconds = time.perf_counter() - start

    start = time.perf_counter()
    cpu_start = cpu_seconds()
    evaluator = MetricsEvaluator(
        adata_pred=pred,
        adata_real=truth,
        control_pert=args.control,
        pert_col=args.pert_col,
        num_threads=args.threads,
        outdir=str(native_dir),
        skip_de=skip_de,
    )
    setup_seconds = time.perf_counter() - start  # input checks and DE of both files
    per_perturbation, _aggregated = evaluator.compute(profile=args.profile, break_on_error=True)
    seconds = time.perf_counter() - start
    cpu_used = cpu_seconds() - cpu_start

    per_perturbation.write_csv(args.out_dir / "celleval_per_perturbation.csv")
    record: dict[str, object] = {
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu_used, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "threads": args.threads,
        "cell_eval_version": importlib.metadata.version("cell-eval"),
        "pdex_version": importlib.metadata.version("pdex"),
        "profile": args.profile,
        "de_computed": not skip_de,
        "seconds_checks_and_de": round(setup_seconds, 3),
        "seconds_metrics": round(seconds - setup_seconds, 3),
        "seconds_read_h5ad": round(read_seconds, 3),
        "n_perturbations": int(per_perturbation.height),
        "n_metric_columns": int(per_perturbation.width - 1),
        "truth_shape": list(truth.shape),
        "pred_shape": list(pred.shape),
    }
    (args.out_dir / "celleval_timing.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    record = run(parse_args(argv))
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
