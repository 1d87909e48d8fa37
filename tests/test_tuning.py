"""Hyperparameter tuning: search spaces, Optuna studies that resume, and no leakage of held-out cells."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("optuna")

from mtpert import tuning as tuning_module
from mtpert.benchmark import BenchmarkConfig, run_benchmark, write_report
from mtpert.benchmark.store import MemoryStore
from mtpert.cli import app
from mtpert.data import DatasetSpec, make_fold, prepare, simulate
from mtpert.errors import ConfigError, DataError
from mtpert.models import get_model
from mtpert.models.search import Choice, FloatRange, IntRange, read_space
from mtpert.tuning import TuneSettings, inner_splits, tune

SPEC = DatasetSpec()
FAST = {"max_epochs": 3, "num_threads": 1}
"""Fits short enough for tests: what is tested is the study, not the model's accuracy."""


@pytest.fixture(scope="module")
def raw():
    return simulate(n_cell_types=4, n_genes=60, n_cells=40, seed=3)


@pytest.fixture(scope="module")
def data(raw):
    return prepare(raw, SPEC, n_hvg=0)


def test_spaces_are_read_from_plain_data_and_refused_when_malformed() -> None:
    tuned, fixed = read_space(
        {"lr": {"low": "1e-4", "high": 1e-2, "log": True}, "latent_dim": {"choices": [16, 32]},
         "max_epochs": {"low": 10, "high": 50, "step": 10}, "hidden": {"choices": [[64], [128, 64]]}, "dropout": 0.2}
    )  # fmt: skip
    assert tuned == {
        "lr": FloatRange(1e-4, 1e-2, log=True), "latent_dim": Choice((16, 32)),
        "max_epochs": IntRange(10, 50, step=10), "hidden": Choice(((64,), (128, 64))),
    }  # fmt: skip
    assert fixed == {"dropout": 0.2}
    for bad, message in [
        ({"lr": {"low": 1e-2, "high": 1e-4}}, "low < high"),
        ({"lr": {"low": 0.0, "high": 1.0, "log": True}}, "log-scale"),
        ({"lr": {"low": 1e-4}}, "must be a range"),
        ({"lr": {"low": "x", "high": 1.0}}, "must be numbers"),
        ({"k": {"choices": []}}, "at least one value"),
    ]:
        with pytest.raises(ConfigError, match=message):
            read_space(bad)


def test_each_model_declares_what_its_options_use() -> None:
    assert "kl_weight" not in get_model("mtae")(SPEC).search_space()
    assert "kl_weight" in get_model("mtvae")(SPEC).search_space()
    assert "adv_weight" in get_model("mtae_adv")(SPEC).search_space()
    assert "alignment_weight" in get_model("gpo_vae")(SPEC).search_space()
    assert "alignment_weight" not in get_model("sams_vae")(SPEC).search_space()
    assert get_model("control")(SPEC).search_space() == {}
    lr = get_model("mtae")(SPEC, lr=2e-3).search_space()["lr"]
    assert (lr.low, lr.high) == pytest.approx((2e-4, 2e-2))  # a decade either side of the setting


def test_settings_refuse_what_cannot_be_run() -> None:
    assert TuneSettings.read(5).trials == 5
    for bad, message in [
        ({"trials": 0}, "greater than or equal to 1"),
        ({"trails": 3}, "unknown settings"),
        ({"metric": "nope"}, "is not a metric"),
        ({"metric": "rank"}, "not scored per target"),
        ([3], "must be a mapping"),
    ]:
        with pytest.raises(ConfigError, match=message):
            TuneSettings.read(bad)


def test_inner_folds_hold_out_training_groups_only(data) -> None:
    fold = make_fold(data, SPEC, "type_0", seed=1, n_hvg=0)
    train = fold.data[fold.split.train.union(fold.split.val)]
    splits = inner_splits(train, SPEC, "group", 5, seed=1)
    assert [name for name, _ in splits] == ["type_1", "type_2", "type_3"]  # type_0 has no perturbed cells left
    assert all(target.group != "type_0" for _, s in splits for target in s.targets)
    with pytest.raises(DataError, match="without leakage"):
        inner_splits(train[train.obs["cell_type"].isin(["type_0", "type_1"])], SPEC, "group", 3)


