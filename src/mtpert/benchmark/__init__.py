"""Benchmarks: score models on held-out groups and seeds.

:func:`run_holdout` does it in memory; :func:`run_benchmark` runs a configured grid resumably,
locally in parallel or on Ray, and :func:`write_report` turns its directory into a report.
"""

from mtpert.benchmark.grid import BenchmarkConfig, RunSpec, expand
from mtpert.benchmark.harness import run_benchmark
from mtpert.benchmark.holdout import (
    fit_and_score,
    noise_ceiling,
    run_holdout,
    seed_everything,
    summarize,
)
from mtpert.benchmark.report import write_report

__all__ = [
    "BenchmarkConfig",
    "RunSpec",
    "expand",
    "fit_and_score",
    "noise_ceiling",
    "run_benchmark",
    "run_holdout",
    "seed_everything",
    "summarize",
    "write_report",
]
