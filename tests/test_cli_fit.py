"""``mtpert fit`` and ``mtpert predict``, driven as a user would, on simulated raw counts."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mtpert.cli import app
from mtpert.data import DatasetSpec, heldout_mask, holdout_group, log_normalize, prepare, simulate
from mtpert.models import PerturbationModel, get_model

runner = CliRunner()
SPEC = DatasetSpec()
HELD_OUT = "type_0"
N_HVG = 60
TINY_MTAE = ["--set", "max_epochs=2", "--set", "hidden=[16]", "--set", "latent_dim=4"]


@pytest.fixture(scope="module")
def raw() -> ad.AnnData:
    """Simulated raw counts: 4 cell types x (control, stimulated), 40 cells each, 120 genes."""
    return simulate(n_genes=120, n_cells=40, seed=5)


@pytest.fixture(scope="module")
def data_file(raw, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("data") / "cells.h5ad"
    raw.write_h5ad(path)
    return str(path)


@pytest.fixture(scope="module")
def mean_shift_dir(data_file, tmp_path_factory) -> str:
    """A mean_shift model fitted by the CLI with HELD_OUT's perturbed cells held out."""
    out = str(tmp_path_factory.mktemp("models") / "mean_shift")
    result = runner.invoke(app, ["fit", data_file, "--model", "mean_shift", "--out", out, "--holdout", HELD_OUT, "--n-hvg", str(N_HVG)])
    assert result.exit_code == 0, result.output
    return out


def _predict(model_dir: str, data_file: str, out, *extra: str):
    return runner.invoke(app, ["predict", model_dir, data_file, "--group", HELD_OUT, "--condition", "stimulated", "--out", str(out), *extra])


def test_fit_predict_evaluate_round_trip_equals_the_library(raw, data_file, mean_shift_dir, tmp_path) -> None:
    pred_file = tmp_path / "pred.h5ad"
    result = _predict(mean_shift_dir, data_file, pred_file)
    assert result.exit_code == 0, result.output
    assert "not out of distribution" not in result.output
    pred = ad.read_h5ad(pred_file)

    # the same fit through the library: genes chosen without the held-out cells, same seeded split
    data = prepare(raw, SPEC, n_hvg=N_HVG, exclude=heldout_mask(raw, SPEC, HELD_OUT))
    split = holdout_group(data, SPEC, HELD_OUT, seed=1)
    model = get_model("mean_shift")(SPEC).fit(split.subset(data, "train"), split.subset(data, "val"))
    target = split.targets[0]
    expected = model.predict(data[target.control], target.condition)
    assert pred.var_names.tolist() == expected.var_names.tolist() and pred.n_vars == N_HVG
    assert pred.obs_names.tolist() == expected.obs_names.tolist()
    np.testing.assert_allclose(pred.X, expected.X, rtol=1e-5, atol=1e-6)
    assert (pred.obs["condition"] == "stimulated").all()

    scores_file = tmp_path / "scores.csv"
    result = runner.invoke(app, ["evaluate", data_file, str(pred_file), "--out", str(scores_file)])
    assert result.exit_code == 0, result.output
    scores = pd.read_csv(scores_file).set_index("metric")["value"]
    assert set(scores.index) >= {"r2_all", "e_distance_rel"}
    assert scores["e_distance_rel"] < 1, "mean_shift beats predicting no change on the simulated response"


def test_a_trained_network_round_trip_predicts_as_the_loaded_model(raw, data_file, tmp_path) -> None:
    model_dir = tmp_path / "mtae"
    result = runner.invoke(app, ["fit", data_file, "--model", "mtae", "--out", str(model_dir), "--holdout", HELD_OUT, *TINY_MTAE])
    assert result.exit_code == 0, result.output
    record = json.loads((model_dir / "fit.json").read_text())
    assert record["holdout"] == HELD_OUT and record["params"]["hidden"] == [16]

    result = _predict(str(model_dir), data_file, tmp_path / "pred.h5ad")
    assert result.exit_code == 0, result.output
    model = PerturbationModel.load(model_dir, device="cpu")
    assert model.hparams["max_epochs"] == 2
    control = raw[(raw.obs["cell_type"] == HELD_OUT).to_numpy() & SPEC.is_control(raw)].copy()
    log_normalize(control)
    expected = model.predict(control[:, model.genes], "stimulated")
    np.testing.assert_allclose(ad.read_h5ad(tmp_path / "pred.h5ad").X, expected.X, rtol=1e-5, atol=1e-6)


