"""The command line, driven as a user would: help, data info, models, demo, evaluate."""

from __future__ import annotations

import pandas as pd
from typer.testing import CliRunner

from mtpert.cli import app
from mtpert.data import DatasetSpec, heldout_mask, holdout_group, prepare, simulate
from mtpert.models import get_model

runner = CliRunner(env={"COLUMNS": "200"})  # wide enough that rich does not wrap lines


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("demo", "data", "evaluate", "models"):
        assert command in result.output


def test_data_info_on_kang(kang_path) -> None:
    result = runner.invoke(app, ["data", "info", str(kang_path)])
    assert result.exit_code == 0, result.output
    assert "2,000 cells x 13,215 genes; X holds raw counts" in result.output
    assert "9 of 13 groups can be held out and scored." in result.output
    assert "4 control cells < 20" in result.output  # pDC is flagged


def test_data_info_bad_key_is_a_clear_error(kang_path) -> None:
    result = runner.invoke(app, ["data", "info", str(kang_path), "--cell-type-key", "celltype"])
    assert result.exit_code == 2
    assert "['celltype'] not found" in result.output


def test_models_lists_registered_models() -> None:
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    assert "mean_shift" in result.output and "control" in result.output


def test_demo_writes_results_and_figures(tmp_path) -> None:
    result = runner.invoke(app, ["demo", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for name in ("results.csv", "metrics.png", "scatter.png"):
        assert (tmp_path / name).stat().st_size > 0
    results = pd.read_csv(tmp_path / "results.csv")
    r2 = results[results["metric"] == "r2_top100"].groupby("model")["value"].mean()
    assert r2["mean_shift"] > r2["control"], "the demo's simulated response is learnable"


def test_evaluate_scores_a_predictions_file(tmp_path) -> None:
    spec = DatasetSpec()
    raw = simulate(seed=3)
    group = spec.cell_types(raw)[0]
    data = prepare(raw, spec, n_hvg=0, exclude=heldout_mask(raw, spec, group))
    split = holdout_group(data, spec, group, seed=3)
    target = split.targets[0]
    pred = get_model("mean_shift")(spec).fit(split.subset(data, "train")).predict(data[target.control], target.condition)
    raw.write_h5ad(tmp_path / "truth.h5ad")  # raw counts: evaluate log-normalizes them itself
    pred.write_h5ad(tmp_path / "pred.h5ad")
    out = tmp_path / "scores.csv"
    result = runner.invoke(app, ["evaluate", str(tmp_path / "truth.h5ad"), str(tmp_path / "pred.h5ad"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    scores = pd.read_csv(out)
    assert {"metric", "value"} <= set(scores.columns)
    r2 = scores.loc[scores["metric"] == "r2_all", "value"].item()
    assert 0.5 < r2 <= 1.0


def test_evaluate_refuses_genes_missing_from_truth(tmp_path) -> None:
    spec = DatasetSpec()
    raw = simulate(seed=3)
    pred = prepare(raw, spec, n_hvg=0)[:10].copy()
    pred.var_names = [f"x{i}" for i in range(pred.n_vars)]
    raw.write_h5ad(tmp_path / "truth.h5ad")
    pred.write_h5ad(tmp_path / "pred.h5ad")
    result = runner.invoke(app, ["evaluate", str(tmp_path / "truth.h5ad"), str(tmp_path / "pred.h5ad")])
    assert result.exit_code == 2
    assert "predicted genes of" in result.output and "are not in" in result.output
