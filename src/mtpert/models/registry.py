"""Model names -> presets, so the CLI and the benchmark take models by name.

A preset is a model class plus the options that make it that model: ``mtvae_ot`` is the one
multi-task class with a variational latent and the OT objective, not a class of its own.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, get_type_hints

import pandas as pd
from pydantic import TypeAdapter, ValidationError

from mtpert.data.spec import DatasetSpec
from mtpert.errors import ConfigError, UnknownNameError
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

    def check_params(self, params: Mapping[str, Any], *, where: str = "model_params") -> dict[str, Any]:
        """``params`` checked against the constructor's parameters and type hints, so a wrong name
        or type fails before any fit; :class:`ConfigError` names ``where``, the key, the value and
        the type expected. Values are converted only where they would not work as given (``"10"``
        for an int becomes 10); a value that already fits is kept as it is."""
        signature = inspect.signature(self.cls.__init__)
        accepted = [n for n, p in signature.parameters.items() if p.kind is p.KEYWORD_ONLY]
        hints = get_type_hints(self.cls.__init__)
        checked, problems = {}, []
        for name, value in params.items():
            if name not in accepted:
                problems.append(f"{where}.{name}: not a parameter of '{self.name}'; its parameters: {', '.join(accepted)}")
                continue
            try:
                converted = TypeAdapter(hints[name]).validate_python(value) if name in hints else value
            except ValidationError as error:
                expected = "; ".join(e["msg"] for e in error.errors())
                problems.append(f"{where}.{name}: {value!r} is not valid ({expected})")
                continue
            checked[name] = value if value == converted else converted
        if problems:
            raise ConfigError("Invalid model parameters:\n" + "\n".join(f"  - {p}" for p in problems))
        return checked

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
        raise UnknownNameError(f"Unknown model '{name}'; registered models: {', '.join(MODELS)}.") from None


def list_models() -> pd.DataFrame:
    """One row per registered model: name, class, options and description."""
    rows = [
        {"model": p.name, "class": p.cls.__name__, "options": dict(p.params), "description": p.description}
        for p in MODELS.values()
    ]
    return pd.DataFrame(rows).set_index("model")
