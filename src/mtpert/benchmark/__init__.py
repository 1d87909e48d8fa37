"""Benchmarks: score models on held-out groups and seeds.

:func:`run_benchmark` runs a configured grid resumably, locally in parallel or on Ray, and
:func:`write_report` turns its directory into a report; :func:`run_holdout` runs the same engine
in memory; :func:`paired_verdict` says, with a bootstrap confidence interval, where a model
wins, ties or loses against a baseline.

A benchmark makes its folds with :mod:`mtpert.data` (:func:`~mtpert.data.make_fold`), fits and
scores with :mod:`mtpert.scoring`, tunes with :mod:`mtpert.tuning` and states its uncertainty
with :mod:`mtpert.uncertainty`; their main names are re-exported here, so that
``from mtpert.benchmark import make_fold, tune, calibrate`` keeps working.
"""

from mtpert.benchmark.grid import BenchmarkConfig, RunSpec, expand
from mtpert.benchmark.harness import run_benchmark, run_holdout
from mtpert.benchmark.report import write_report
from mtpert.benchmark.verdict import paired_verdict
from mtpert.data.folds import Fold, Holdout, fold_data, make_fold, seed_everything
from mtpert.scoring import fit_and_score, noise_ceiling, summarize
from mtpert.tuning import TuneSettings, TuningResult, tune
from mtpert.uncertainty import (
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
    "paired_verdict",
    "predict_draws",
    "run_benchmark",
    "run_holdout",
    "seed_everything",
    "summarize",
    "tune",
    "write_report",
]
