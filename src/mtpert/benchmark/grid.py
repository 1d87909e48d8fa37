"""A benchmark as configuration: which data, models, held-out targets and seeds, expanded into runs.

A :class:`RunSpec` is one cell of the grid (dataset x split x held-out target x model x seed) with
everything that decides its result; its :attr:`~RunSpec.id` is a hash of that, so the same run gets
the same id in every invocation and a finished run is recognised and skipped on resume.

Two splits: ``group`` holds out one group (a cell type, or any ``group_key`` such as a species)
at every dose; ``condition`` holds out one (condition, dose) in every group, asking for a dose
never seen in training.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal, get_type_hints

import pandas as pd
from anndata import AnnData
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
)
from pydantic_core import PydanticCustomError

from mtpert.data.folds import Holdout, SplitKind
from mtpert.data.pp import require_counts_or_log
from mtpert.data.spec import DEFAULT_MIN_CELLS, MIN_CELLS_FLOOR, DatasetSpec
from mtpert.data.split import (
    condition_label,
    eligible_conditions,
    eligible_groups,
    predictable_combinations,
)
from mtpert.errors import ConfigError, DataError
from mtpert.models.base import RUNTIME_OPTIONS, PerturbationModel
from mtpert.models.registry import MODELS, ModelPreset, get_model
from mtpert.tuning import TUNE, TuneSettings, free_space
from mtpert.uncertainty import UNCERTAINTY, UncertaintySettings

log = logging.getLogger("mtpert.benchmark")

NOISE_CEILING = "noise_ceiling"
"""Pseudo-model of the grid: half of the true perturbed cells scored as a prediction of the other half."""

SavePredictions = Literal["showcase", "all", "none"]


def _listed(value: Any) -> Any:
    """A lone name or number where a list is expected is a list of one (``models: mtae``,
    ``seeds: 3``, ``holdout: B``); ``"all"`` stays as it is."""
    return [value] if isinstance(value, str | int | float) and value != "all" else value


MAX_SEED = 2**32 - 1
"""Largest seed: numpy's legacy and scikit-learn's generators take 0 to 2**32 - 1."""


def _seed(value: int) -> int:
    """A seed every generator a run seeds takes, refused here rather than deep inside numpy."""
    if not 0 <= value <= MAX_SEED:
        raise PydanticCustomError("seed", f"a seed is a whole number from 0 to {MAX_SEED}; give e.g. 1")
    return value


Names = Annotated[tuple[str, ...], BeforeValidator(_listed)]
Seeds = Annotated[tuple[Annotated[int, AfterValidator(_seed)], ...], BeforeValidator(_listed)]
_SCHEMA = ConfigDict(coerce_numbers_to_str=True, extra="forbid")
"""Validation of the settings' types: lax (``"2000"`` is 2000, ``[0]`` a group named ``"0"``,
since groups are matched as text), but nothing that cannot be read as the type."""


@dataclass(frozen=True)
class BenchmarkConfig:
    """Everything a benchmark run needs; read from YAML or JSON with :meth:`from_file`.

    Attributes:
        data: an .h5ad file or the name of a registered dataset.
        models: registered model names, or named variants: a mapping from the name a setting is
            reported under to its registered ``model`` and hyperparameters, e.g.
            ``{mtae: {}, mtae_residual: {model: mtae, prediction: residual}}``, so one directory
            compares settings of one model. Read into ``models`` (the names), ``variants`` and
            ``model_params``. A ``tune`` entry (``{mtae_tuned: {model: mtae, tune: {trials:
            30}}}``, see :class:`~mtpert.tuning.TuneSettings`) tunes the model before
            each run on that run's training cells only, its study kept under ``tuning/``; an
            ``uncertainty`` entry (``{members: 5, folds: 3}``, see
            :class:`~mtpert.uncertainty.UncertaintySettings`) adds calibrated
            intervals for each target's change, scored in the report's uncertainty section.
        holdout: what to hold out, or ``"all"`` (everything with ``min_cells`` cells to score;
            the others are skipped with the reason): with ``split="group"`` groups of
            ``group_key``; with ``split="condition"`` (condition, dose) labels such as
            ``"stimulated@0.5"`` (:func:`mtpert.data.condition_label`).
        seeds: each seed fixes a run's train/validation split and the model's initialization.
        spec: obs keys; default the registered dataset's, else :class:`DatasetSpec`'s defaults.
        n_hvg: highly variable genes, chosen without the held-out group's perturbed cells unless
            ``hvg_on_all_cells`` (the scGen-era protocol, for reproducing published numbers).
        min_cells: fewest control and perturbed cells a held-out group needs to be scored.
        model_params: hyperparameters per model name, over the registered preset's.
        noise_ceiling_repeats: random half-splits of the truth averaged for the noise-ceiling
            row (0: no ceiling).
        save_predictions: keep predictions as h5ad for the ``"showcase"`` group (first seed,
            every model; what the report plots), for ``"all"`` runs, or ``"none"``.
        showcase: the group the report plots; default the eligible one with the most perturbed
            cells. With ``split="condition"``, the report plots its predictions at every held-out
            dose, and ``save_predictions="showcase"`` keeps the first seed's of every run.
        save_models: keep every fitted model (``model.save``) under ``models/<run id>``.
        split: ``"group"`` (hold out a group at every dose; with ``group_key="replicate"``, the
            held-out cells of seen perturbations), ``"condition"`` (hold out a (condition, dose) in
            every group; needs a dose key, and models that predict unseen doses) or
            ``"combination"`` (hold out a share of a screen's combinations such as ``"A+B"``, whose
            parts were applied alone; needs ``spec.combination_separator``).
        group_key: obs column of the groups; default ``spec.cell_type_key``, e.g. ``"species"``
            to hold out a species.
        one_dose_at_a_time: models fitted once per dose on data with doses (see
            :class:`mtpert.models.registry.ModelPreset`); default the registered presets' choice.
        variants: the registered model of each name in ``models`` that is not one itself.
        split_seeds: with ``split="combination"``: each draws which combinations are held out
            (its own held-out target); ``holdout`` must then be ``"all"``.
        combination_fraction: with ``split="combination"``: the share of the predictable
            combinations held out (:func:`mtpert.data.holdout_combinations`).
    """

    data: str
    models: Names | Mapping[str, Mapping[str, Any] | None]
    holdout: Names | Literal["all"] = "all"
    seeds: Seeds = (1, 2, 19193)
    spec: DatasetSpec | None = None
    n_hvg: Annotated[int, Field(ge=0)] = 2000
    hvg_on_all_cells: bool = False
    min_cells: Annotated[int, Field(ge=MIN_CELLS_FLOOR)] = DEFAULT_MIN_CELLS
    model_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    noise_ceiling_repeats: Annotated[int, Field(ge=0)] = 5
    save_predictions: SavePredictions = "showcase"
    showcase: str | None = None
    save_models: bool = False
    split: SplitKind = "group"
    group_key: str | None = None
    one_dose_at_a_time: Names | None = None
    variants: Mapping[str, str] = field(default_factory=dict)
    split_seeds: Seeds = (1, 2, 3)
    combination_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.5

    def __post_init__(self) -> None:
        for name, value in _validated(self).items():
            object.__setattr__(self, name, value)
        if isinstance(self.models, Mapping):
            self._read_variants()
        for setting in ("models", "seeds", "split_seeds"):
            values = getattr(self, setting)
            if len(set(values)) < len(values):
                repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
                log.warning("%s lists %s more than once; each runs once", setting, repeated)
                object.__setattr__(self, setting, tuple(dict.fromkeys(values)))
        if not self.models:
            raise ConfigError("No models given; name at least one (see `mtpert models`).")
        if not self.seeds:
            raise ConfigError("No seeds given; e.g. seeds: [1, 2, 19193].")
        if not self.holdout:
            raise ConfigError("holdout is empty; give group names or 'all'.")
        for name in (*self.models, *self.model_params, *self.variants.values()):
            if name == NOISE_CEILING:
                raise ConfigError(f"'{NOISE_CEILING}' is added by the harness; set noise_ceiling_repeats instead.")
        for name, model in self.variants.items():
            if name in MODELS and model != name:
                raise ConfigError(f"variant '{name}' has the name of a registered model but is a '{model}'; name it otherwise.")
        for name in self.models:
            if self.registered(name) not in MODELS:
                raise ConfigError(f"Unknown model '{self.registered(name)}'; registered models: {', '.join(MODELS)}.")
        for setting in ("model_params", "one_dose_at_a_time", "variants"):
            extra = set(getattr(self, setting) or ()) - set(self.models)
            if extra:
                raise ConfigError(f"{setting} names models not in the benchmark: {sorted(extra)}.")
        params = {name: self._checked_params(name, values) for name, values in self.model_params.items()}
        object.__setattr__(self, "model_params", MappingProxyType({k: MappingProxyType(v) for k, v in params.items()}))
        object.__setattr__(self, "variants", MappingProxyType({k: v for k, v in self.variants.items() if k != v}))

    def _checked_params(self, name: str, values: Mapping[str, Any]) -> dict[str, Any]:
        """Model ``name``'s hyperparameters checked against its constructor, and its ``tune``
        settings (:class:`~mtpert.tuning.TuneSettings`) in their canonical form."""
        values = dict(values)
        tune, uncertainty = values.pop(TUNE, None), values.pop(UNCERTAINTY, None)
        checked = MODELS[self.registered(name)].check_params(values, where=f"model_params.{name}")
        if tune is not None:
            settings = TuneSettings.read(tune)
            declared = MODELS[self.registered(name)](self.spec or DatasetSpec(), **checked).search_space()
            free_space(name, declared, settings, checked)  # nothing left to tune is refused before any run
            checked[TUNE] = settings.to_dict()
        if uncertainty is not None:
            checked[UNCERTAINTY] = UncertaintySettings.read(uncertainty).to_dict()
        return checked

    def hyperparameters(self, name: str) -> dict[str, Any]:
        """The hyperparameters model ``name`` is built with (its ``tune`` and ``uncertainty``
        settings left out)."""
        return {k: v for k, v in self.model_params.get(name, {}).items() if k not in (TUNE, UNCERTAINTY)}

    def _read_variants(self) -> None:
        """``models`` given as a mapping: names, the registered model of each, and its parameters
        (merged into ``model_params``; a key in both is ambiguous and refused)."""
        names, variants, params = [], dict(self.variants), {k: dict(v) for k, v in self.model_params.items()}
        for name, settings in self.models.items():
            settings = dict(settings or {})
            variants[name] = str(settings.pop("model", name))
            both = sorted(set(settings) & set(params.get(name, {})))
            if both:
                raise ConfigError(f"models.{name} and model_params.{name} both set {both}; set each once.")
            if settings or name in params:
                params[name] = {**settings, **params.get(name, {})}
            names.append(name)
        object.__setattr__(self, "models", tuple(names))
        object.__setattr__(self, "variants", variants)
        object.__setattr__(self, "model_params", params)

    def registered(self, name: str) -> str:
        """The registered model that the benchmark's model ``name`` (maybe a variant) is."""
        return self.variants.get(name, name)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> BenchmarkConfig:
        """Build from plain values (a parsed file); unknown or missing keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"Unknown benchmark settings {unknown}; known: {sorted(known)}.")
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING and f.name not in values]
        if missing:
            raise ConfigError(
                f"Missing benchmark setting(s) {missing}: give the data file (or a registered dataset) and the "
                "models, e.g. data: cells.h5ad and models: [control, mean_shift] (CLI: --data, --models)."
            )
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **overrides: Any) -> BenchmarkConfig:
        """Read a ``.yaml``/``.yml`` or ``.json`` file; ``overrides`` (not None) replace its values.

        YAML is read with ``safe_load``: tags such as ``!!python/object`` are refused, never run.
        """
        import yaml

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"Config file {path} does not exist.")
        suffix = path.suffix.lower()
        if suffix not in (".yaml", ".yml", ".json"):
            raise ConfigError(f"Config file {path}: use .yaml, .yml or .json.")
        try:
            text = path.read_text()
            values = json.loads(text) if suffix == ".json" else yaml.safe_load(text) or {}
        except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as error:  # JSONDecodeError is a ValueError
            raise ConfigError(f"Cannot read {path} as {'JSON' if suffix == '.json' else 'YAML'}: {error}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path} must hold a mapping of settings, not a {type(values).__name__}.")
        return cls.from_dict({**values, **{k: v for k, v in overrides.items() if v is not None}})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (the inverse of :meth:`from_dict`)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["spec"] = None if self.spec is None else self.spec.to_dict()
        values["model_params"] = {k: dict(v) for k, v in self.model_params.items()}
        values["variants"] = dict(self.variants)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}

    def dataset_spec(self) -> DatasetSpec:
        """The obs keys: as configured, else the registered dataset's, else the defaults."""
        from mtpert.data.registry import DATASETS

        if self.spec is not None:
            return self.spec
        return DATASETS[self.data].spec if self.data in DATASETS else DatasetSpec()

    def fits_per_dose(self, model: str) -> bool:
        """Whether ``model`` is fitted once per dose (on data with doses)."""
        if self.one_dose_at_a_time is None:
            return get_model(self.registered(model)).one_dose_at_a_time
        return model in self.one_dose_at_a_time


