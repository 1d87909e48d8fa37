"""Loaders that must never run code from the files they read, nor crash with a traceback: saved
models (their class), ``fit.json``, cross-modal checkpoints, prior networks, protein matrices and
plugins.

Each test feeds one damaged or hostile input and asserts the clear error (or the warning and
carrying on) that replaced a traceback, a silent wrong answer, or code run from a data folder.
"""

from __future__ import annotations

import gzip
import json
import random
import shutil
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from anndata import AnnData
from typer.testing import CliRunner

from mtpert import plugins as plugins_module
from mtpert.cli import app
from mtpert.data import DatasetSpec, add_proteins, prepare, simulate
from mtpert.data.modalities import paired, read_modality
from mtpert.data.priors import read_prior
from mtpert.errors import CheckpointError, ConfigError, DataError
from mtpert.models import MeanShift, ModelRegistry, PerturbationModel, get_model
from mtpert.models import registry as registry_module
from mtpert.models.crossmodal import MultimodalAE
from mtpert.models.registry import BUILTIN_MODELS, ENTRY_POINT_GROUP
from mtpert.plugins import PluginWarning

SPEC = DatasetSpec()


@pytest.fixture(scope="module")
def raw() -> AnnData:
    return simulate(n_cell_types=2, n_genes=30, n_cells=10, seed=0)


