"""Benchmarks: score models on held-out groups and seeds.

:func:`run_benchmark` runs a configured grid resumably, locally in parallel or on Ray, and
:func:`write_report` turns its directory into a report; :func:`run_holdout` runs the same engine
in memory. :func:`make_fold` is the one way a fold (prepared data and split) is made.
"""

from mtpert.benchmark.grid import BenchmarkConfig, RunSpec, expand
from mtpert.benchmark.harness import run_benchmark, run_holdout
from mtpert.benchmark.holdout import (
    Fold,
    Holdout,
    fit_and_score,
    fold_data,
    make_fold,
    noise_ceiling,
    seed_everything,
    summarize,
)
from mtpert.benchmark.report import write_report

__all__ = [
    "BenchmarkConfig",
    "Fold",
    "Holdout",
    "RunSpec",
    "expand",
    "fit_and_score",
    "fold_data",
    "make_fold",
    "noise_ceiling",
    "run_benchmark",
    "run_holdout",
    "seed_everything",
    "summarize",
    "write_report",
]