@dataclass(frozen=True)
class RunSpec:
    """One run: fit ``model`` under ``seed`` with ``target`` held out of ``dataset``, and score it.

    ``target`` is a group of ``group_key`` (default the spec's cell-type key) for the ``group``
    split, a condition (at ``dose``) for the ``condition`` split. ``one_dose_at_a_time``: one model
    per dose. ``model`` is the name results are reported under; ``registered_as`` the registered
    model it is, where that differs (a named variant). ``params`` holds what the user set;
    ``defaults`` what else the model takes, from its preset and its class (None: nothing), so
    that both, the model's effective hyperparameters, decide the id: a changed default makes a
    new run, not one that an old result stands for. ``params``, ``defaults`` and ``preparation``
    are canonical JSON, so a RunSpec is hashable and its id stable.
    """

    dataset: str
    spec: DatasetSpec
    preparation: str
    split: SplitKind
    target: str
    model: str
    seed: int
    params: str
    group_key: str | None = None
    dose: float | None = None
    one_dose_at_a_time: bool = False
    registered_as: str | None = None
    defaults: str | None = None

    @property
    def registered_model(self) -> str:
        """The registered model to build: ``registered_as``, else ``model``."""
        return self.registered_as or self.model

    @property
    def id(self) -> str:
        """First 16 hex digits of the SHA-256 of the run's canonical JSON. Fields with a default
        enter it only when they differ from it (and the spec as :meth:`DatasetSpec.to_dict` gives
        it, which does the same), so adding one keeps every earlier run's id: a run whose model
        takes nothing from defaults (``defaults`` None) has the id it had before they entered it."""
        unset = {f.name: f.default for f in fields(self) if f.default is not MISSING}
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values = {k: v for k, v in values.items() if k not in unset or v != unset[k]}
        return hashlib.sha256(_canonical(values).encode()).hexdigest()[:16]

    @property
    def slot(self) -> str:
        """The id without ``defaults``: the place of the run in its grid, whatever settings its
        model takes from defaults. Runs recorded before defaults entered the id are named by it."""
        return replace(self, defaults=None).id

    @property
    def hparams(self) -> str:
        """The model's effective hyperparameters as canonical JSON: ``defaults`` overridden by
        ``params`` (without the ``tune`` and ``uncertainty`` settings)."""
        given = {k: v for k, v in self.model_params.items() if k not in (TUNE, UNCERTAINTY)}
        return _canonical(json.loads(self.defaults or "{}") | given)

    @property
    def heldout(self) -> str:
        """What the run holds out: a group, a condition label such as ``'stimulated@0.5'``, or
        the combinations of a split seed."""
        if self.split == "combination":
            return f"combinations (split seed {self.target})"
        return self.target if self.split == "group" else condition_label(self.target, self.dose)

    @property
    def holdout(self) -> Holdout:
        """The run's held-out cells, as :func:`mtpert.data.make_fold` takes them."""
        return Holdout(self.target, self.split, self.dose, self.group_key, self.prep.get("combination_fraction", 0.5))

    @property
    def model_params(self) -> dict[str, Any]:
        return json.loads(self.params)

    @property
    def prep(self) -> dict[str, Any]:
        """``n_hvg``, ``hvg_on_all_cells`` and ``min_cells``."""
        return json.loads(self.preparation)

    def label(self) -> str:
        return f"{self.heldout} | {self.model} | seed {self.seed}"


