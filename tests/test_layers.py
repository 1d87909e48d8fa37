"""The package's floors: no import runs up from the library to the benchmark or the command line,
the import paths that moved keep working, with a warning, for one release, and cross-modal
models train on the same base as the other trained models."""

from __future__ import annotations

import ast
import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from anndata import AnnData

import mtpert
from mtpert.data import add_proteins, paired, simulate
from mtpert.errors import ConfigError
from mtpert.models import get_crossmodal
from mtpert.models.crossmodal import MultimodalAE, MultimodalParams
from mtpert.models.trained import Hyperparameters

SRC = Path(mtpert.__file__).parent

BELOW_BENCHMARK = ("data", "metrics", "models", "train", "pl", "io", "errors", "lock", "_array", "plugins")
"""Parts of mtpert that neither the benchmark nor the command line may be imported by."""
ANALYSIS = ("tuning", "uncertainty", "scoring")
"""Parts the benchmark uses, which may use the library but not the benchmark or the command line."""


def mtpert_imports(source: str, path: Path) -> set[str]:
    """Every mtpert module that ``source``, the code of file ``path``, imports anywhere (module
    level, in functions, under TYPE_CHECKING), with relative imports resolved."""
    package = ["mtpert", *path.relative_to(SRC).parent.parts]
    found = set()
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(filter(None, (base, node.module)))
            # `from mtpert import benchmark` imports mtpert.benchmark
            found |= {module, *(f"{module}.{alias.name}" for alias in node.names)}
    return {name for name in found if name.split(".")[0] == "mtpert"}


def part(path: Path) -> str:
    """The top-level part of mtpert that file ``path`` belongs to (``data``, ``io``, ...)."""
    return path.relative_to(SRC).with_suffix("").parts[0]


def upward(source: str, path: Path) -> list[str]:
    """The imports of ``source`` (the code of ``path``) that reach the benchmark or the command
    line from a part below them."""
    if part(path) not in BELOW_BENCHMARK + ANALYSIS:
        return []
    names = mtpert_imports(source, path)
    return sorted(n for n in names if n.split(".")[1:2] in (["benchmark"], ["cli"]))


def test_no_import_runs_up_a_floor() -> None:
    files = sorted(SRC.rglob("*.py"))
    assert set(BELOW_BENCHMARK + ANALYSIS) <= {part(f) for f in files}, "a part named here is gone"
    up = [f"{f.relative_to(SRC)} imports {name}" for f in files for name in upward(f.read_text(), f)]
    assert not up, "\n".join(up)


@pytest.mark.parametrize("command", ["fit", "tune"])
def test_commands_that_make_a_fold_do_not_load_the_benchmark(command: str) -> None:
    """`mtpert fit` and `mtpert tune` make a fold and seed as a benchmark does, from mtpert.data."""
    path = SRC / "cli" / f"{command}.py"
    names = mtpert_imports(path.read_text(), path)
    assert {"mtpert.data.make_fold", "mtpert.data.Holdout"} <= names
    assert not [n for n in names if n.startswith("mtpert.benchmark")]


def test_the_check_finds_imports_in_functions_and_relative_ones() -> None:
    source = (
        "from ..benchmark import grid\n"
        "from .split import Split\n"
        "def f():\n"
        "    from mtpert import cli\n"
        "    import mtpert.benchmark.store\n"
    )
    found = upward(source, SRC / "data" / "example.py")
    assert found == ["mtpert.benchmark", "mtpert.benchmark.grid", "mtpert.benchmark.store", "mtpert.cli"]
    assert upward(source, SRC / "benchmark" / "example.py") == []


MOVED = {
    "mtpert.benchmark.holdout": {
        "make_fold": "mtpert.data",
        "fold_data": "mtpert.data",
        "Fold": "mtpert.data",
        "Holdout": "mtpert.data",
        "SplitKind": "mtpert.data",
        "seed_everything": "mtpert.data",
        "prepare_holdout": "mtpert.data.folds",
        "fit_and_score": "mtpert.scoring",
        "noise_ceiling": "mtpert.scoring",
        "rank_scores": "mtpert.scoring",
        "target_scores": "mtpert.scoring",
        "summarize": "mtpert.scoring",
        "Prediction": "mtpert.scoring",
        "FitResult": "mtpert.scoring",
        "ProgressCallback": "mtpert.benchmark.harness",
    },
    "mtpert.benchmark.tuning": {
        "tune": "mtpert.tuning",
        "TuneSettings": "mtpert.tuning",
        "TuningResult": "mtpert.tuning",
        "TUNE": "mtpert.tuning",
        "inner_splits": "mtpert.tuning",
        "free_space": "mtpert.tuning",
        "read_settings": "mtpert.tuning",
        "_storage": "mtpert.tuning",
    },
    "mtpert.benchmark.uncertainty": {
        "calibrate": "mtpert.uncertainty",
        "fit_ensemble": "mtpert.uncertainty",
        "predict_draws": "mtpert.uncertainty",
        "interval_table": "mtpert.uncertainty",
        "interval_scores": "mtpert.uncertainty",
        "true_change": "mtpert.uncertainty",
        "Calibration": "mtpert.uncertainty",
        "ChangeDraws": "mtpert.uncertainty",
        "UncertaintySettings": "mtpert.uncertainty",
        "UNCERTAINTY": "mtpert.uncertainty",
        "PREFIX": "mtpert.uncertainty",
    },
}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_import_path_warns_and_gives_the_same_objects(old: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, old, raising=False)  # a module warns when first imported
    with pytest.warns(DeprecationWarning, match=rf"{old} is deprecated") as warned:
        __import__(old)
    assert [w.filename for w in warned] == [__file__]  # the warning points at the importing line
    module = sys.modules[old]
    moved = dict(MOVED[old])
    for home in {"mtpert.scoring", "mtpert.tuning", "mtpert.uncertainty"} & set(moved.values()):
        moved |= dict.fromkeys(importlib.import_module(home).__all__, home)
    assert set(module.__all__) <= set(moved)
    for name, home in moved.items():
        assert getattr(module, name) is getattr(importlib.import_module(home), name), name


