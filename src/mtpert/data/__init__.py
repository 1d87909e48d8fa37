"""Data layer: dataset spec, preprocessing, OOD splits and folds, public datasets and the simulator."""

from mtpert.data.folds import Fold, Holdout, SplitKind, fold_data, make_fold, seed_everything
from mtpert.data.labels import normalize_labels
from mtpert.data.modalities import clr, coding_genes, paired, read_modality
from mtpert.data.pp import detect_kind, log_normalize, prepare, require_kind, select_hvgs
from mtpert.data.priors import PriorNetwork, read_prior
from mtpert.data.registry import (
    DATASETS,
    RemoteDataset,
    download_dataset,
    list_datasets,
    load_dataset,
    read_h5ad,
)
from mtpert.data.simulate import (
    add_proteins,
    simulate,
    simulate_screen,
    true_log_means,
    true_response,
)
from mtpert.data.spec import DEFAULT_MIN_CELLS, DatasetSpec
from mtpert.data.split import (
    Split,
    Target,
    condition_label,
    eligible_conditions,
    eligible_groups,
    heldout_mask,
    holdout_combinations,
    holdout_condition,
    holdout_group,
    predictable_combinations,
    single_dose,
)

__all__ = [
    "DATASETS",
    "DEFAULT_MIN_CELLS",
    "DatasetSpec",
    "Fold",
    "Holdout",
    "PriorNetwork",
    "RemoteDataset",
    "Split",
    "SplitKind",
    "Target",
    "add_proteins",
    "clr",
    "coding_genes",
    "condition_label",
    "detect_kind",
    "download_dataset",
    "eligible_conditions",
    "eligible_groups",
    "fold_data",
    "heldout_mask",
    "holdout_combinations",
    "holdout_condition",
    "holdout_group",
    "list_datasets",
    "load_dataset",
    "log_normalize",
    "make_fold",
    "normalize_labels",
    "paired",
    "predictable_combinations",
    "prepare",
    "read_h5ad",
    "read_modality",
    "read_prior",
    "require_kind",
    "seed_everything",
    "select_hvgs",
    "simulate",
    "simulate_screen",
    "single_dose",
    "true_log_means",
    "true_response",
]