@dataclass(frozen=True)
class Grid:
    """The runs of a benchmark, the held-out targets skipped (with reasons), and the showcase group."""

    runs: tuple[RunSpec, ...]
    skipped: pd.DataFrame
    showcase: str

    def keeps_prediction(self, run: RunSpec, config: BenchmarkConfig) -> bool:
        """Whether ``run``'s predictions are saved under ``config.save_predictions``."""
        if run.model == NOISE_CEILING or config.save_predictions == "none":
            return False
        if config.save_predictions == "all":
            return True
        return run.seed == config.seeds[0] and (run.split != "group" or run.target == self.showcase)


def expand(config: BenchmarkConfig, adata: AnnData) -> Grid:
    """Every (held-out target, model, seed) run of ``config`` on ``adata``, grouped by target.

    Targets with fewer than ``min_cells`` cells to score are skipped, not an error; an unknown
    target name, hyperparameter or a model that cannot serve the split is.
    """
    spec = config.dataset_spec()
    spec.validate(adata)
    require_counts_or_log(adata, what="mtpert benchmark")  # before any run, not in each
    group_key = None if config.group_key in (None, spec.cell_type_key) else config.group_key
    groups = eligible_groups(adata, spec, group_key=group_key, min_cells=config.min_cells)
    if config.split == "group":
        table = groups
    elif config.split == "combination":
        table = _combination_targets(config, adata, spec)
    elif spec.dose_key is None:
        raise ConfigError("split 'condition' holds out a dose of a condition; the spec has no dose_key (set spec: {dose_key: ...}).")
    else:
        table = eligible_conditions(adata, spec, group_key=group_key, min_cells=config.min_cells)
    chosen = list(table.index) if config.holdout == "all" else list(config.holdout)
    unknown = [g for g in chosen if g not in table.index]
    if unknown:
        where = f"in obs['{group_key or spec.cell_type_key}']" if config.split == "group" else "among the (condition, dose)s"
        raise ConfigError(f"Held-out target(s) {unknown} not {where}; available: {list(table.index)}.")
    table = table.loc[chosen]
    targets = table.index[table["eligible"]].tolist()
    if not targets:
        raise ConfigError(
            "Too small to hold out and score: "
            + "; ".join(f"{g} ({r})" for g, r in table["reason"].items())
            + f". A target needs {config.min_cells} control and {config.min_cells} perturbed cells: hold out "
            "a larger one (`mtpert data info` lists them), or lower --min-cells (min_cells: in a --config "
            "file; at least 2) if you accept noisier scores."
        )
    shown = targets if config.split == "group" else groups.index[groups["eligible"]].tolist()
    showcase = config.showcase or str(groups.loc[shown, "n_perturbed"].idxmax())
    if showcase not in shown:
        raise ConfigError(f"showcase '{showcase}' is not among the scored groups {shown}.")
    defaults: dict[str, str | None] = {}
    unable: dict[str, str] = {}  # models that cannot serve the split, with the reason
    for name in config.models:  # fail on a bad hyperparameter now, not after hours of runs
        preset, given = get_model(config.registered(name)), config.hyperparameters(name)
        try:
            model = preset(spec, **given)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"model_params for '{name}': {error}") from error
        defaults[name] = _defaults(preset, model, given)
        if config.split == "combination" and not model.predicts_unseen_combinations:
            unable[name] = (
                f"'{name}' cannot predict a combination it was not trained on, which split 'combination' asks for "
                "(control, the additive and linear baselines and the multi-task models can)"
            )
        if config.split == "condition" and (config.fits_per_dose(name) or not model.predicts_unseen_doses):
            unable[name] = (
                f"'{name}' cannot predict a dose it was not trained on, which split 'condition' asks for "
                "(e.g. scvidr_multi, mtae and control can)"
            )
        for setting in (TUNE, UNCERTAINTY):
            if setting in config.model_params.get(name, {}) and spec.dose_key is not None and config.fits_per_dose(name):
                raise ConfigError(f"'{name}' fits one model per dose, which {setting} does not support; leave {setting} out for it.")
    if len(unable) == len(config.models):
        raise ConfigError("; ".join(unable.values()) + ". Leave it out, or use another split.")
    for name, reason in unable.items():
        log.warning("skipping model %s", reason)
    preparation = {"n_hvg": config.n_hvg, "hvg_on_all_cells": config.hvg_on_all_cells, "min_cells": config.min_cells}
    if config.split == "combination":  # only then: the ids of other runs stay as they were
        preparation["combination_fraction"] = config.combination_fraction
    preparation = _canonical(preparation)
    models = [
        (m, dict(config.model_params.get(m, {})), spec.dose_key is not None and config.fits_per_dose(m), config.variants.get(m), defaults[m])
        for m in config.models
    ]
    if config.noise_ceiling_repeats:
        models.append((NOISE_CEILING, {"repeats": config.noise_ceiling_repeats}, False, None, None))
    runs = []
    for label in targets:
        target, dose = (label, None) if config.split != "condition" else (table.loc[label, "condition"], float(table.loc[label, "dose"]))
        runs += [
            RunSpec(dataset_id(config.data), spec, preparation, config.split, target, model, seed, _canonical(params), group_key, dose, *rest)
            for model, params, *rest in models
            for seed in config.seeds
            if model not in unable
        ]
    return Grid(tuple(runs), _skipped(table.loc[~table["eligible"]].drop(columns="eligible"), unable), showcase)