def test_a_study_resumes_keeping_its_trials_and_refuses_other_settings(data, tmp_path) -> None:
    journal = tmp_path / "study.journal"
    settings = {"trials": 2, "inner_folds": 2, "space": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}, "hidden": [32], "latent_dim": 8, "dropout": 0.0}}
    first = tune(data, SPEC, "mtae", settings=settings, params=FAST, seed=1, storage=journal)
    assert len(first.trials) == 2 and set(first.trials["state"]) <= {"COMPLETE", "PRUNED"}
    assert 1e-4 <= first.best_params["lr"] <= 1e-2
    assert first.best_params["hidden"] == [32] and first.best_params["max_epochs"] == 3  # fixed values kept
    best = first.trials.loc[first.trials["state"] == "COMPLETE", "value"].max()  # r2: higher is better
    assert first.best_value == pytest.approx(best)

    more = tune(data, SPEC, "mtae", settings={**settings, "trials": 3}, params=FAST, seed=1, storage=journal)
    assert len(more.trials) == 3
    assert more.trials["value"].iloc[:2].tolist() == pytest.approx(first.trials["value"].tolist())
    assert more.trials["lr"].iloc[2] not in first.trials["lr"].tolist()  # a resumed sampler draws anew
    again = tune(data, SPEC, "mtae", settings={**settings, "trials": 3}, params=FAST, seed=1, storage=journal)
    assert len(again.trials) == 3  # the budget is met: nothing runs

    with pytest.raises(ConfigError, match="other settings"):
        tune(data, SPEC, "mtae", settings={**settings, "trials": 3}, params={**FAST, "max_epochs": 4}, seed=1, storage=journal)


def test_a_journal_torn_by_a_kill_is_cut_and_kept(data, tmp_path) -> None:
    journal = tmp_path / "study.journal"
    settings = {"trials": 1, "inner_folds": 2, "space": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}, "hidden": [32], "latent_dim": 8, "dropout": 0.0}}
    tune(data, SPEC, "mtae", settings=settings, params=FAST, seed=1, storage=journal)
    whole = journal.read_bytes()
    journal.write_bytes(whole[:-15])  # the last record half-written
    result = tune(data, SPEC, "mtae", settings={**settings, "trials": 2}, params=FAST, seed=1, storage=journal)
    assert (tmp_path / "study.journal.damaged").read_bytes() == whole[:-15]
    assert len(result.trials) == 2


def test_nothing_to_tune_and_unknown_names_are_refused(data) -> None:
    with pytest.raises(ConfigError, match="nothing to tune"):
        tune(data, SPEC, "control", settings=1)
    with pytest.raises(ConfigError, match="does not take"):
        tune(data, SPEC, "mtae", settings={"trials": 1, "space": {"learning_rate": {"low": 0.1, "high": 1.0}}}, params=FAST)


def test_a_tuned_benchmark_run_never_reads_its_held_out_cells(raw, monkeypatch) -> None:
    seen: list = []
    real = tuning_module.fit_and_score

    def spy(data, split, *args, **kwargs):
        seen.append(set(data.obs_names))  # every cell the trial's fit, prediction and scoring could read
        return real(data, split, *args, **kwargs)

    monkeypatch.setattr(tuning_module, "fit_and_score", spy)
    tuned = {"model": "mtae", **FAST, "tune": {"trials": 2, "inner_folds": 2, "space": {"hidden": [32], "latent_dim": 8}}}
    config = BenchmarkConfig(data="in-memory", models={"mtae_tuned": tuned}, holdout=["type_0"], seeds=[1], spec=SPEC, n_hvg=0, noise_ceiling_repeats=0)
    results = run_benchmark(config, MemoryStore(), adata=raw).results()

    heldout = set(make_fold(raw, SPEC, "type_0", seed=1, n_hvg=0).split.heldout)
    assert len(seen) >= 2 and heldout
    assert all(not (cells & heldout) for cells in seen)
    row = results.iloc[0]
    assert row["tune_trials"] == 2 and row["tune_seconds"] > 0
    chosen = json.loads(row["tuned_params"])
    assert 1e-4 <= chosen["lr"] <= 1e-2 and chosen["hidden"] == [32]


def test_a_benchmark_keeps_each_runs_study_and_refuses_bad_tuning_settings(raw, tmp_path) -> None:
    path = tmp_path / "sim.h5ad"
    raw.write_h5ad(path)
    tuned = {"model": "mtae", **FAST, "tune": {"trials": 1, "inner_folds": 2, "space": {"hidden": [32], "latent_dim": 8}}}
    config = BenchmarkConfig(data=str(path), models={"mtae_tuned": tuned}, holdout=["type_1"], seeds=[1], n_hvg=0, noise_ceiling_repeats=0)
    run_benchmark(config, tmp_path / "bench")
    assert len(list((tmp_path / "bench" / "tuning").glob("*.journal"))) == 1
    summary = write_report(tmp_path / "bench", formats=("png",))["markdown"].read_text()
    section = summary.split("## Tuned hyperparameters")[1].split("##")[0]
    assert "| mtae_tuned" in section and "type_1" in section and "latent_dim" in section
    with pytest.raises(ConfigError, match="nothing to tune"):
        BenchmarkConfig(data=str(path), models={"c": {"model": "control", "tune": {"trials": 2}}}, n_hvg=0)
    with pytest.raises(ConfigError, match="unknown settings"):
        BenchmarkConfig(data=str(path), models={"m": {"model": "mtae", "tune": {"trails": 2}}}, n_hvg=0)


