"""Model names -> presets, so the CLI and the benchmark take models by name; and cross-modal
model names -> classes.

A preset is a model class plus the options that make it that model: ``mtvae_ot`` is the one
multi-task class with a variational latent and the OT objective, not a class of its own.

Other packages add models without editing mtpert: call :func:`register_model`, or declare an
entry point in the group ``mtpert.models`` (found the first time :data:`MODELS` is read), e.g.
in the package's ``pyproject.toml``::

    [project.entry-points."mtpert.models"]
    my_model = "my_package.models:MyModel"          # a PerturbationModel subclass
    my_presets = "my_package.models:register"       # or a function calling register_model

mtpert's own models are declared here by ``"module:qualname"`` path, and this module imports
none of them (nor torch): a model's class is imported when it is built or asked for
(:attr:`ModelPreset.cls`), so that listing the models (``mtpert models``) stays instant.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from mtpert.errors import ConfigError, UnknownNameError
from mtpert.plugins import (
    ClassPluginRegistry,
    class_description,
    class_name,
    class_path,
    import_class,
)

if TYPE_CHECKING:
    import pandas as pd

    from mtpert.data.spec import DatasetSpec
    from mtpert.models.base import PerturbationModel
    from mtpert.models.crossmodal import CrossModalModel

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
    model_class: type[PerturbationModel] | str
    """The class, or its ``"module:qualname"`` path: imported the first time :attr:`cls` is read."""
    params: Mapping[str, Any] = field(default_factory=dict)
    one_dose_at_a_time: bool = False

    @property
    def cls(self) -> type[PerturbationModel]:
        """The model class (imported on first use where it is declared by path)."""
        return import_class(self.model_class)

    @property
    def class_path(self) -> str:
        """The class as ``"module:qualname"``, read without importing it."""
        return class_path(self.model_class)

    @property
    def class_name(self) -> str:
        """The class's name, read without importing it."""
        return class_name(self.model_class)

    def __call__(self, spec: DatasetSpec, **overrides: Any) -> PerturbationModel:
        return self.cls(spec, **{**self.params, **overrides})

    def check_params(self, params: Mapping[str, Any], *, where: str = "model_params") -> dict[str, Any]:
        """``params`` checked against the constructor's parameters and type hints, so a wrong name
        or type fails before any fit; :class:`ConfigError` names ``where``, the key, the value and
        the type expected. Values are converted only where they would not work as given (``"10"``
        for an int becomes 10); a value that already fits is kept as it is. A constructor taking
        ``**kwargs`` accepts any name; hints that cannot be resolved are not checked."""
        from pydantic import TypeAdapter, ValidationError

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
        """First line of the class docstring, read without importing the class."""
        return class_description(self.model_class)


_MULTITASK = "mtpert.models.multitask:MultiTaskModel"
_LATENT_SHIFT = "mtpert.models.latent_shift:LatentShiftModel"
_SAMS = "mtpert.models.sams:SamsVAE"
_EXTERNAL = "mtpert.models.external:ExternalModel"

