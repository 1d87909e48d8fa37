"""Models added from outside mtpert: ``register_model``, the ``mtpert.models`` entry point, and
saved models found again by their class.

The test plugin (``tests/plugin_pkg``) is pip-installed into a temporary folder that is put on
the path, as a lab's own model package would be installed; the benchmark test runs mtpert in a
subprocess that finds it through ``PYTHONPATH``.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from anndata import AnnData
from typer.testing import CliRunner

from mtpert import plugins as plugins_module
from mtpert.benchmark.store import ResultStore
from mtpert.cli import app
from mtpert.data import DatasetSpec, prepare, simulate
from mtpert.errors import CheckpointError, ConfigError, MtpertError
from mtpert.models import MeanShift, ModelRegistry, PerturbationModel, get_model, list_models
from mtpert.models import registry as registry_module
from mtpert.models.crossmodal import (
    BUILTIN_CROSSMODAL,
    CROSSMODAL_ENTRY_POINT_GROUP,
    CrossModalRegistry,
    get_crossmodal,
)
from mtpert.models.registry import BUILTIN_MODELS, ENTRY_POINT_GROUP
from mtpert.plugins import PluginWarning

PLUGIN_SOURCE = Path(__file__).parent / "plugin_pkg"
SPEC = DatasetSpec()


class DampedMeanShift(MeanShift):
    """Half the average shift: a user's own model class, never registered."""

    name = "damped_mean_shift"

    def _fit(self, train: AnnData, val: AnnData | None) -> None:
        super()._fit(train, val)
        self.shifts = self.shifts / 2


