"""The benchmark harness on multi-dose and multi-species simulated data with a known answer.

A cell type held out at every dose (with a single-perturbation model fitted once per dose), one
dose held out in every cell type, a species held out; the rank rows, the per-dose tables and the
dose-response figure of the report; and the ids of runs that existed before any of this.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mtpert.benchmark import BenchmarkConfig, expand, run_benchmark, write_report
from mtpert.benchmark.grid import NOISE_CEILING
from mtpert.benchmark.store import ResultStore
from mtpert.cli import app
from mtpert.data import simulate
from mtpert.errors import ConfigError

DOSES = (0.1, 0.5, 2.5)
TINY = {"hidden": [16], "latent_dim": 4, "max_epochs": 2, "num_threads": 1}
runner = CliRunner(env={"COLUMNS": "200"})


def dosed() -> object:
    """4 cell types x (control + 3 doses) x 30 cells, 100 genes: a monotone (Hill) response."""
    return simulate(n_cell_types=4, n_genes=100, n_cells=30, doses=DOSES, effect_size=1.5, seed=3)


@pytest.fixture(scope="module")
def dosed_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "dosed.h5ad"
    dosed().write_h5ad(path)
    return path


def config(data: Path, **overrides) -> BenchmarkConfig:
    values = {"data": str(data), "models": ("control",), "seeds": (1,), "n_hvg": 0, "min_cells": 10,
              "noise_ceiling_repeats": 1, "spec": {"dose_key": "dose"}}  # fmt: skip
    return BenchmarkConfig(**{**values, **overrides})


def rows(results: pd.DataFrame, model: str, metric: str) -> pd.DataFrame:
    return results[(results["model"] == model) & (results["metric"] == metric)]


# ---------------------------------------------------------------------------- run ids
def test_runs_of_default_configs_keep_their_ids() -> None:
    """Ids computed before the split, group_key and one-dose-at-a-time settings existed: the
    run's place (``slot``), and its id where the model takes nothing from defaults (whose
    effective values have entered the id since)."""
    adata = simulate(seed=1, n_cells=40, n_genes=150)
    settings = {"data": "/x/sim.h5ad", "models": ("control", "mtae"), "seeds": (1,), "n_hvg": 100,
                "model_params": {"mtae": {"hidden": [16], "latent_dim": 4}}}  # fmt: skip
    runs = expand(BenchmarkConfig(**settings), adata).runs
    ids = {(r.target, r.model): r.id for r in runs}
    assert ids["type_0", "control"] == "74efcabbdd4e8a3a"
    assert {(r.target, r.model): r.slot for r in runs}["type_0", "mtae"] == "c6e548c8010fb103"
    assert ids["type_0", NOISE_CEILING] == "545f74f917fa4547"
    named = expand(BenchmarkConfig(**settings, split="group", group_key="cell_type"), adata)  # the defaults, spelled out
    assert {(r.target, r.model): r.id for r in named.runs} == ids
    doses = simulate(seed=1, n_cells=30, n_genes=50, doses=(0.5, 2.0))
    dose_runs = expand(BenchmarkConfig(data="/x/dsim.h5ad", models=("mean_shift",), seeds=(2,), spec={"dose_key": "dose"}), doses).runs
    assert dose_runs[0].slot == "2d14f6f2e519c6f8"
    # a single-perturbation preset on data with doses is another run: one model per dose
    per_dose = expand(BenchmarkConfig(data="/x/dsim.h5ad", models=("scgen",), seeds=(2,), spec={"dose_key": "dose"}), doses).runs
    assert per_dose[0].one_dose_at_a_time and per_dose[0].id not in {r.id for r in dose_runs}
    without = expand(BenchmarkConfig(data="/x/dsim.h5ad", models=("scgen",), seeds=(2,), spec={"dose_key": "dose"}, one_dose_at_a_time=[]), doses).runs
    assert not without[0].one_dose_at_a_time and without[0].id != per_dose[0].id


# ---------------------------------------------------------------------------- a cell type at every dose
@pytest.fixture(scope="module")
def study(dosed_path, tmp_path_factory) -> Path:
    """A cell type held out at every dose; scGen fitted once per dose; report written."""
    out = tmp_path_factory.mktemp("doses")
    models = ("control", "mean_shift", "mtae", "scgen")
    settings = config(dosed_path, models=models, holdout=("type_0",), save_models=True,
                      model_params={"mtae": TINY, "scgen": TINY})  # fmt: skip
    run_benchmark(settings, out)
    write_report(out, formats=("png",))
    return out


def test_a_multi_dose_study_scores_every_dose_and_ranks_the_doses(study) -> None:
    results = ResultStore(study).results()
    r2 = rows(results, "scgen", "r2_top100")
    assert sorted(r2["dose"].unique()) == list(DOSES) and set(r2["group"]) == {"type_0"}
    # predicting the control cells at every dose is dose-blind: against a monotone response its
    # prediction is closest to the lowest dose's truth and farthest from the highest's
    control = rows(results, "control", "rank").set_index("dose")["value"]
    assert control.to_dict() == {0.1: 0.0, 0.5: 0.5, 2.5: 1.0}
    # the mean shift learns each dose's shift from the other types, which share the response
    assert rows(results, "mean_shift", "rank")["value"].mean() < 0.25
    assert rows(results, NOISE_CEILING, "rank").empty


def test_single_perturbation_models_are_fitted_once_per_dose(study) -> None:
    results = ResultStore(study).results()
    runs = results.drop_duplicates("run_id").set_index("model")  # one held-out group, one seed
    scgen = study / "models" / runs.loc["scgen", "run_id"]
    assert sorted(p.name for p in scgen.iterdir()) == [f"dose_{d}" for d in DOSES]
    saved = json.loads((scgen / "dose_0.5" / "config.json").read_text())
    assert saved["spec"]["dose_key"] is None  # trained on the control cells and one dose, without doses
    assert (study / "models" / runs.loc["mtae", "run_id"] / "config.json").is_file()  # one model, every dose
    assert runs.loc["scgen", "epochs"] == 3 * TINY["max_epochs"]  # the per-dose models' epochs add up
    # the per-dose predictions are labelled with their dose again, and kept per dose
    for dose in DOSES:
        _, truth, preds = ResultStore(study).predictions("type_0", "stimulated", dose)
        assert np.allclose(preds["scgen", 1].obs["dose"], dose) and np.allclose(truth.obs["dose"], dose)


def test_the_report_has_per_dose_tables_the_rank_and_the_dose_response(study) -> None:
    summary = (study / "report" / "summary.md").read_text()
    headline = summary.split("## Mean over held-out targets and seeds")[1].split("##")[0]
    assert "rank" in headline.splitlines()[4] and "0.5 is what a dose-blind prediction scores" in headline
    per_dose = summary.split("## r2_top100 per dose (mean over held-out groups and seeds)")[1].split("##")[0]
    assert all(f"{d:g}" in per_dose.splitlines()[2] for d in DOSES)
    figure = study / "report" / "figures" / "dose_response_type_0_stimulated_seed1.png"
    assert figure.stat().st_size > 10_000 and figure.name in summary


# ---------------------------------------------------------------------------- one dose in every cell type
def test_the_condition_split_holds_one_dose_out_of_every_cell_type(dosed_path, tmp_path) -> None:
    settings = config(dosed_path, models=("control", "mtae"), split="condition", holdout=("stimulated@0.5",), model_params={"mtae": TINY})
    grid = expand(settings, dosed())
    assert {(r.target, r.dose) for r in grid.runs} == {("stimulated", 0.5)} and grid.runs[0].heldout == "stimulated@0.5"
    results = run_benchmark(settings, tmp_path).results()
    scored = rows(results, "control", "r2_top100")
    assert set(scored["group"]) == {f"type_{i}" for i in range(4)} and set(scored["dose"]) == {0.5}
    # the control prediction of the middle dose: the lowest dose's truth is closer, the highest's farther
    assert (rows(results, "control", "rank")["value"] == 0.5).all()
    with pytest.raises(ConfigError, match="'mean_shift' cannot predict a dose it was not trained on"):
        expand(config(dosed_path, models=("mean_shift",), split="condition"), dosed())
    with pytest.raises(ConfigError, match="no dose_key"):
        expand(config(dosed_path, split="condition", spec=None), dosed())
    with pytest.raises(ConfigError, match=r"\['stimulated@0.7'\] not among"):
        expand(config(dosed_path, split="condition", holdout=("stimulated@0.7",)), dosed())


# ---------------------------------------------------------------------------- a species
def test_a_species_is_held_out_with_group_key(tmp_path) -> None:
    path = tmp_path / "species.h5ad"
    simulate(n_cell_types=2, n_species=2, conserved_fraction=1.0, n_genes=100, n_cells=30, seed=4).write_h5ad(path)
    settings = config(path, models=("control", "mean_shift"), group_key="species", spec=None, noise_ceiling_repeats=0)
    results = run_benchmark(settings, tmp_path / "out").results()
    r2 = results[results["metric"] == "r2_top100"].pivot_table(index="group", columns="model", values="value")
    assert list(r2.index) == ["species_0", "species_1"]
    assert (results["n_truth"] == 2 * 30).all()  # a species' target pools its cell types
    # every response gene is conserved, so the other species' shift transfers
    assert (r2["mean_shift"] > r2["control"]).all()


# ---------------------------------------------------------------------------- command line
def test_cli_simulates_multi_dose_data_and_benchmarks_a_held_out_dose(tmp_path) -> None:
    data = tmp_path / "sim.h5ad"
    made = runner.invoke(app, ["data", "simulate", "--out", str(data), "--doses", "0.2,2", "--cell-types", "3", "--genes", "60", "--cells", "25"])
    assert made.exit_code == 0, made.output
    assert "dose_key='dose'" in made.output
    file = tmp_path / "bench.yaml"
    file.write_text(f"data: {data}\nmodels: [control]\nspec: {{dose_key: dose}}\nsplit: condition\nn_hvg: 0\nnoise_ceiling_repeats: 0\n")
    result = runner.invoke(app, ["benchmark", "--config", str(file), "--seeds", "1", "--out", str(tmp_path / "out"), "--no-report"])
    assert result.exit_code == 0, result.output
    assert "2 runs" in result.output and "2 held-out targets" in result.output
    bad = runner.invoke(app, ["data", "simulate", "--out", str(tmp_path / "x.h5ad"), "--doses", "0.2,zero"])
    assert bad.exit_code == 2 and "comma-separated numbers" in bad.output