BUILTIN_MODELS: tuple[ModelPreset, ...] = (
    ModelPreset("control", "mtpert.models.simple:ControlPredictor"),
    ModelPreset("mean_shift", "mtpert.models.simple:MeanShift"),
    ModelPreset("global_mean", "mtpert.models.simple:GlobalMean"),
    ModelPreset("additive", "mtpert.models.simple:Additive"),
    ModelPreset("linear", "mtpert.models.linear:LinearModel"),
    ModelPreset("mtae", _MULTITASK),
    ModelPreset("mtvae", _MULTITASK, {"latent": "variational"}),
    ModelPreset("mtae_adv", _MULTITASK, {"regularizer": "adversarial"}),
    ModelPreset("mtae_advg", _MULTITASK, {"regularizer": "gaussian"}),
    ModelPreset("mtae_ot", _MULTITASK, {"objective": "ot"}),
    ModelPreset("mtvae_ot", _MULTITASK, {"latent": "variational", "objective": "ot"}),
    ModelPreset("mtae_plus_ot", _MULTITASK, {"objective": "both"}),
    ModelPreset("mtvae_plus_ot", _MULTITASK, {"latent": "variational", "objective": "both"}),
    ModelPreset("mtae_anchored", _MULTITASK, {"anchor": "auto"}),
    ModelPreset("mtae_plus_ot_anchored", _MULTITASK, {"anchor": "auto", "objective": "both"}),
    ModelPreset("scgen", _LATENT_SHIFT, one_dose_at_a_time=True),
    ModelPreset("scvidr", _LATENT_SHIFT, {"shift": "regression"}, one_dose_at_a_time=True),
    ModelPreset("scvidr_multi", _LATENT_SHIFT, {"shift": "regression", "dose_scaling": "log"}),
    ModelPreset("scpregan", "mtpert.models.scpregan:ScPreGAN"),
    ModelPreset("scbutterfly", "mtpert.models.scbutterfly:ScButterfly"),
    ModelPreset("gpo_vae", _SAMS),
    ModelPreset("sams_vae", _SAMS, {"alignment": "none"}),
    # the field's originals, each run in its own environment (mtpert.models.peer_envs.PEERS)
    ModelPreset("pertpy_scgen", _EXTERNAL, {"peer": "pertpy_scgen"}, one_dose_at_a_time=True),
    ModelPreset("cpa", _EXTERNAL, {"peer": "cpa"}),
    ModelPreset("state", _EXTERNAL, {"peer": "state"}),
    ModelPreset("cellflow", _EXTERNAL, {"peer": "cellflow"}),
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
        from mtpert.models.base import PerturbationModel

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
        return preset.class_path, dict(preset.params), preset.one_dose_at_a_time

    @staticmethod
    def _describe(preset: ModelPreset) -> str:
        options = {**preset.params, **({"one_dose_at_a_time": True} if preset.one_dose_at_a_time else {})}
        return preset.class_path + (f" with {options}" if options else "")


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
    import pandas as pd

    rows = [
        {
            "model": p.name,
            "class": p.class_name,
            "options": dict(p.params),
            "description": p.description,
        }
        for p in MODELS.values()
    ]
    return pd.DataFrame(rows).set_index("model")


CROSSMODAL_ENTRY_POINT_GROUP = "mtpert.crossmodal"
"""Entry-point group through which installed packages add cross-modal models."""


class CrossModalRegistry(ClassPluginRegistry["type[CrossModalModel] | str"]):
    """Cross-modal model classes by name, read like a dict (:class:`~mtpert.plugins.PluginRegistry`):
    mtpert's, those added with :meth:`register`, and those of the plugins of entry-point group
    ``group``, whose entry point names a :class:`CrossModalModel` subclass (registered under the
    entry point's name) or a function that calls :func:`register_crossmodal`. A class declared by
    its ``"module:qualname"`` path is imported when it is read."""

    kind = "cross-modal model"
    plugin_class = "CrossModalModel"
    plugin_function = "mtpert.models.register_crossmodal"

    def register(self, name: str, cls: type[CrossModalModel], /) -> type[CrossModalModel]:
        """Add ``cls`` as ``name``; refused: an unusable name, a name taken by another class
        (:class:`ConfigError`), a class that is not a :class:`CrossModalModel` (:class:`TypeError`)."""
        from mtpert.models.crossmodal import CrossModalModel

        self.check_name(name, "scripts and file names")
        if not (isinstance(cls, type) and issubclass(cls, CrossModalModel)):
            raise TypeError(f"Cross-modal model '{name}': {cls!r} is not a subclass of mtpert.models.CrossModalModel.")
        self._add(name, cls)
        return cls

    def __getitem__(self, name: str) -> type[CrossModalModel]:
        return import_class(super().__getitem__(name))

    def path(self, name: str) -> str:
        """The class of ``name`` as ``"module:qualname"``, read without importing it."""
        return class_path(super().__getitem__(name))

    @staticmethod
    def _identity(entry: type[CrossModalModel] | str) -> str:
        """The class by ``module:qualname`` (a class defined again by a rerun cell is the same)."""
        return class_path(entry)

    _describe = _identity


BUILTIN_CROSSMODAL: tuple[tuple[str, str], ...] = (
    ("own_gene", "mtpert.models.crossmodal:OwnGene"),
    ("ridge", "mtpert.models.crossmodal:RidgeMap"),
    ("knn", "mtpert.models.crossmodal:NeighbourMean"),
    ("multimodal", "mtpert.models.crossmodal:MultimodalAE"),
)
"""mtpert's own cross-modal models, by name and class path."""

CROSSMODAL_MODELS = CrossModalRegistry(BUILTIN_CROSSMODAL, CROSSMODAL_ENTRY_POINT_GROUP)
"""Every cross-modal model class by name: mtpert's, those of :func:`register_crossmodal` and those
of installed plugins. ``get_crossmodal("multimodal")(fusion="late")`` builds one."""


def register_crossmodal(name: str, cls: type[CrossModalModel], /) -> type[CrossModalModel]:
    """Make cross-modal model class ``cls`` available as ``name`` (:data:`CROSSMODAL_MODELS`,
    :func:`get_crossmodal`, ``mtpert models``); call it from a ``mtpert.crossmodal`` entry point
    so that every process finds it."""
    return CROSSMODAL_MODELS.register(name, cls)


def get_crossmodal(name: str) -> type[CrossModalModel]:
    """The cross-modal model class registered as ``name``; call it with its options to build one."""
    try:
        return CROSSMODAL_MODELS[name]
    except KeyError:
        raise UnknownNameError(
            f"Unknown cross-modal model '{name}'; registered: {', '.join(CROSSMODAL_MODELS)}."
        ) from None
