"""Deprecated, kept for one release: importing it warns. Folds and seeding moved to
:mod:`mtpert.data` (:func:`~mtpert.data.make_fold`, :class:`~mtpert.data.Holdout`,
:func:`~mtpert.data.seed_everything`, ...), fitting and scoring to :mod:`mtpert.scoring`
(:func:`~mtpert.scoring.fit_and_score`, ...); the names are re-exported from there."""

from mtpert._moved import warn_moved
from mtpert.benchmark.harness import ProgressCallback
from mtpert.data.folds import (
    Fold,
    Holdout,
    SplitKind,
    fold_data,
    make_fold,
    prepare_holdout,
    seed_everything,
)
from mtpert.scoring import (
    FitResult,
    Prediction,
    fit_and_score,
    noise_ceiling,
    rank_scores,
    summarize,
    target_scores,
)

__all__ = [
    "FitResult",
    "Fold",
    "Holdout",
    "Prediction",
    "ProgressCallback",
    "SplitKind",
    "fit_and_score",
    "fold_data",
    "make_fold",
    "noise_ceiling",
    "prepare_holdout",
    "rank_scores",
    "seed_everything",
    "summarize",
    "target_scores",
]

warn_moved(
    "mtpert.benchmark.holdout",
    "import folds and seeding (make_fold, Holdout, seed_everything, ...) from mtpert.data and "
    "fitting and scoring (fit_and_score, noise_ceiling, ...) from mtpert.scoring instead",
)
