"""Training machinery: sparse minibatches, OT pairing and the optimization loop."""

from mtpert.train.data import Batch, CellData
from mtpert.train.loop import Trainable, TrainConfig, cpu_threads, evaluate, on_epoch, train
from mtpert.train.pairing import ot_pairs, pair_within_groups

__all__ = [
    "Batch",
    "CellData",
    "TrainConfig",
    "Trainable",
    "cpu_threads",
    "evaluate",
    "on_epoch",
    "ot_pairs",
    "pair_within_groups",
    "train",
]
