"""Perturbation models behind one interface: fit on AnnData, predict AnnData, save, load.

Models are taken by name from :data:`MODELS`; add your own with :func:`register_model` or an
entry point in the group ``mtpert.models`` (see :mod:`mtpert.models.registry`). Cross-modal
models (one modality of a cell from another) are taken by name from :data:`CROSSMODAL_MODELS`
(:func:`get_crossmodal`; :func:`register_crossmodal` or the ``mtpert.crossmodal`` entry points).
"""

from mtpert.models.attribution import attribute, attribute_crossmodal, own_feature_ranks
from mtpert.models.base import NotFittedError, PerturbationModel
from mtpert.models.crossmodal import (
    CROSSMODAL_MODELS,
    CrossModalModel,
    CrossModalRegistry,
    MultimodalAE,
    NeighbourMean,
    OwnGene,
    RidgeMap,
    get_crossmodal,
    register_crossmodal,
)
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
    "CROSSMODAL_MODELS",
    "MODELS",
    "Additive",
    "Choice",
    "ControlPredictor",
    "CrossModalModel",
    "CrossModalRegistry",
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
    "MultimodalAE",
    "NeighbourMean",
    "NotFittedError",
    "OwnGene",
    "PerturbationModel",
    "RidgeMap",
    "SamsVAE",
    "ScButterfly",
    "ScPreGAN",
    "TrainedModel",
    "attribute",
    "attribute_crossmodal",
    "get_crossmodal",
    "get_model",
    "list_models",
    "own_feature_ranks",
    "register_crossmodal",
    "register_model",
]
