"""Benchmarks: score models on held-out groups and seeds.

:func:`run_benchmark` runs a configured grid resumably, locally in parallel or on Ray, and
:func:`write_report` turns its directory into a report; :func:`run_holdout` runs the same engine
in memory. :func:`make_fold` is the one way a fold (prepared data and split) is made.
:func:`tune` chooses a model's hyperparameters on training groups only; :func:`calibrate` and
:func:`fit_ensemble` give a prediction calibrated intervals.
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
from mtpert.benchmark.tuning import TuneSettings, TuningResult, tune
from mtpert.benchmark.uncertainty import (
    Calibration,
    ChangeDraws,
    UncertaintySettings,
    calibrate,
    fit_ensemble,
    interval_table,
    predict_draws,
)

__all__ = [
    "BenchmarkConfig",
    "Calibration",
    "ChangeDraws",
    "Fold",
    "Holdout",
    "RunSpec",
    "TuneSettings",
    "TuningResult",
    "UncertaintySettings",
    "calibrate",
    "expand",
    "fit_and_score",
    "fit_ensemble",
    "fold_data",
    "interval_table",
    "make_fold",
    "noise_ceiling",
    "predict_draws",
    "run_benchmark",
    "run_holdout",
    "seed_everything",
    "summarize",
    "tune",
    "write_report",
]
