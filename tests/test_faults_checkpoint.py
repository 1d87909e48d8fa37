"""Saved models that cannot be loaded as they are: a clear CheckpointError naming the file, never
a raw KeyError, load_state_dict RuntimeError or a broadcast error at predict time.

A few tiny models are fitted once and saved; each test damages a copy of a saved directory.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from anndata import AnnData

import mtpert
from mtpert.data import DatasetSpec, prepare, simulate
from mtpert.errors import CheckpointError
from mtpert.models import PerturbationModel, get_model

SPEC = DatasetSpec()
TINY = {"hidden": (8,), "latent_dim": 2, "max_epochs": 1, "progress": False, "num_threads": 1}
MODELS = ("control", "mean_shift", "mtae", "scgen", "scpregan")


def fit(name: str, data: AnnData) -> PerturbationModel:
    """Registered model ``name`` with the ``TINY`` options it accepts, fitted on ``data``."""
    preset = get_model(name)
    options = {k: v for k, v in TINY.items() if k in preset.cls.parameters()}
    return preset(SPEC, **options, **({"min_cells": 2} if name == "mean_shift" else {})).fit(data)


@pytest.fixture(scope="module")
def data() -> AnnData:
    return prepare(simulate(n_cell_types=2, n_genes=12, n_cells=10, seed=0), SPEC, n_hvg=0)


@pytest.fixture(scope="module")
def saved(data: AnnData, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each model of ``MODELS`` fitted on all genes (``name``) and on the first 8 (``name/8``)."""
    root = tmp_path_factory.mktemp("saved")
    paths = {}
    for name in MODELS:
        torch.manual_seed(0)
        paths[name] = fit(name, data).save(root / name)
        paths[f"{name}/8"] = fit(name, data[:, :8].copy()).save(root / f"{name}_8")
    return paths


@pytest.fixture
def copy(saved: dict[str, Path], tmp_path: Path):
    """A fresh copy of a saved model's directory, to damage."""
    return lambda name: Path(shutil.copytree(saved[name], tmp_path / name.replace("/", "_")))


def edit_config(path: Path, change) -> None:
    config = json.loads((path / "config.json").read_text())
    change(config)
    (path / "config.json").write_text(json.dumps(config))


def control_cells(data: AnnData) -> AnnData:
    return data[data.obs["condition"] == "control"]


# ---------------------------------------------------------------------- weights vs config
def test_another_models_weights_are_refused(copy, saved) -> None:
    path = copy("mtae")
    shutil.copy(saved["scgen"] / "weights.pt", path / "weights.pt")
    with pytest.raises(CheckpointError) as error:
        PerturbationModel.load(path)
    message = str(error.value)
    assert str(path / "weights.pt") in message and str(path / "config.json") in message
    assert "lacks" in message and "no place for" in message and "'net.encoder" in message


@pytest.mark.parametrize("name", ["mtae", "scgen", "scpregan", "mean_shift"])
def test_weights_of_another_gene_set_are_refused(name: str, copy, saved) -> None:
    path = copy(name)
    shutil.copy(saved[f"{name}/8"] / "weights.pt", path / "weights.pt")
    with pytest.raises(CheckpointError, match=r"weights\.pt does not fit") as error:
        PerturbationModel.load(path)
    message = str(error.value)
    assert str(path / "weights.pt") in message and "(12 genes)" in message
    assert "of shape" in message and "needs" in message and ", 12)" in message


def test_mean_shift_shifts_of_the_wrong_length_are_refused(copy, data) -> None:
    path = copy("mean_shift")
    shifts = torch.load(path / "weights.pt", weights_only=True)["shifts"]
    torch.save({"shifts": shifts[:, :-1]}, path / "weights.pt")
    with pytest.raises(CheckpointError) as error:
        PerturbationModel.load(path).predict(control_cells(data), "stimulated")
    assert str(path / "weights.pt") in str(error.value)
    assert "'shifts' of shape (1, 11) where config.json needs (1, 12)" in str(error.value)