def _failing_plugin() -> None:
    raise RuntimeError("this plugin is broken")


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test plugin installed with ``pip --target``: a folder with the package and the
    dist-info from which importlib.metadata reads its entry points."""
    root = tmp_path_factory.mktemp("plugin")
    source = shutil.copytree(PLUGIN_SOURCE, root / "source")  # building writes next to the sources
    target = root / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--no-build-isolation"]
    installed = subprocess.run([*pip, "--target", str(target), str(source)], check=False, capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr
    return target


@pytest.fixture
def registry(plugin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> ModelRegistry:
    """A new registry of mtpert's models that discovers the installed plugin, standing in for
    ``MODELS`` (so the session's registry is left as it is)."""
    monkeypatch.syspath_prepend(str(plugin_dir))
    fresh = ModelRegistry(BUILTIN_MODELS)
    monkeypatch.setattr(registry_module, "MODELS", fresh)
    return fresh


@pytest.fixture(scope="module")
def data() -> AnnData:
    return prepare(simulate(seed=1, n_cells=40, n_genes=150), SPEC, n_hvg=100)


@pytest.fixture(scope="module")
def sim_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "sim.h5ad"
    simulate(seed=1, n_cells=40, n_genes=150).write_h5ad(path)
    return path


def _control(data: AnnData) -> AnnData:
    return data[data.obs["condition"] == "control"]


# ---------------------------------------------------------------------------- the plugin
@pytest.mark.subprocess  # pip installs the plugin
def test_plugin_models_are_discovered_with_their_presets(registry: ModelRegistry) -> None:
    plugin = importlib.import_module("mtpert_testplugin")
    assert registry["shift_by_one"].cls is plugin.ShiftByOne and registry["shift_by_one"].params == {}
    assert registry["shift_by_two"].params == {"shift": 2.0}
    assert list(registry)[: len(BUILTIN_MODELS)] == [p.name for p in BUILTIN_MODELS]
    assert get_model("shift_by_two")(SPEC).shift == 2.0
    listed = list_models()
    assert listed.loc["shift_by_two", "class"] == "ShiftByOne"
    assert listed.loc["shift_by_two", "options"] == {"shift": 2.0}


@pytest.mark.subprocess  # pip installs the plugin
def test_cli_lists_plugin_models(registry: ModelRegistry, crossmodal: CrossModalRegistry) -> None:
    listed = CliRunner().invoke(app, ["models"])
    assert listed.exit_code == 0, listed.output
    assert "shift_by_one" in listed.output and "shift_by_two" in listed.output
    assert "5 cross-modal models" in listed.output  # mtpert's four and the plugin's
    assert "target_mean" in listed.output and "MultimodalAE" in listed.output


@pytest.fixture
def crossmodal(plugin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> CrossModalRegistry:
    """A new registry of mtpert's cross-modal models that discovers the installed plugin, standing
    in for ``CROSSMODAL_MODELS``."""
    monkeypatch.syspath_prepend(str(plugin_dir))
    fresh = CrossModalRegistry(BUILTIN_CROSSMODAL, CROSSMODAL_ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry_module, "CROSSMODAL_MODELS", fresh)
    return fresh


@pytest.mark.subprocess  # pip installs the plugin
def test_plugin_crossmodal_models_are_discovered_and_fit(crossmodal: CrossModalRegistry) -> None:
    plugin = importlib.import_module("mtpert_testplugin")
    assert list(crossmodal) == ["own_gene", "ridge", "knn", "multimodal", "target_mean"]
    model_cls = get_crossmodal("target_mean")
    assert model_cls is plugin.TargetMean
    rng = np.random.default_rng(0)
    source = AnnData(rng.normal(size=(20, 4)), var=pd.DataFrame(index=[f"g{i}" for i in range(4)]))
    target = AnnData(rng.normal(size=(20, 2)), obs=source.obs, var=pd.DataFrame(index=["p0", "p1"]))
    predicted = model_cls().fit(source, target).predict(source[:3])
    np.testing.assert_allclose(predicted.X, np.tile(target.X.mean(0), (3, 1)), rtol=1e-6)


@pytest.mark.subprocess
@pytest.mark.slow
def test_cli_benchmarks_a_plugin_model(plugin_dir: Path, registry: ModelRegistry, sim_path: Path, tmp_path: Path) -> None:
    config = tmp_path / "bench.yaml"
    settings = {"holdout": ["type_0"], "n_hvg": 100, "noise_ceiling_repeats": 0, "save_models": True}
    config.write_text(yaml.safe_dump(settings))
    out = tmp_path / "out"
    args = ["--data", str(sim_path), "--models", "control,shift_by_one", "--seeds", "1", "--config", str(config)]
    command = [sys.executable, "-c", "from mtpert.cli import app; app()", "benchmark", *args, "--out", str(out), "--no-report"]
    path = os.pathsep.join(p for p in (str(plugin_dir), os.environ.get("PYTHONPATH")) if p)  # as a user's Python would
    run = subprocess.run(command, check=False, env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Skipped the model plugin" not in run.stderr
    results = ResultStore(out).results()
    assert set(results["model"]) == {"control", "shift_by_one"}
    distance = results[results["metric"] == "euclidean_rel"].set_index("model")["value"]
    assert distance["control"] == pytest.approx(1.0) and distance["shift_by_one"] > 1.1  # it ran

    saved = [p.parent for p in (out / "models").rglob("config.json")]
    (shift_dir,) = [p for p in saved if json.loads((p / "config.json").read_text())["model"] == "shift_by_one"]
    assert json.loads((shift_dir / "config.json").read_text())["class"] == "mtpert_testplugin:ShiftByOne"
    assert type(PerturbationModel.load(shift_dir)).__module__ == "mtpert_testplugin"  # registered here too


@pytest.mark.subprocess  # pip installs the plugin
def test_plugin_model_saves_and_loads(registry: ModelRegistry, data: AnnData, tmp_path: Path) -> None:
    plugin = importlib.import_module("mtpert_testplugin")
    model = get_model("shift_by_two")(SPEC).fit(data)
    expected = model.predict(_control(data), "stimulated").X
    path = model.save(tmp_path / "shift")
    for loader in (PerturbationModel, plugin.ShiftByOne):
        loaded = loader.load(path)
        assert type(loaded) is plugin.ShiftByOne and loaded.shift == 2.0
        np.testing.assert_array_equal(loaded.predict(_control(data), "stimulated").X, expected)


# ---------------------------------------------------------------------------- saved classes
def test_unregistered_model_class_round_trips_through_its_class(data: AnnData, tmp_path: Path) -> None:
    model = DampedMeanShift(SPEC, min_cells=2).fit(data)
    expected = model.predict(_control(data), "stimulated").X
    path = model.save(tmp_path / "damped")
    assert json.loads((path / "config.json").read_text())["class"] == f"{__name__}:DampedMeanShift"
    loaded = DampedMeanShift.load(path)
    assert type(loaded) is DampedMeanShift and loaded.min_cells == 2
    np.testing.assert_array_equal(loaded.predict(_control(data), "stimulated").X, expected)
    for loader in (PerturbationModel, MeanShift):  # the class is neither registered nor theirs
        with pytest.raises(CheckpointError, match=r"DampedMeanShift'.*\(DampedMeanShift\.load\(path\)\)"):
            loader.load(path)
    undamped = MeanShift(SPEC, min_cells=2).fit(data).predict(_control(data), "stimulated").X
    assert not np.allclose(undamped, expected)  # the subclass, not MeanShift, was loaded


@pytest.fixture
def mean_shift_dir(data: AnnData, tmp_path: Path) -> Path:
    return MeanShift(SPEC, min_cells=2).fit(data).save(tmp_path / "mean_shift")


def _edit(path: Path, **changes: str) -> None:
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, **changes}))


@pytest.mark.parametrize(
    "changes",
    [
        {"class": "MeanShift"},  # mtpert 0.1 recorded the bare class name
        {"class": "MeanShift", "model": "mean_shift_custom"},  # ... of a model without a preset
        {"class": "mtpert.models.moved_away:MeanShift"},  # a module since moved: the registered name
    ],
    ids=["old-format", "old-format-no-preset", "moved-module"],
)
def test_models_saved_without_an_importable_class_load_by_name(mean_shift_dir: Path, changes) -> None:
    _edit(mean_shift_dir, **changes)
    assert type(PerturbationModel.load(mean_shift_dir)) is MeanShift