def test_the_benchmark_package_reexports_without_warning() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        from mtpert.benchmark import calibrate, fit_and_score, make_fold, seed_everything, tune
    import mtpert.data
    import mtpert.scoring
    import mtpert.tuning
    import mtpert.uncertainty

    assert make_fold is mtpert.data.make_fold and seed_everything is mtpert.data.seed_everything
    assert fit_and_score is mtpert.scoring.fit_and_score
    assert tune is mtpert.tuning.tune and calibrate is mtpert.uncertainty.calibrate


# ---------------------------------------------------------------------- cross-modal models on the shared base
CROSSMODAL_SAVED = Path(__file__).parent / "data" / "crossmodal_saved"
"""Tiny cross-modal models saved, with their predictions of :func:`crossmodal_cells`, by mtpert
at commit 4d486df (settings without the training settings; ``train=TrainConfig(max_epochs=3,
batch_size=32)``, ``seed=2``, one thread, on the CPU)."""


def crossmodal_cells() -> tuple[AnnData, AnnData]:
    sim = add_proteins(simulate(n_cell_types=2, n_genes=40, n_cells=20, seed=1), n_proteins=4, seed=1)
    return paired(sim, "protein_counts")


@pytest.mark.parametrize("fusion", ["poe", "late"])
def test_a_crossmodal_model_saved_before_the_shared_base_loads_and_trains_as_before(fusion: str) -> None:
    rna, prot = crossmodal_cells()
    saved = CROSSMODAL_SAVED / fusion
    expected = np.load(saved / "predictions.npz")["protein"]
    loaded = MultimodalAE.load(saved, device="cpu", num_threads=1)
    assert loaded.params.fusion == fusion and loaded.params.max_epochs == 200  # absent: the default
    settings = json.loads((saved / "crossmodal.json").read_text())
    hparams = {k: v for k, v in settings.items() if not k.endswith("_features")}
    refitted = MultimodalAE(**hparams, max_epochs=3, batch_size=32, device="cpu", num_threads=1)
    refitted.fit(rna, prot)
    for model in (loaded, refitted):
        np.testing.assert_allclose(model.predict(rna).X, expected, rtol=1e-5, atol=1e-6)


def test_crossmodal_hyperparameters_are_declared_once_and_runtime_options_are_not_saved(
    tmp_path: Path,
) -> None:
    rna, prot = crossmodal_cells()
    model = get_crossmodal("multimodal")(fusion="late", hidden=[8], max_epochs=2, seed=3)
    assert isinstance(model.params, MultimodalParams) and isinstance(model.params, Hyperparameters)
    assert model.params.hidden == (8,) and model.params.lr == 1e-3 and model.name == "multimodal_late"
    with pytest.raises(TypeError, match="MultimodalAE has no parameter train; its parameters: fusion"):
        MultimodalAE(train=None)
    with pytest.raises(ConfigError, match="MultimodalAE: modality_dropout must be in"):
        MultimodalAE(modality_dropout=1.0)
    model.fit(rna, prot, device="cpu", num_threads=1)
    assert (model.device.type, model.num_threads) == ("cpu", 1)  # kept as the model's settings
    assert len(model.history) == 2
    settings = json.loads((model.save(tmp_path / "model") / "crossmodal.json").read_text())
    assert settings["max_epochs"] == 2 and settings["seed"] == 3
    assert not set(settings) & {"device", "num_threads", "progress"}
    loaded = MultimodalAE.load(tmp_path / "model", device="cpu", num_threads=2)
    assert loaded.params == model.params and loaded.num_threads == 2
    np.testing.assert_array_equal(loaded.predict(rna).X, model.predict(rna).X)