def test_cli_tune_writes_parameters_that_fit_takes(raw, tmp_path) -> None:
    path = tmp_path / "sim.h5ad"
    raw.write_h5ad(path)
    out = tmp_path / "study"
    space = tmp_path / "space.yaml"
    space.write_text("lr: {low: 1e-4, high: 1e-2, log: true}\nhidden: [32]\nlatent_dim: 8\n")
    runner = CliRunner()
    args = ["tune", str(path), "--model", "mtae", "--out", str(out), "--holdout", "type_0", "--trials", "2",
            "--inner-folds", "2", "--space", str(space), "--set", "max_epochs=3", "--n-hvg", "0"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "inner held-out groups: type_1, type_2" in result.output or "inner held-out groups" in result.output
    best = json.loads((out / "best_params.json").read_text())
    assert best["max_epochs"] == 3 and best["hidden"] == [32]
    fitted = runner.invoke(app, ["fit", str(path), "--model", "mtae", "--params", str(out / "best_params.json"),
                                 "--out", str(tmp_path / "model"), "--holdout", "type_0", "--n-hvg", "0"])  # fmt: skip
    assert fitted.exit_code == 0, fitted.output
    assert Path(tmp_path / "model").is_dir()
    refused = runner.invoke(app, ["tune", str(path), "--model", "control", "--out", str(tmp_path / "c"), "--n-hvg", "0"])
    assert refused.exit_code == 2 and "nothing to tune" in refused.output


@pytest.mark.slow
def test_parallel_trials_share_one_study(data, tmp_path) -> None:
    settings = {"trials": 2, "inner_folds": 2, "space": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}, "hidden": [32], "latent_dim": 8, "dropout": 0.0}}
    result = tune(data, SPEC, "mtae", settings=settings, params=FAST, seed=1, storage=tmp_path / "s.journal", jobs=2)
    assert len(result.trials) == 2
    assert result.trials["lr"].nunique() == 2  # the two processes sample with their own seeds
    assert np.isfinite(result.best_value)


def test_tuning_on_a_screen_holds_out_training_combinations() -> None:
    from mtpert.data import holdout_combinations, simulate_screen

    sim = simulate_screen(n_lines=1, n_genes=60, n_regulators=8, n_targets=4, n_pairs=8, n_cells=30, seed=0)
    spec = DatasetSpec(**sim.uns["simulation"]["spec"])
    data = prepare(sim, spec, n_hvg=0)
    outer = holdout_combinations(data, spec, split_seed=1, fraction=0.25, seed=1)
    visible = data[outer.train.union(outer.val)]
    result = tune(visible, spec, "linear", settings={"trials": 3, "inner_folds": 2}, kind="combination", seed=1)
    held_out_pairs = {t.condition for t in outer.targets}
    assert len(result.trials) == 3 and result.inner_targets == ("1", "2")
    inner = inner_splits(visible, spec, "combination", 2, seed=1)
    inner_pairs = {t.condition for _, split in inner for t in split.targets}
    assert inner_pairs and not inner_pairs & held_out_pairs  # tuning predicts training pairs only
    assert set(result.best_params) == {"n_components", "ridge"}


def test_a_trial_left_running_by_a_killed_process_is_run_again(data, tmp_path) -> None:
    import optuna

    journal = tmp_path / "study.journal"
    settings = {"trials": 1, "inner_folds": 2, "space": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}, "hidden": [32], "latent_dim": 8, "dropout": 0.0}}
    tune(data, SPEC, "mtae", settings=settings, params=FAST, seed=1, storage=journal)
    storage = tuning_module._storage(optuna, journal)
    optuna.load_study(study_name="mtpert:mtae", storage=storage).ask()  # a trial started, never told: its process died
    result = tune(data, SPEC, "mtae", settings={**settings, "trials": 2}, params=FAST, seed=1, storage=journal)
    assert set(result.trials["state"]) <= {"COMPLETE", "PRUNED"}
    assert len(result.trials) == 2  # the interrupted one is neither counted nor listed
