"""Model names -> presets, so the CLI and the benchmark take models by name.

A preset is a model class plus the options that make it that model: ``mtvae_ot`` is the one
multi-task class with a variational latent and the OT objective, not a class of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import pandas as pd

from mtpert.data.spec import DatasetSpec
from mtpert.models.base import PerturbationModel
from mtpert.models.latent_shift import LatentShiftModel
from mtpert.models.multitask import MultiTaskModel
from mtpert.models.scbutterfly import ScButterfly
from mtpert.models.scpregan import ScPreGAN
from mtpert.models.simple import ControlPredictor, MeanShift


@dataclass(frozen=True)
class ModelPreset:
    """A registered model: ``preset(spec, **overrides)`` builds it.

    ``one_dose_at_a_time``: on data with doses, the benchmark fits one model per dose, on the
    control cells and that dose only (:func:`mtpert.data.single_dose`), because that is how the
    model was published and how the thesis ran it: scGen and scVIDR (single-dose) model a single
    perturbation; the class could take every dose at once, but that would be a different model.
    """

    name: str
    cls: type[PerturbationModel]
    params: Mapping[str, Any] = field(default_factory=dict)
    one_dose_at_a_time: bool = False

    def __call__(self, spec: DatasetSpec, **overrides: Any) -> PerturbationModel:
        return self.cls(spec, **{**self.params, **overrides})

    @property
    def description(self) -> str:
        """First line of the class docstring."""
        return (self.cls.__doc__ or "").strip().splitlines()[0]


MODELS: Mapping[str, ModelPreset] = MappingProxyType(
    {
        preset.name: preset
        for preset in (
            ModelPreset("control", ControlPredictor),
            ModelPreset("mean_shift", MeanShift),
            ModelPreset("mtae", MultiTaskModel),
            ModelPreset("mtvae", MultiTaskModel, {"latent": "variational"}),
            ModelPreset("mtae_adv", MultiTaskModel, {"regularizer": "adversarial"}),
            ModelPreset("mtae_advg", MultiTaskModel, {"regularizer": "gaussian"}),
            ModelPreset("mtae_ot", MultiTaskModel, {"objective": "ot"}),
            ModelPreset("mtvae_ot", MultiTaskModel, {"latent": "variational", "objective": "ot"}),
            ModelPreset("mtae_plus_ot", MultiTaskModel, {"objective": "both"}),
            ModelPreset("mtvae_plus_ot", MultiTaskModel, {"latent": "variational", "objective": "both"}),
            ModelPreset("scgen", LatentShiftModel, one_dose_at_a_time=True),
            ModelPreset("scvidr", LatentShiftModel, {"shift": "regression"}, one_dose_at_a_time=True),
            ModelPreset("scvidr_multi", LatentShiftModel, {"shift": "regression", "dose_scaling": "log"}),
            ModelPreset("scpregan", ScPreGAN),
            ModelPreset("scbutterfly", ScButterfly),
        )
    }
)
"""Every registered model by name. Built once at import; never changed."""


def get_model(name: str) -> ModelPreset:
    """The preset registered as ``name``; call it with a DatasetSpec to build the model."""
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"Unknown model '{name}'; registered models: {', '.join(MODELS)}.") from None


def list_models() -> pd.DataFrame:
    """One row per registered model: name, class, options and description."""
    rows = [
        {"model": p.name, "class": p.cls.__name__, "options": dict(p.params), "description": p.description}
        for p in MODELS.values()
    ]
    return pd.DataFrame(rows).set_index("model")