def _skipped(targets: pd.DataFrame, models: Mapping[str, str]) -> pd.DataFrame:
    """What is not run, with the reason: held-out targets (every model), and where some models
    cannot serve the split, those models (every target), told by a ``model`` column."""
    name = targets.index.name or "target"
    if not models:
        return targets.rename_axis(name)
    rows = pd.DataFrame({"model": list(models), "reason": list(models.values())}, index=pd.Index([""] * len(models), name=name))
    return pd.concat([targets.assign(model="").rename_axis(name), rows])


ADDED_LATER = {"min_steps": 0}
"""Hyperparameters added after runs were recorded, at the value that trains as those runs did:
left out of a run's identity there, so that adding a setting does not make every recorded run of
every model that takes it look changed."""


def _defaults(preset: ModelPreset, model: PerturbationModel, given: Mapping[str, Any]) -> str | None:
    """Canonical JSON of the hyperparameters ``model`` (``preset`` built with ``given``) takes
    beyond ``given``: its class's defaults and its preset's options, as the built model records
    them (a model that records none still has its constructor's), less those of
    :data:`ADDED_LATER` at their earlier behaviour; None if there are none."""
    declared = {
        name: p.default for name, p in preset.cls.parameters().items() if p.default is not p.empty and name not in RUNTIME_OPTIONS
    }
    effective = {**declared, **preset.params, **given, **model.hparams}
    taken = {
        k: v
        for k, v in effective.items()
        if (k not in given or _canonical(v) != _canonical(given[k]))
        and not (k in ADDED_LATER and _canonical(v) == _canonical(ADDED_LATER[k]))
    }
    return _canonical(taken) if taken else None


