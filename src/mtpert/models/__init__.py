"""Perturbation models behind one interface: fit on AnnData, predict AnnData, save, load.

Models are taken by name from :data:`MODELS`; add your own with :func:`register_model` or an
entry point in the group ``mtpert.models`` (see :mod:`mtpert.models.registry`).
"""

from mtpert.models.attribution import attribute
from mtpert.models.base import NotFittedError, PerturbationModel
from mtpert.models.latent_shift import LatentShiftModel
from mtpert.models.linear import LinearModel
from mtpert.models.multitask import MultiTaskModel
from mtpert.models.registry import (
    MODELS,
    ModelPreset,
    ModelRegistry,
    get_model,
    list_models,
    register_model,
)
from mtpert.models.sams import SamsVAE
from mtpert.models.scbutterfly import ScButterfly
from mtpert.models.scpregan import ScPreGAN
from mtpert.models.search import Choice, FloatRange, IntRange
from mtpert.models.simple import Additive, ControlPredictor, GlobalMean, MeanShift
from mtpert.models.trained import Hyperparameters, TrainedModel

__all__ = [
    "MODELS",
    "Additive",
    "Choice",
    "ControlPredictor",
    "FloatRange",
    "GlobalMean",
    "Hyperparameters",
    "IntRange",
    "LatentShiftModel",
    "LinearModel",
    "MeanShift",
    "ModelPreset",
    "ModelRegistry",
    "MultiTaskModel",
    "NotFittedError",
    "PerturbationModel",
    "SamsVAE",
    "ScButterfly",
    "ScPreGAN",
    "TrainedModel",
    "attribute",
    "get_model",
    "list_models",
    "register_model",
]