def test_a_saved_class_that_is_not_a_model_is_refused(mean_shift_dir: Path) -> None:
    _edit(mean_shift_dir, **{"class": "collections:OrderedDict"})
    with pytest.raises(CheckpointError, match="'collections:OrderedDict' .*neither one of mtpert's models nor registered"):
        PerturbationModel.load(mean_shift_dir)


def test_a_saved_class_that_cannot_be_found_is_refused(mean_shift_dir: Path) -> None:
    _edit(mean_shift_dir, model="fancy", **{"class": "no_such_lab_package.models:Fancy"})
    with pytest.raises(CheckpointError, match=r"'no_such_lab_package.models:Fancy' for its 'fancy' model.*Fancy\.load\(path\)"):
        PerturbationModel.load(mean_shift_dir)


def test_loading_through_a_class_the_model_is_not_is_refused(mean_shift_dir: Path) -> None:
    with pytest.raises(MtpertError, match="holds a 'mean_shift' model .*not a DampedMeanShift"):
        DampedMeanShift.load(mean_shift_dir)


# ---------------------------------------------------------------------------- register_model
def test_register_model_adds_a_preset(monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = ModelRegistry(BUILTIN_MODELS)
    monkeypatch.setattr(registry_module, "MODELS", fresh)
    monkeypatch.setattr(plugins_module, "entry_points", lambda group: [])
    preset = registry_module.register_model("damped", DampedMeanShift, min_cells="3", one_dose_at_a_time=True)
    assert get_model("damped") is preset and preset.one_dose_at_a_time
    model = preset(SPEC)
    assert type(model) is DampedMeanShift and model.min_cells == 3  # "3" read as the int it must be
    assert "damped" in list_models().index
    assert registry_module.register_model("damped", DampedMeanShift, min_cells=3, one_dose_at_a_time=True) == preset


@pytest.mark.parametrize(
    ("name", "cls", "options", "error", "message"),
    [
        ("mean_shift", DampedMeanShift, {}, ConfigError, "'mean_shift' is already registered as mtpert.models.simple:MeanShift"),
        ("mean_shift", MeanShift, {"min_cells": 3}, ConfigError, "already registered .*under another name"),
        ("mine", dict, {}, TypeError, "not a subclass of mtpert.models.PerturbationModel"),
        ("mine", PerturbationModel, {}, TypeError, "does not implement _fit, _learned, _predict, _restore"),
        ("mine", DampedMeanShift, {"min_cell": 3}, ConfigError, "min_cell: not a parameter of 'mine'; its parameters: min_cells"),
        ("mine", DampedMeanShift, {"min_cells": "many"}, ConfigError, "min_cells: 'many' is not valid"),
        ("a,b", DampedMeanShift, {}, ConfigError, "Model name 'a,b' cannot be used"),
    ],
    ids=["name-of-another-class", "name-with-other-options", "not-a-model", "abstract", "unknown-option", "bad-value", "bad-name"],
)
def test_register_model_refuses(name, cls, options, error, message) -> None:
    fresh = ModelRegistry(BUILTIN_MODELS, group="mtpert.tests.none")
    with pytest.raises(error, match=message):
        fresh.register(name, cls, **options)
    assert name not in fresh or fresh[name].cls is MeanShift


def test_broken_plugins_warn_and_the_others_load(monkeypatch: pytest.MonkeyPatch) -> None:
    plugins = [
        EntryPoint("missing", "mtpert_no_such_plugin:Model", ENTRY_POINT_GROUP),
        EntryPoint("not_a_model", "collections:OrderedDict", ENTRY_POINT_GROUP),
        EntryPoint("raises", f"{__name__}:_failing_plugin", ENTRY_POINT_GROUP),
        EntryPoint("mean_shift", f"{__name__}:DampedMeanShift", ENTRY_POINT_GROUP),
        EntryPoint("damped", f"{__name__}:DampedMeanShift", ENTRY_POINT_GROUP),
    ]
    calls = []
    monkeypatch.setattr(plugins_module, "entry_points", lambda group: calls.append(group) or plugins)
    fresh = ModelRegistry(BUILTIN_MODELS)
    assert not calls  # nothing is loaded before the registry is read
    with pytest.warns(PluginWarning) as caught:
        assert "damped" in fresh and fresh["mean_shift"].cls is MeanShift
    messages = "\n".join(str(w.message) for w in caught)
    for expected in [
        "model plugin 'missing' = 'mtpert_no_such_plugin:Model' (package unknown): ModuleNotFoundError",
        "model plugin 'not_a_model' = 'collections:OrderedDict' (package unknown): TypeError",
        "model plugin 'raises' = 'tests.test_plugins:_failing_plugin' (package unknown): RuntimeError: this plugin is broken",
        "model plugin 'mean_shift' = 'tests.test_plugins:DampedMeanShift' (package unknown): ConfigError",
    ]:
        assert expected.replace("tests.test_plugins", __name__) in messages
    assert len(caught) == 4 and calls == [ENTRY_POINT_GROUP]
    assert list(fresh) == [*(p.name for p in BUILTIN_MODELS), "damped"]  # read again: loaded once
    assert calls == [ENTRY_POINT_GROUP]
