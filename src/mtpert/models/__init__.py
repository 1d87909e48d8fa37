"""Perturbation models behind one interface: fit on AnnData, predict AnnData, save, load."""

from mtpert.models.base import NotFittedError, PerturbationModel
from mtpert.models.latent_shift import LatentShiftModel
from mtpert.models.multitask import MultiTaskModel
from mtpert.models.registry import MODELS, ModelPreset, get_model, list_models
from mtpert.models.simple import ControlPredictor, MeanShift

__all__ = [
    "MODELS",
    "ControlPredictor",
    "LatentShiftModel",
    "MeanShift",
    "ModelPreset",
    "MultiTaskModel",
    "NotFittedError",
    "PerturbationModel",
    "get_model",
    "list_models",
]
