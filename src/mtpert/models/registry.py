"""Model names -> presets, so the CLI and the benchmark take models by name.

A preset is a model class plus the options that make it that model: ``mtvae_ot`` is the one
multi-task class with a variational latent and the OT objective, not a class of its own.

Other packages add models without editing mtpert: call :func:`register_model`, or declare an
entry point in the group ``mtpert.models`` (found the first time :data:`MODELS` is read), e.g.
in the package's ``pyproject.toml``::

    [project.entry-points."mtpert.models"]
    my_model = "my_package.models:MyModel"          # a PerturbationModel subclass
    my_presets = "my_package.models:register"       # or a function calling register_model
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd
from pydantic import TypeAdapter, ValidationError

from mtpert.data.spec import DatasetSpec
from mtpert.errors import ConfigError, UnknownNameError
from mtpert.models.base import PerturbationModel
from mtpert.models.latent_shift import LatentShiftModel
from mtpert.models.linear import LinearModel
from mtpert.models.multitask import MultiTaskModel
from mtpert.models.sams import SamsVAE
from mtpert.models.scbutterfly import ScButterfly
from mtpert.models.scpregan import ScPreGAN
from mtpert.models.simple import Additive, ControlPredictor, GlobalMean, MeanShift
from mtpert.plugins import ClassPluginRegistry, first_line

ENTRY_POINT_GROUP = "mtpert.models"
"""Entry-point group through which installed packages add models."""


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
        for an int becomes 10); a value that already fits is kept as it is. A constructor taking
        ``**kwargs`` accepts any name; hints that cannot be resolved are not checked."""
        parameters = self.cls.parameters()  # a trained model's hyperparameters come from its Params
        accepted = [n for n, p in parameters.items() if p.kind is p.KEYWORD_ONLY]
        takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
        hints = {n: p.annotation for n, p in parameters.items()}
        checked, problems = {}, []
        for name, value in params.items():
            if name not in accepted and not takes_any:
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
        return first_line(self.cls.__doc__)


BUILTIN_MODELS: tuple[ModelPreset, ...] = (
    ModelPreset("control", ControlPredictor),
    ModelPreset("mean_shift", MeanShift),
    ModelPreset("global_mean", GlobalMean),
    ModelPreset("additive", Additive),
    ModelPreset("linear", LinearModel),
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
    ModelPreset("gpo_vae", SamsVAE),
    ModelPreset("sams_vae", SamsVAE, {"alignment": "none"}),
)
"""The models mtpert ships."""


class ModelRegistry(ClassPluginRegistry[ModelPreset]):
    """Presets by name, read like a dict (:class:`~mtpert.plugins.PluginRegistry`): mtpert's,
    those added with :meth:`register`, and those of the plugins of entry-point group ``group``.

    A plugin's entry point names a PerturbationModel subclass, registered under the entry point's
    name, or a function that calls :func:`register_model` itself.
    """

    kind = "model"
    plugin_class = "PerturbationModel"
    plugin_function = "mtpert.models.register_model"

    def __init__(self, presets: Iterable[ModelPreset] = (), *, group: str = ENTRY_POINT_GROUP) -> None:
        super().__init__(((preset.name, preset) for preset in presets), group)

    def register(
        self, name: str, cls: type[PerturbationModel], /, *, one_dose_at_a_time: bool = False, **params: Any
    ) -> ModelPreset:
        """Add model ``name``: class ``cls`` built with the fixed options ``params``.

        Refused: a name taken by another class or other options (:class:`ConfigError`; the same
        class, by ``module:qualname``, with the same options is accepted again and replaces the
        old, e.g. for a notebook cell run twice), a ``cls`` that is not a concrete
        :class:`~mtpert.models.PerturbationModel` subclass (:class:`TypeError`), and options that
        its constructor does not take (:class:`ConfigError`).
        """
        self.check_name(name, "--models lists and file names")
        if not (isinstance(cls, type) and issubclass(cls, PerturbationModel)):
            raise TypeError(f"Model '{name}': {cls!r} is not a subclass of mtpert.models.PerturbationModel.")
        if inspect.isabstract(cls):
            missing = ", ".join(sorted(cls.__abstractmethods__))
            raise TypeError(f"Model '{name}': {cls.__qualname__} does not implement {missing}.")
        preset = ModelPreset(name, cls, one_dose_at_a_time=bool(one_dose_at_a_time))
        return self._add(name, replace(preset, params=preset.check_params(params, where=f"register_model('{name}')")))

    @staticmethod
    def _identity(preset: ModelPreset) -> tuple[str, dict[str, Any], bool]:
        """The class (by ``module:qualname``, so a class defined again by a rerun notebook cell
        counts as the same) and the options."""
        return f"{preset.cls.__module__}:{preset.cls.__qualname__}", dict(preset.params), preset.one_dose_at_a_time

    @staticmethod
    def _describe(preset: ModelPreset) -> str:
        options = {**preset.params, **({"one_dose_at_a_time": True} if preset.one_dose_at_a_time else {})}
        return f"{preset.cls.__module__}:{preset.cls.__qualname__}" + (f" with {options}" if options else "")


MODELS: ModelRegistry = ModelRegistry(BUILTIN_MODELS)
"""Every model by name: mtpert's, those of :func:`register_model` and those of installed plugins."""


def register_model(
    name: str, cls: type[PerturbationModel], /, *, one_dose_at_a_time: bool = False, **preset: Any
) -> ModelPreset:
    """Make model class ``cls`` available by ``name`` (in :data:`MODELS`, ``get_model``, the
    benchmark and ``mtpert models``), built with the fixed constructor options ``preset``.

    ``one_dose_at_a_time``: on data with doses, the benchmark fits one model per dose (see
    :class:`ModelPreset`). Call it from your package's ``mtpert.models`` entry point so that every
    process finds the model, the benchmark's worker processes included; a call in a script
    registers the model in that process only. See :meth:`ModelRegistry.register` for what is
    refused.
    """
    return MODELS.register(name, cls, one_dose_at_a_time=one_dose_at_a_time, **preset)


def get_model(name: str) -> ModelPreset:
    """The preset registered as ``name``; call it with a DatasetSpec to build the model."""
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownNameError(f"Unknown model '{name}'; registered models: {', '.join(MODELS)}.") from None


def list_models() -> pd.DataFrame:
    """One row per registered model (plugins' included): name, class, options and description."""
    rows = [
        {"model": p.name, "class": p.cls.__name__, "options": dict(p.params), "description": p.description}
        for p in MODELS.values()
    ]
    return pd.DataFrame(rows).set_index("model")