@pytest.fixture(scope="module")
def saved_model(raw: AnnData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fitted MeanShift, saved; tests change copies of its files."""
    data = prepare(raw, SPEC, n_hvg=0)
    return MeanShift(SPEC, min_cells=2).fit(data).save(tmp_path_factory.mktemp("saved") / "model")


def _copy_model(saved_model: Path, folder: Path) -> Path:
    return Path(shutil.copytree(saved_model, folder))


# ---------------------------------------------------------------------- a model's class is data
PAYLOAD = "from pathlib import Path\nPath({marker!r}).write_text('the payload ran')\n"


@pytest.fixture
def hostile_model(saved_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A saved model whose config.json names a class of ``somepkg``, a package in the current
    folder (on the module search path, as in a notebook or ``python -c``) that writes a marker file
    when imported: yields ``naming(class) -> model folder`` and the marker's path."""
    marker = tmp_path / "MARKER"
    package = tmp_path / "somepkg"
    package.mkdir()
    (package / "__init__.py").write_text(PAYLOAD.format(marker=str(marker)))
    (package / "payload.py").write_text(PAYLOAD.format(marker=str(marker)))
    (package / "module.py").write_text(
        "from somepkg import payload\nfrom mtpert.models import MeanShift\n\n"
        "class Model(MeanShift):\n    name = 'mean_shift'\n\nclass MeanShift(MeanShift):\n    pass\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = _copy_model(saved_model, tmp_path / "model")

    def naming(saved_class: str) -> Path:
        config = json.loads((model / "config.json").read_text())
        config["class"] = saved_class  # the model's name stays 'mean_shift', a registered one
        (model / "config.json").write_text(json.dumps(config))
        return model

    yield naming, marker
    for name in [m for m in sys.modules if m == "somepkg" or m.startswith("somepkg.")]:
        del sys.modules[name]


@pytest.mark.parametrize(
    "saved_class", ["somepkg.module:Model", "somepkg.module:MeanShift", "somepkg:Model"]
)
@pytest.mark.parametrize("loader", [PerturbationModel, MeanShift], ids=["base", "registered"])
def test_loading_a_model_never_imports_the_class_its_file_names(
    hostile_model, saved_class: str, loader: type[PerturbationModel]
) -> None:
    naming, marker = hostile_model
    path = naming(saved_class)
    with pytest.raises(CheckpointError) as error:
        loader.load(path)
    assert not marker.exists(), "loading a model ran code found beside it"
    assert "somepkg" not in sys.modules
    message = str(error.value)
    assert f"names the model class '{saved_class}'" in message
    assert "does not import the classes a saved model names" in message
    assert f"{saved_class.rpartition(':')[2]}.load(path)" in message and "register_model" in message


def test_the_command_line_refuses_the_class_a_model_file_names(
    hostile_model, tmp_path: Path
) -> None:
    naming, marker = hostile_model
    path = naming("somepkg.module:Model")
    result = CliRunner().invoke(
        app,
        ["predict", str(path), "unused.h5ad", "--group", "type_0", "--condition", "stimulated",
         "--out", str(tmp_path / "pred.h5ad")],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "does not import the classes a saved model names" in " ".join(result.output.split())
    assert not marker.exists()


@pytest.mark.parametrize(
    "saved_class",
    [None, "MeanShift", "mtpert.models.moved_away:MeanShift", "mtpert.models.simple:MeanShift"],
    ids=["model-name-only", "class-name-only", "moved-module", "current"],
)
def test_models_saved_by_older_versions_still_load(
    saved_model: Path, tmp_path: Path, saved_class: str | None
) -> None:
    path = _copy_model(saved_model, tmp_path / "model")
    config = json.loads((path / "config.json").read_text())
    config.pop("class")
    (path / "config.json").write_text(
        json.dumps(config | ({"class": saved_class} if saved_class else {}))
    )
    assert type(PerturbationModel.load(path)) is MeanShift
    assert type(MeanShift.load(path)) is MeanShift


# ---------------------------------------------------------------------- fit.json
@pytest.mark.parametrize(
    "record", ['{"data": "sim.h5ad", "hold', "[]"], ids=["truncated", "not-an-object"]
)
def test_a_damaged_fit_record_is_named_with_the_fix(
    saved_model: Path, raw: AnnData, tmp_path: Path, record: str
) -> None:
    path = _copy_model(saved_model, tmp_path / "model")
    (path / "fit.json").write_text(record)
    data = tmp_path / "sim.h5ad"
    raw.write_h5ad(data)
    result = CliRunner().invoke(
        app,
        ["predict", str(path), str(data), "--group", "type_0", "--condition", "stimulated",
         "--out", str(tmp_path / "pred.h5ad")],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())  # rich wraps long lines
    assert "fit.json is not the JSON object `mtpert fit` writes" in output
    assert "delete it" in output and "Traceback" not in output


# ---------------------------------------------------------------------- cross-modal checkpoints
@pytest.fixture(scope="module")
def saved_crossmodal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sim = add_proteins(
        simulate(n_cell_types=2, n_genes=40, n_cells=20, seed=1), n_proteins=4, seed=1
    )
    rna, prot = paired(sim, "protein_counts")
    model = MultimodalAE("poe", hidden=(8,), latent_dim=2, input_pcs=3, max_epochs=1, batch_size=32, num_threads=1)
    return model.fit(rna, prot).save(tmp_path_factory.mktemp("crossmodal") / "model")


@pytest.mark.parametrize(
    ("file", "key"),
    [
        ("crossmodal.json", "target_features"),
        ("crossmodal.json", "fusion"),
        ("weights.pt", "scale_t_1"),
        ("weights.pt", "projection_components"),
    ],
)
def test_a_crossmodal_checkpoint_missing_a_key_names_it(
    saved_crossmodal: Path, tmp_path: Path, file: str, key: str
) -> None:
    path = _copy_model(saved_crossmodal, tmp_path / "model")
    if file == "crossmodal.json":
        settings = json.loads((path / file).read_text())
        del settings[key]
        (path / file).write_text(json.dumps(settings))
    else:
        tensors = torch.load(path / file, weights_only=True)
        del tensors[key]
        torch.save(tensors, path / file)
    with pytest.raises(
        CheckpointError, match=rf"{file} lacks \['{key}'\].*fit and save the model again"
    ):
        MultimodalAE.load(path, device="cpu")


def test_a_complete_crossmodal_checkpoint_still_loads(saved_crossmodal: Path) -> None:
    loaded = MultimodalAE.load(saved_crossmodal, device="cpu")
    assert loaded.params.fusion == "poe" and loaded.projection is not None


# ---------------------------------------------------------------------- prior networks
PRIOR_ROWS = "source\ttarget\tweight\n" + "".join(
    f"TF{i % 7}\tG{i}\t{(-1) ** i}\n" for i in range(2000)
)


def _garbage_in_the_middle(raw: bytes) -> bytes:
    damaged = bytearray(raw)
    middle = len(damaged) // 2
    damaged[middle : middle + 32] = random.Random(1).randbytes(32)
    return bytes(damaged)


def _reserved_block_type(raw: bytes) -> bytes:
    damaged = bytearray(raw)
    damaged[10] |= 0b110  # the first deflate block's type bits (after the 10-byte gzip header)
    return bytes(damaged)


def _bad_crc(raw: bytes) -> bytes:
    damaged = bytearray(raw)
    damaged[-8] ^= 0xFF  # the trailer's CRC-32
    return bytes(damaged)


@pytest.mark.parametrize("damage", [_garbage_in_the_middle, _reserved_block_type, _bad_crc])
def test_a_corrupted_gzipped_prior_is_named_with_the_fix(tmp_path: Path, damage) -> None:
    path = tmp_path / "prior.tsv.gz"
    path.write_bytes(damage(gzip.compress(PRIOR_ROWS.encode(), mtime=0)))
    with pytest.raises(DataError, match="downloaded or copied again") as error:
        read_prior(path, ["TF1", "G1"])
    assert str(path) in str(error.value)


# ---------------------------------------------------------------------- protein matrices
@pytest.fixture
def with_proteins() -> AnnData:
    return add_proteins(
        simulate(n_cell_types=2, n_genes=40, n_cells=20, seed=1), n_proteins=4, seed=1
    )


def test_nan_in_a_protein_matrix_is_named(with_proteins: AnnData) -> None:
    counts = with_proteins.obsm["protein_counts"].toarray().astype(float)
    counts[[0, 3, 5], 1] = np.nan
    with_proteins.obsm["protein_counts"] = counts
    with pytest.raises(
        DataError, match=r"Modality 'protein_counts' holds 3 NaN or infinite values"
    ):
        paired(with_proteins, "protein_counts")


@pytest.mark.filterwarnings("ignore:Variable names are not unique")  # AnnData says so first
def test_repeated_protein_names_are_refused_with_the_fix(with_proteins: AnnData) -> None:
    names = list(with_proteins.uns["protein_names"])
    with_proteins.uns["protein_names"] = [names[0], names[0], *names[2:]]  # two clones, one name
    with pytest.raises(
        DataError, match=rf"one name to several features \(e.g. \['{names[0]}'\]\).*names="
    ):
        paired(with_proteins, "protein_counts")
    counts = with_proteins.obsm["protein_counts"].toarray()
    columns = ["CD4", "CD4", "CD8", "CD3"]
    with_proteins.obsm["adt"] = pd.DataFrame(counts, index=with_proteins.obs_names, columns=columns)
    with pytest.raises(DataError, match=r"Modality 'adt' gives one name .*\['CD4'\]"):
        read_modality(with_proteins, "adt")


# ---------------------------------------------------------------------- plugins
@pytest.fixture
def exiting_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelRegistry:
    """A fresh model registry, standing in for ``MODELS``, whose one plugin calls ``sys.exit()``
    when its module is imported."""
    (tmp_path / "mtpert_exiting_plugin.py").write_text("import sys\n\nsys.exit()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugin = EntryPoint("exits", "mtpert_exiting_plugin:Model", ENTRY_POINT_GROUP)
    monkeypatch.setattr(
        plugins_module, "entry_points", lambda group: [plugin] if group == ENTRY_POINT_GROUP else []
    )
    fresh = ModelRegistry(BUILTIN_MODELS)
    monkeypatch.setattr(registry_module, "MODELS", fresh)
    return fresh


def test_a_plugin_calling_sys_exit_is_skipped_with_a_warning(exiting_plugin: ModelRegistry) -> None:
    with pytest.warns(
        PluginWarning,
        match=r"model plugin 'exits' = 'mtpert_exiting_plugin:Model' .*sys.exit\(None\)",
    ):
        names = list(exiting_plugin)
    assert names == [preset.name for preset in BUILTIN_MODELS]


def test_a_plugin_calling_sys_exit_does_not_end_a_command(exiting_plugin: ModelRegistry) -> None:
    with pytest.warns(PluginWarning, match="'exits'"):
        result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0 and "mean_shift" in result.output, result.output


# ---------------------------------------------------------------------- a prior without its alignment
def test_a_prior_without_the_alignment_that_uses_it_is_refused(tmp_path: Path) -> None:
    prior = tmp_path / "prior.tsv"
    prior.write_text("source\ttarget\nA\tB\n")
    with pytest.raises(ConfigError, match=r"prior=.* used only by alignment='prior'.*ignored"):
        get_model("sams_vae")(SPEC, prior=str(prior))
    with pytest.raises(ConfigError, match="alignment='prior' needs prior="):
        get_model("gpo_vae")(SPEC, alignment="prior")
    result = CliRunner().invoke(
        app,
        [
            "fit",
            "absent.h5ad",
            "--model",
            "sams_vae",
            "--set",
            f"prior={prior}",
            "--out",
            str(tmp_path / "out"),
        ],
    )  # the settings are refused before the data is read
    assert result.exit_code == 2 and "would be ignored" in " ".join(result.output.split()), (
        result.output
    )