def test_control_with_learned_arrays_is_refused(copy, saved) -> None:
    path = copy("control")
    shutil.copy(saved["mean_shift"] / "weights.pt", path / "weights.pt")
    with pytest.raises(CheckpointError, match="has 'shifts', which the model has no") as error:
        PerturbationModel.load(path)
    assert str(path / "weights.pt") in str(error.value)


# ---------------------------------------------------------------------- damaged files
def test_truncated_config_is_refused(copy) -> None:
    path = copy("mtae")
    text = (path / "config.json").read_text()
    (path / "config.json").write_text(text[: len(text) // 2])
    with pytest.raises(CheckpointError, match="not valid JSON.*Re-save the model") as error:
        PerturbationModel.load(path)
    assert str(path / "config.json") in str(error.value)


def test_config_without_genes_is_refused(copy) -> None:
    path = copy("mtae")
    edit_config(path, lambda config: config.pop("genes"))
    with pytest.raises(CheckpointError, match=r"lacks \['genes'\]") as error:
        PerturbationModel.load(path)
    assert str(path / "config.json") in str(error.value)


def test_config_of_an_unknown_model_is_refused(copy) -> None:
    path = copy("mtae")
    edit_config(path, lambda config: config.update(model="mtae_future", **{"class": "Future"}))
    with pytest.raises(CheckpointError, match="'Future' for its 'mtae_future' model, which is neither .* nor registered") as error:
        PerturbationModel.load(path)
    assert str(path / "config.json") in str(error.value)


@pytest.mark.parametrize(
    "damage",
    [
        lambda raw: raw[: len(raw) // 2],  # cut short
        lambda raw: b"",
        lambda raw: b"not a tensor file at all",
        lambda raw: np.random.default_rng(0).bytes(200),
    ],
    ids=["truncated", "empty", "text", "garbage"],
)
def test_damaged_weights_are_refused(damage, copy) -> None:
    path = copy("mtae")
    (path / "weights.pt").write_bytes(damage((path / "weights.pt").read_bytes()))
    with pytest.raises(CheckpointError, match="not a tensor file.*Re-save the model") as error:
        PerturbationModel.load(path)
    assert str(path / "weights.pt") in str(error.value)


def test_weights_that_are_not_a_dict_of_tensors_are_refused(copy) -> None:
    path = copy("mtae")
    torch.save([torch.zeros(2)], path / "weights.pt")
    with pytest.raises(CheckpointError, match="flat dict of named tensors") as error:
        PerturbationModel.load(path)
    assert str(path / "weights.pt") in str(error.value)


# ---------------------------------------------------------------------- device and version
def test_model_saved_on_a_gpu_loads_on_this_machine(copy, saved, data) -> None:
    path = copy("mtae")
    edit_config(path, lambda config: config["hparams"].update(device="cuda"))
    expected = PerturbationModel.load(saved["mtae"]).predict(control_cells(data), "stimulated")
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    assert PerturbationModel.load(path).device.type == auto
    on_cpu = PerturbationModel.load(path, device="cpu")
    assert on_cpu.device == torch.device("cpu")
    assert next(on_cpu.net.parameters()).device == torch.device("cpu")
    np.testing.assert_allclose(
        on_cpu.predict(control_cells(data), "stimulated").X, expected.X, rtol=1e-5, atol=1e-5
    )


def test_model_of_another_version_warns_and_its_errors_say_so(copy) -> None:
    path = copy("mtae")
    edit_config(path, lambda config: config.update(mtpert_version="0.0.1.old"))
    current = mtpert.__version__
    with pytest.warns(UserWarning, match=f"saved by mtpert 0.0.1.old; this is mtpert {current}"):
        PerturbationModel.load(path)

    (path / "weights.pt").write_bytes(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointError) as error:
            PerturbationModel.load(path)
    message = str(error.value)
    assert str(path / "weights.pt") in message
    assert "0.0.1.old" in message and mtpert.__version__ in message