def test_fit_refuses_a_folder_that_is_not_empty_unless_forced(data_file, tmp_path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("a user's file")
    args = ["fit", data_file, "--model", "control", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "already exists and is not empty" in result.output and "--force" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    result = runner.invoke(app, [*args, "--force"])
    assert result.exit_code == 0, result.output
    assert (out / "config.json").is_file() and (out / "notes.txt").read_text() == "a user's file"


def test_fit_refuses_bad_model_parameters_before_reading_data(tmp_path) -> None:
    result = runner.invoke(app, ["fit", str(tmp_path / "absent.h5ad"), "--model", "mtae", "--out", str(tmp_path / "m"), "--set", "max_epoch=3"])
    assert result.exit_code == 2
    assert "max_epoch: not a parameter of 'mtae'" in result.output
    result = runner.invoke(app, ["fit", "x.h5ad", "--model", "mtae", "--out", str(tmp_path / "m"), "--set", "max_epochs"])
    assert result.exit_code == 2 and "KEY=VALUE" in result.output


def test_an_unknown_device_is_refused_before_any_work(tmp_path) -> None:
    result = runner.invoke(app, ["fit", "absent.h5ad", "--model", "mtae", "--out", str(tmp_path / "m"), "--device", "gpu"])
    assert result.exit_code == 2
    assert "Invalid value for '--device'" in result.output and "Traceback" not in result.output


def test_fit_refuses_an_unknown_holdout_group(data_file, tmp_path) -> None:
    result = runner.invoke(app, ["fit", data_file, "--model", "control", "--out", str(tmp_path / "m"), "--holdout", "type_9"])
    assert result.exit_code == 2
    assert "No cells with obs['cell_type'] == 'type_9'" in result.output
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--group", "type_9"], "No cells with obs['cell_type'] == 'type_9'; available: ['type_0'"),
        (["--condition", "unseen"], "saw no 'unseen' cells in training"),
        (["--dose", "1"], "trained without doses; leave out --dose"),
        (["--out", "pred.csv"], "give a file name ending in .h5ad"),
    ],
)
def test_predict_refuses_bad_input(data_file, mean_shift_dir, tmp_path, change, message) -> None:
    args = {"--group": HELD_OUT, "--condition": "stimulated", "--out": str(tmp_path / "pred.h5ad")}
    options = dict(args, **dict(zip(change[::2], change[1::2], strict=True)))
    result = runner.invoke(app, ["predict", mean_shift_dir, data_file, *[x for kv in options.items() for x in kv]])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert list(tmp_path.iterdir()) == []


def test_predict_refuses_an_existing_output_unless_forced(data_file, mean_shift_dir, tmp_path) -> None:
    out = tmp_path / "pred.h5ad"
    out.write_text("keep me")
    result = _predict(mean_shift_dir, data_file, out)
    assert result.exit_code == 2 and "already exists" in result.output
    assert out.read_text() == "keep me"
    assert _predict(mean_shift_dir, data_file, out, "--force").exit_code == 0
    assert ad.read_h5ad(out).n_obs == 40


def test_predict_refuses_data_without_the_model_genes(raw, mean_shift_dir, tmp_path) -> None:
    renamed = raw.copy()
    renamed.var_names = [f"other_{i}" for i in range(raw.n_vars)]
    renamed.write_h5ad(tmp_path / "other.h5ad")
    result = _predict(mean_shift_dir, str(tmp_path / "other.h5ad"), tmp_path / "pred.h5ad")
    assert result.exit_code == 2
    assert f"{N_HVG} of the model's {N_HVG} genes are not in the data" in result.output


def test_predict_refuses_a_group_without_control_cells(raw, mean_shift_dir, tmp_path) -> None:
    without = raw[~((raw.obs["cell_type"] == HELD_OUT).to_numpy() & SPEC.is_control(raw))].copy()
    without.write_h5ad(tmp_path / "no_control.h5ad")
    result = _predict(mean_shift_dir, str(tmp_path / "no_control.h5ad"), tmp_path / "pred.h5ad")
    assert result.exit_code == 2
    assert f"'{HELD_OUT}' has no control cells" in result.output


def test_predict_says_when_the_group_was_trained_on(data_file, mean_shift_dir, tmp_path) -> None:
    result = runner.invoke(
        app, ["predict", mean_shift_dir, data_file, "--group", "type_1", "--condition", "stimulated", "--out", str(tmp_path / "p.h5ad")]
    )
    assert result.exit_code == 0, result.output
    assert "not out of distribution" in result.output