@cache
def _adapters(cls: type) -> dict[str, TypeAdapter]:
    hints = get_type_hints(cls, include_extras=True)
    return {f.name: TypeAdapter(hints[f.name], config=_SCHEMA) for f in fields(cls)}


def _validated(config: BenchmarkConfig) -> dict[str, Any]:
    """Every setting of ``config`` checked against its type (converted where that is lossless);
    one :class:`ConfigError` naming each bad key, its value and the type expected."""
    values, problems = {}, {}
    for name, adapter in _adapters(type(config)).items():
        try:
            values[name] = adapter.validate_python(getattr(config, name))
        except ValidationError as error:
            for e in error.errors():  # a union's alternatives each fail: one line, their messages joined
                where = name + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"] if not _is_schema_tag(p))
                problems.setdefault((where, repr(e["input"])), []).append(e["msg"])
    if problems:
        lines = [f"  - {where}: {value} is not valid: {' or '.join(msgs)}" for (where, value), msgs in problems.items()]
        raise ConfigError("Invalid benchmark settings:\n" + "\n".join(lines))
    return values


def _is_schema_tag(part: str | int) -> bool:
    """Whether a pydantic error location part names a branch of the schema (``"literal['all']"``,
    ``"tuple[str, ...]"``) rather than a key of the user's settings."""
    return isinstance(part, str) and any(c in part for c in "[(")


