"""Perturbation models behind one interface: fit on AnnData, predict AnnData, save, load.

Models are taken by name from :data:`MODELS`; add your own with :func:`register_model` or an
entry point in the group ``mtpert.models`` (see :mod:`mtpert.models.registry`). Cross-modal
models (one modality of a cell from another) are taken by name from :data:`CROSSMODAL_MODELS`
(:func:`get_crossmodal`; :func:`register_crossmodal` or the ``mtpert.crossmodal`` entry points).
The field's own models (CPA, State, CellFlow, pertpy's scGen) are registered too: each runs in an
environment of its own (:data:`PEERS`, :func:`setup_peer`) through :class:`ExternalModel`.

Each name below is imported from its module the first time it is used, so that reading the
registry (``mtpert models``) does not import every model, and torch with them.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the names are, for type checkers and the API docs
    from mtpert.models.attribution import attribute, attribute_crossmodal, own_feature_ranks
    from mtpert.models.base import NotFittedError, PerturbationModel
    from mtpert.models.crossmodal import (
        CrossModalModel,
        MultimodalAE,
        NeighbourMean,
        OwnGene,
        RidgeMap,
    )
    from mtpert.models.external import ExternalModel
    from mtpert.models.latent_shift import LatentShiftModel
    from mtpert.models.linear import LinearModel
    from mtpert.models.multitask import MultiTaskModel
    from mtpert.models.peer_envs import PEERS, Peer, peer_status, setup_peer
    from mtpert.models.registry import (
        CROSSMODAL_MODELS,
        MODELS,
        CrossModalRegistry,
        ModelPreset,
        ModelRegistry,
        get_crossmodal,
        get_model,
        list_models,
        register_crossmodal,
        register_model,
    )
    from mtpert.models.sams import SamsVAE
    from mtpert.models.scbutterfly import ScButterfly
    from mtpert.models.scpregan import ScPreGAN
    from mtpert.models.search import Choice, FloatRange, IntRange
    from mtpert.models.simple import Additive, ControlPredictor, GlobalMean, MeanShift
    from mtpert.models.trained import Hyperparameters, TrainedModel

_EXPORTS: dict[str, tuple[str, ...]] = {
    "attribution": ("attribute", "attribute_crossmodal", "own_feature_ranks"),
    "base": ("NotFittedError", "PerturbationModel"),
    "crossmodal": ("CrossModalModel", "MultimodalAE", "NeighbourMean", "OwnGene", "RidgeMap"),
    "external": ("ExternalModel",),
    "latent_shift": ("LatentShiftModel",),
    "linear": ("LinearModel",),
    "multitask": ("MultiTaskModel",),
    "peer_envs": ("PEERS", "Peer", "peer_status", "setup_peer"),
    "registry": (
        "CROSSMODAL_MODELS",
        "MODELS",
        "CrossModalRegistry",
        "ModelPreset",
        "ModelRegistry",
        "get_crossmodal",
        "get_model",
        "list_models",
        "register_crossmodal",
        "register_model",
    ),
    "sams": ("SamsVAE",),
    "scbutterfly": ("ScButterfly",),
    "scpregan": ("ScPreGAN",),
    "search": ("Choice", "FloatRange", "IntRange"),
    "simple": ("Additive", "ControlPredictor", "GlobalMean", "MeanShift"),
    "trained": ("Hyperparameters", "TrainedModel"),
}
"""The public names (:data:`__all__`), by the module of this package that defines them, as
imported above for type checkers."""

_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = [
    "CROSSMODAL_MODELS",
    "MODELS",
    "PEERS",
    "Additive",
    "Choice",
    "ControlPredictor",
    "CrossModalModel",
    "CrossModalRegistry",
    "ExternalModel",
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
    "Peer",
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
    "peer_status",
    "register_crossmodal",
    "register_model",
    "setup_peer",
]


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_MODULE_OF])
