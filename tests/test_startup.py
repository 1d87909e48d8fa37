"""A command line that answers at once: listing the models imports neither the models nor torch,
and what the registries declare of mtpert's own classes (by path, not imported) is what the
classes are."""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

import mtpert.models
from mtpert import plugins
from mtpert.data import DatasetSpec
from mtpert.models import (
    CROSSMODAL_MODELS,
    CrossModalModel,
    MeanShift,
    ModelPreset,
    ModelRegistry,
    PerturbationModel,
    get_crossmodal,
)
from mtpert.models.crossmodal import BUILTIN_CROSSMODAL
from mtpert.models.registry import BUILTIN_MODELS
from mtpert.plugins import first_line

HEAVY = ("torch", "anndata", "scanpy", "sklearn")
"""Packages that listing the models must not import (each costs from 0.1 to 2 s of start-up)."""

LISTING = """
import json, sys
from typer.testing import CliRunner
from mtpert.cli import app
from mtpert.models import MODELS, get_model, list_models

runner = CliRunner(env={"COLUMNS": "200"})
listed, helped = runner.invoke(app, ["models"]), runner.invoke(app, ["models", "--help"])
table = list_models()
print(json.dumps({
    "exit_codes": [listed.exit_code, helped.exit_code],
    "output": listed.output,
    "descriptions": dict(table["description"]),
    "options": {name: dict(get_model(name).params) for name in MODELS},
    "modules": sorted(sys.modules),
}))
"""


@pytest.fixture(scope="module")
def listing() -> dict:
    """``mtpert models`` (and its ``--help``, and ``list_models``) run in a fresh interpreter,
    with the modules it had imported at the end."""
    ran = subprocess.run(
        [sys.executable, "-c", LISTING], capture_output=True, text=True, check=False, timeout=120
    )
    assert ran.returncode == 0, ran.stderr
    return json.loads(ran.stdout)


@pytest.mark.subprocess
def test_listing_the_models_imports_no_model_nor_torch_and_shows_the_classes(listing: dict) -> None:
    assert listing["exit_codes"] == [0, 0]
    imported = {name.partition(".")[0] for name in listing["modules"]}
    assert not imported & set(HEAVY), f"listing the models imported {sorted(imported & set(HEAVY))}"
    models = sorted(m for m in listing["modules"] if m.startswith("mtpert.models."))
    assert models == ["mtpert.models.registry"], f"listing the models imported {models}"
    # what was read there without importing the classes is what the classes, imported here, say
    for name, description in listing["descriptions"].items():
        assert description == first_line(mtpert.models.get_model(name).cls.__doc__), name
        assert listing["options"][name] == dict(mtpert.models.get_model(name).params)
    for name in CROSSMODAL_MODELS:
        cls = get_crossmodal(name)
        assert f"{cls.__name__}: {first_line(cls.__doc__)}" in listing["output"], name


@pytest.mark.parametrize("preset", BUILTIN_MODELS, ids=lambda p: p.name)
def test_builtin_presets_declare_their_class_as_it_is(preset: ModelPreset) -> None:
    cls = preset.cls
    assert issubclass(cls, PerturbationModel) and not inspect.isabstract(cls)
    assert preset.class_path == f"{cls.__module__}:{cls.__qualname__}"
    assert preset.class_name == cls.__name__
    assert preset.description == first_line(cls.__doc__) != ""
    assert preset.check_params(preset.params) == dict(preset.params)  # options the class takes


@pytest.mark.parametrize(("name", "path"), BUILTIN_CROSSMODAL, ids=[n for n, _ in BUILTIN_CROSSMODAL])
def test_builtin_crossmodal_models_declare_their_class_as_it_is(name: str, path: str) -> None:
    assert CROSSMODAL_MODELS.path(name) == path
    cls = get_crossmodal(name)
    assert issubclass(cls, CrossModalModel) and path == f"{cls.__module__}:{cls.__qualname__}"
    assert plugins.class_description(path) == first_line(cls.__doc__) != ""


def test_a_preset_declared_by_path_is_the_class_it_names() -> None:
    preset = ModelPreset("shift", "mtpert.models.simple:MeanShift", {"min_cells": 3})
    assert preset.cls is MeanShift and preset.class_name == "MeanShift"
    model = preset(DatasetSpec())
    assert type(model) is MeanShift and model.min_cells == 3
    registry = ModelRegistry([preset], group="mtpert.tests.none")
    # the same model again, given by class: accepted, not a clash with the one declared by path
    assert registry.register("shift", MeanShift, min_cells=3).cls is MeanShift


class _Documented:
    """What the class does."""


Alias = _Documented
"""A class without a ``class`` statement of its own name: its description needs it imported."""


def test_a_class_not_found_in_its_source_is_described_once_imported() -> None:
    assert plugins.class_description(f"{__name__}:Alias") == "What the class does."
    assert plugins.class_description(f"{__name__}:_Documented") == "What the class does."


def test_the_models_package_exports_each_name_from_its_module() -> None:
    """``mtpert.models`` imports its names when first used; the names it lists for type checkers
    (its ``TYPE_CHECKING`` imports), in ``__all__`` and for import are the same."""
    tree = ast.parse(Path(mtpert.models.__file__).read_text())
    [checking] = [
        node
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    ]
    imports = [node for node in checking.body if isinstance(node, ast.ImportFrom)]
    declared = {alias.name: node.module for node in imports for alias in node.names}
    assert sorted(declared) == sorted(mtpert.models.__all__)
    for name, module in declared.items():
        assert getattr(mtpert.models, name) is getattr(sys.modules[module], name), name
    with pytest.raises(AttributeError, match="has no attribute 'no_such_model'"):
        mtpert.models.no_such_model  # noqa: B018