def _combination_targets(config: BenchmarkConfig, adata: AnnData, spec: DatasetSpec) -> pd.DataFrame:
    """The split seeds of a combination split as its held-out targets (all eligible)."""
    if config.holdout != "all":
        raise ConfigError("split 'combination' holds out combinations drawn by each of split_seeds; leave holdout at 'all'.")
    try:
        candidates = predictable_combinations(adata, spec, min_cells=config.min_cells)
    except DataError as error:
        raise ConfigError(str(error)) from None
    if len(candidates) < 2:
        raise ConfigError(
            f"split 'combination' needs at least two combinations with {config.min_cells} cells whose parts were each "
            f"applied alone to {config.min_cells} cells; found {candidates}. Lower --min-cells, or use another split."
        )
    index = pd.Index([str(s) for s in config.split_seeds])
    return pd.DataFrame({"eligible": True, "reason": ""}, index=index)


def dataset_id(data: str) -> str:
    """How runs name their data: a registered name as is, a file by its name alone, so moving
    the file does not change the run ids."""
    from mtpert.data.registry import DATASETS

    return data if data in DATASETS else Path(data).name


def _canonical(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values give equal strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_jsonable)


def _jsonable(value: Any) -> Any:
    """A value JSON lacks as one it has; anything else (a plugin model's default such as a path)
    as its repr, which is stable for values (a config's own values are JSON already)."""
    if isinstance(value, DatasetSpec):
        return value.to_dict()
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, tuple):
        return list(value)
    return repr(value)
