"""Run identity and the settings a user gave (reliability issue, third round), case by case; each
test failed before its fix:

    a changed default reruns what it changes     test_a_changed_class_default_gives_new_run_ids,
                                                 test_a_resume_over_a_changed_default_reruns_those_runs_and_says_so,
                                                 test_runs_recorded_before_effective_settings_stand_only_without_defaults
    a metric redefined since a run was scored    test_values_of_a_redefined_metric_are_left_out_until_rescored
    provenance names what was modified           test_git_state_lists_changes_outside_the_output_folder,
                                                 test_a_benchmark_inside_the_repository_is_not_dirty_by_its_own_output
    --split-seeds 1,1 (CLI and config)           test_repeated_split_seeds_run_once_and_are_said,
                                                 test_cli_split_seeds_given_twice_fit_each_run_once
    negative split seed (CLI and config)         test_seeds_out_of_range_are_refused_up_front,
                                                 test_a_negative_tuning_seed_is_refused_up_front
    tune --set is fixed                          test_a_value_set_for_tuning_is_held_fixed_and_reported_so,
                                                 test_cli_tune_set_is_fixed_in_best_params,
                                                 test_tuning_with_every_value_fixed_says_so
    search-space messages                        test_search_space_messages_name_the_real_problem
Beyond the list: a tuned model with intervals     test_a_tuned_model_may_also_have_intervals
"""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import mtpert
from mtpert.benchmark import BenchmarkConfig, expand, run_benchmark, write_report
from mtpert.benchmark import store as store_module
from mtpert.cli import app
from mtpert.data import DatasetSpec, prepare, simulate, simulate_screen
from mtpert.errors import ConfigError
from mtpert.models.search import Choice, IntRange, read_space
from mtpert.models.simple import MeanShift
from mtpert.tuning import TuneSettings, tune

runner = CliRunner(env={"COLUMNS": "200"})
SPEC = DatasetSpec()
SCREEN = 'spec: {condition_key: perturbation, combination_separator: "+"}\nn_hvg: 0\nmin_cells: 10\n'
SCREEN_OPTIONS = ("--condition-key", "perturbation", "--separator", "+", "--n-hvg", "0", "--min-cells", "10")
"""The settings of the simulated screen (:func:`simulate_screen`), in a config file and as options."""


@pytest.fixture(scope="module")
def sim_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "sim.h5ad"
    simulate(seed=1, n_cells=40, n_genes=150).write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def screen_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("screen") / "screen.h5ad"
    simulate_screen(n_lines=1, n_genes=60, n_regulators=8, n_targets=4, n_pairs=8, n_cells=30, seed=0).write_h5ad(path)
    return path


def config(data: Path, **overrides) -> BenchmarkConfig:
    values = {"data": str(data), "models": ("control", "mean_shift"), "holdout": ("type_0",), "seeds": (1,), "n_hvg": 100,
              "noise_ceiling_repeats": 0}  # fmt: skip
    return BenchmarkConfig(**{**values, **overrides})


def cli(*args: str):
    """``mtpert ARGS`` in-process; a Python traceback in its output is a failure in itself."""
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result


def run_files(out: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted((out / "runs").iterdir())}


# ============================================================================ run identity
def test_a_changed_class_default_gives_new_run_ids(sim_path, monkeypatch) -> None:
    adata = ad.read_h5ad(sim_path)
    before = {r.model: r for r in expand(config(sim_path), adata).runs}
    monkeypatch.setattr(MeanShift.__init__, "__kwdefaults__", {"min_cells": 3})
    after = {r.model: r for r in expand(config(sim_path), adata).runs}
    assert after["mean_shift"].params == before["mean_shift"].params == "{}"  # what the user wrote: the same
    assert after["mean_shift"].id != before["mean_shift"].id  # what the model runs with: not
    assert after["mean_shift"].hparams == '{"min_cells":3}' and before["mean_shift"].hparams == '{"min_cells":5}'
    assert after["control"].id == before["control"].id == before["control"].slot  # nothing from defaults: id as before


def test_a_setting_added_at_its_earlier_behaviour_keeps_run_ids(sim_path) -> None:
    """min_steps=0 trains as every run recorded before min_steps existed: it does not enter the
    id (scGen takes 0); the multi-task family's 300 does, since it can train longer."""
    adata = ad.read_h5ad(sim_path)
    runs = {r.model: r for r in expand(config(sim_path, models=("scgen", "mtae")), adata).runs}
    assert "min_steps" not in json.loads(runs["scgen"].hparams)
    assert json.loads(runs["mtae"].hparams)["min_steps"] == 300


def test_a_resume_over_a_changed_default_reruns_those_runs_and_says_so(sim_path, tmp_path, monkeypatch, caplog) -> None:
    out = tmp_path / "out"
    run_benchmark(config(sim_path), out)
    first = run_files(out)
    monkeypatch.setattr(MeanShift.__init__, "__kwdefaults__", {"min_cells": 3})
    with caplog.at_level(logging.WARNING, logger="mtpert.benchmark"):
        results = run_benchmark(config(sim_path), out).results()
    assert "1 runs are redone because their model's effective hyperparameters (its defaults included) changed" in caplog.text
    assert "(models: mean_shift)" in caplog.text and "cannot be checked" not in caplog.text
    runs = results.drop_duplicates("run_id").set_index("model")
    assert sorted(runs.index) == ["control", "mean_shift"]  # one run each: the old one is not reported beside the new
    assert json.loads(runs.at["mean_shift", "hparams"]) == {"min_cells": 3}
    control = f"{runs.at['control', 'run_id']}.parquet"
    assert run_files(out)[control] == first[control]  # untouched, not rerun
    superseded = list((out / "superseded").iterdir())
    assert [f.name.split(".")[0] for f in superseded] == [n.split(".")[0] for n in first if n != control]
    assert json.loads(pd.read_parquet(superseded[0])["hparams"].iloc[0]) == {"min_cells": 5}  # kept, not lost


def test_runs_recorded_before_effective_settings_stand_only_without_defaults(sim_path, tmp_path, caplog) -> None:
    """A run file of the old scheme (named by the run's place, no ``hparams``): what its model
    took from defaults cannot be checked, so it stands only where the model takes nothing."""
    out = tmp_path / "out"
    run_benchmark(config(sim_path), out)
    for file in (out / "runs").iterdir():  # rewrite them as mtpert wrote them before
        table = pd.read_parquet(file).drop(columns=list(store_module.IDENTITY))
        run = next(r for r in expand(config(sim_path), ad.read_h5ad(sim_path)).runs if r.id == file.stem)
        file.unlink()
        table.assign(run_id=run.slot).to_parquet(out / "runs" / f"{run.slot}.parquet")
    legacy = run_files(out)
    with caplog.at_level(logging.WARNING, logger="mtpert.benchmark"):
        store = run_benchmark(config(sim_path), out)
    assert "1 runs are redone" in caplog.text and "1 of them were recorded before runs kept those settings, so they cannot be checked" in caplog.text
    runs = store.results().drop_duplicates("run_id").set_index("model")
    assert sorted(runs.index) == ["control", "mean_shift"]
    assert run_files(out)[f"{runs.at['control', 'run_id']}.parquet"] == legacy[f"{runs.at['control', 'run_id']}.parquet"]
    assert json.loads(runs.at["mean_shift", "hparams"]) == {"min_cells": 5}  # rerun, now recorded


def test_values_of_a_redefined_metric_are_left_out_until_rescored(sim_path, tmp_path, caplog) -> None:
    """Run files scored before a metric's definition changed (here: before versions were recorded,
    so version 1 of deg_overlap_top100, now 2): their other metrics stand, that one is left out
    with the command that scores it anew, and ``rescore`` redoes those runs alone."""
    out = tmp_path / "out"
    run_benchmark(config(sim_path), out)
    for file in (out / "runs").iterdir():  # rewrite them as mtpert wrote them before
        pd.read_parquet(file).drop(columns=[store_module.METRIC_VERSION]).to_parquet(file)
    old = run_files(out)
    with caplog.at_level(logging.WARNING, logger="mtpert.benchmark"):
        results = run_benchmark(config(sim_path), out).results()  # a resume redoes nothing
    assert run_files(out) == old
    assert "left out deg_overlap_top100 of 2 runs (models: control, mean_shift)" in caplog.text
    assert f"mtpert benchmark --out {out} --rescore" in caplog.text
    assert "deg_overlap_top100" not in set(results["metric"]) and "r2_all" in set(results["metric"])
    summary = write_report(out, formats=("png",))["markdown"].read_text()
    assert "Left out, scored before the metric's definition changed: deg_overlap_top100 of control, mean_shift." in summary
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mtpert.benchmark"):
        rescored = run_benchmark(config(sim_path), out, rescore=True).results()
    assert "2 runs are redone to score deg_overlap_top100 anew (--rescore)" in caplog.text
    assert "left out" not in caplog.text
    overlap = rescored[rescored["metric"] == "deg_overlap_top100"]
    assert len(overlap) == 2 and (overlap[store_module.METRIC_VERSION] == 2).all()
    before, after = (t[t["metric"] == "r2_all"].set_index("model")["value"] for t in (results, rescored))
    pd.testing.assert_series_equal(before.sort_index(), after.sort_index())  # seeded: the same otherwise
    assert sorted(f.name.split(".")[0] for f in (out / "superseded").iterdir()) == sorted(n.split(".")[0] for n in old)


# ============================================================================ provenance
def git(repo: Path, *args: str) -> str:
    command = ["git", "-c", "user.email=t@example.org", "-c", "user.name=t", *args]
    return subprocess.run(command, cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path) -> Path:
    """A git work tree: a package under src/pkg, a README and committed results under results/."""
    root = tmp_path / "repo"
    for name, text in {"src/pkg/__init__.py": "", "README.md": "hi", "results/config.json": "{}", ".gitignore": "*.pyc\n"}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "start")
    return root


def test_git_state_lists_changes_outside_the_output_folder(repo) -> None:
    commit = git(repo, "rev-parse", "HEAD")
    source, output = repo / "src" / "pkg", repo / "results"
    assert store_module.git_state(output, source) == (commit, ())
    (output / "config.json").write_text('{"changed": 1}')  # the benchmark's own files: tracked or not
    (output / "runs").mkdir()
    (output / "runs" / "a.parquet").write_text("x")
    (repo / "notes.txt").write_text("untracked, outside the package: not code that runs")
    (source / "cache.pyc").write_text("ignored")
    assert store_module.git_state(output, source) == (commit, ())
    (repo / "README.md").write_text("edited")
    (source / "new.py").write_text("untracked code of the package")
    git(repo, "mv", "src/pkg/__init__.py", "src/pkg/main.py")
    assert store_module.git_state(output, source) == (commit + "+dirty", ("README.md", "src/pkg/main.py", "src/pkg/new.py"))
    assert store_module.git_state(output, repo.parent / "elsewhere") == (None, ())  # not in git


def test_a_benchmark_inside_the_repository_is_not_dirty_by_its_own_output(sim_path, repo, monkeypatch) -> None:
    monkeypatch.setattr(mtpert, "__file__", str(repo / "src" / "pkg" / "__init__.py"))
    out = repo / "results" / "bench"
    run_benchmark(config(sim_path), out)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "results")
    commit = git(repo, "rev-parse", "HEAD")
    run_benchmark(config(sim_path, holdout=("type_0", "type_1")), out)  # rewrites the committed config.json, ...
    store = run_benchmark(config(sim_path, holdout=("type_0", "type_1", "type_2")), out)  # ... which this one finds
    environments = json.loads((out / "environment.json").read_text())
    assert environments[-1]["git_commit"] == commit and environments[-1]["git_changes"] == {"count": 0, "first": []}
    assert set(store.results().query("group == 'type_2'")["git_commit"]) == {commit}
    (repo / "src" / "pkg" / "extra.py").write_text("")
    run_benchmark(config(sim_path), out)
    environments = json.loads((out / "environment.json").read_text())
    assert environments[-1]["git_commit"] == commit + "+dirty"
    assert environments[-1]["git_changes"] == {"count": 1, "first": ["src/pkg/extra.py"]}


def test_provenance_lists_at_most_twenty_changed_paths_and_counts_them() -> None:
    changes = tuple(f"src/m{i:02d}.py" for i in range(25))
    entry = store_module.environment(store_module.Invocation("i", "now", "0", "abc+dirty", "sha", changes), "data.h5ad")
    assert entry["git_changes"] == {"count": 25, "first": list(changes[:20])}


# ============================================================================ split seeds
def test_repeated_split_seeds_run_once_and_are_said(screen_path, tmp_path, caplog) -> None:
    file = tmp_path / "bench.yaml"
    file.write_text(f"data: {screen_path}\nmodels: [control]\nsplit: combination\nsplit_seeds: [1, 2, 1]\nseeds: [1]\n{SCREEN}")
    with caplog.at_level(logging.WARNING, logger="mtpert.benchmark"):
        settings = BenchmarkConfig.from_file(file)
    assert settings.split_seeds == (1, 2) and "split_seeds lists [1] more than once" in caplog.text
    runs = expand(settings, ad.read_h5ad(screen_path)).runs
    assert len({r.id for r in runs}) == len(runs) == 2 * 2  # (control + noise ceiling) x split seeds 1, 2


def test_cli_split_seeds_given_twice_fit_each_run_once(screen_path, tmp_path, caplog) -> None:
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="mtpert.benchmark"):
        result = cli("benchmark", "--data", str(screen_path), "--models", "control", "--split", "combination", "--split-seeds", "1,1",
                     "--seeds", "1", *SCREEN_OPTIONS, "--no-report", "--out", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "split_seeds lists [1] more than once" in caplog.text
    assert "0 already done, 2 to run" in result.output  # control and the noise ceiling, once each (it was 8 fits)
    assert len(list((out / "runs").iterdir())) == 2


@pytest.mark.parametrize("seeds", [("split_seeds", "1,-1"), ("seeds", "-1"), ("seeds", str(2**32))])
def test_seeds_out_of_range_are_refused_up_front(screen_path, tmp_path, seeds) -> None:
    setting, value = seeds
    file = tmp_path / "bench.yaml"
    file.write_text(f"data: {screen_path}\nmodels: [control]\nsplit: combination\n{setting}: [{value}]\n{SCREEN}")
    with pytest.raises(ConfigError, match=f"{setting}\\[.\\]: .* a seed is a whole number from 0 to 4294967295"):
        BenchmarkConfig.from_file(file)
    out = tmp_path / "out"
    result = cli("benchmark", "--data", str(screen_path), "--models", "control", "--split", "combination",
                 f"--{setting.replace('_', '-')}={value}", *SCREEN_OPTIONS, "--out", str(out))  # fmt: skip
    assert result.exit_code == 2 and "a seed is a whole number from 0 to 4294967295" in result.output
    assert not (out / "runs").exists() or not any((out / "runs").iterdir())


def test_a_negative_tuning_seed_is_refused_up_front(sim_path, tmp_path) -> None:
    result = cli("tune", str(sim_path), "--model", "linear", "--out", str(tmp_path / "study"), "--seed=-1")
    assert result.exit_code == 2 and "Invalid value for '--seed'" in result.output and "greater than or equal to 0" in result.output


# ============================================================================ tune --set
@pytest.fixture(scope="module")
def data():
    pytest.importorskip("optuna")
    return prepare(simulate(n_cell_types=4, n_genes=60, n_cells=40, seed=3), SPEC, n_hvg=0)


def test_a_value_set_for_tuning_is_held_fixed_and_reported_so(data) -> None:
    settings = {"trials": 2, "inner_folds": 2, "space": {"hidden": [16]}}
    result = tune(data, SPEC, "mtae", settings=settings, params={"max_epochs": 2, "latent_dim": 4}, seed=1)
    assert result.best_params["latent_dim"] == 4  # not a value of the declared choices 16 ... 128
    assert "latent_dim" not in result.trials.columns and "lr" in result.trials.columns
    assert set(result.fixed) == {"max_epochs", "latent_dim", "hidden"} and "lr" not in result.fixed
    with pytest.raises(ConfigError, match="latent_dim is set to a value .* and given a range in tune.space"):
        tune(data, SPEC, "mtae", settings={"trials": 1, "space": {"latent_dim": {"choices": [8, 16]}}}, params={"latent_dim": 4})


def test_cli_tune_set_is_fixed_in_best_params(data, tmp_path) -> None:
    path = tmp_path / "sim.h5ad"
    simulate(n_cell_types=4, n_genes=60, n_cells=40, seed=3).write_h5ad(path)
    out = tmp_path / "study"
    result = cli("tune", str(path), "--model", "mtae", "--out", str(out), "--trials", "2", "--inner-folds", "2", "--n-hvg", "0",
                 "--set", "latent_dim=4", "--set", "max_epochs=2", "--set", "hidden=[16]")  # fmt: skip
    assert result.exit_code == 0, result.output
    best = json.loads((out / "best_params.json").read_text())
    assert best["latent_dim"] == 4 and best["max_epochs"] == 2 and "lr" in best
    assert "latent_dim" not in pd.read_csv(out / "trials.csv").columns
    rows = {line.split()[1]: line.split()[-2] for line in result.output.splitlines() if line.split()[1:2] in (["latent_dim"], ["lr"])}
    assert rows == {"latent_dim": "fixed", "lr": "tuned"}


def test_tuning_with_every_value_fixed_says_so(data, sim_path, tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"every hyperparameter it would tune \(n_components, ridge\) is held fixed"):
        tune(data, SPEC, "linear", settings={"trials": 1, "space": {"ridge": 0.5}}, params={"n_components": 3})
    with pytest.raises(ConfigError, match="nothing to tune: every hyperparameter"):
        BenchmarkConfig(data=str(sim_path), models={"lin": {"model": "linear", "n_components": 3, "ridge": 1.0, "tune": 2}})
    result = cli("tune", str(sim_path), "--model", "linear", "--out", str(tmp_path / "study"), "--n-hvg", "0",
                 "--set", "n_components=3", "--set", "ridge=1")  # fmt: skip
    assert result.exit_code == 2 and "every hyperparameter it would tune (n_components, ridge) is held fixed" in result.output


def test_a_tuned_model_may_also_have_intervals(sim_path) -> None:
    """Beyond the list: ``tune`` and ``uncertainty`` on one model were a TypeError from its constructor."""
    settings = BenchmarkConfig(data=str(sim_path), models={"m": {"model": "mtae", "tune": 2, "uncertainty": {"members": 2}}})
    assert set(settings.model_params["m"]) == {"tune", "uncertainty"} and settings.hyperparameters("m") == {}


# ============================================================================ search-space messages
@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ({"lr": {"low": 1e-2, "high": 1e-4}}, "tune.space.lr: A range needs low < high"),
        ({"lr": {"low": 0.0, "high": 1.0, "log": True}}, "tune.space.lr: A log-scale range needs low > 0"),
        ({"latent_dim": {"choices": []}}, "tune.space.latent_dim: choices is empty"),
        ({"max_epochs": {"low": 10, "high": 50, "step": "1e1"}}, None),  # YAML reads 1e1 as text
        ({"max_epochs": {"low": np.int64(10), "high": np.int64(50)}}, None),
        ({"dropout": {"low": np.float32(0.0), "high": 0.5}}, None),
        ({"max_epochs": {"low": 0.5, "high": 3.5, "step": 1}}, "tune.space.max_epochs: a range with a step is of integers, but low=0.5"),
        ({"lr": {"low": 1e-3, "high": 1e-1, "log": "no"}}, "tune.space.lr: log must be true or false"),
        ({"lr": {"low": "x", "high": 1.0}}, "tune.space.lr: low, high and step must be numbers; low is 'x'"),
    ],
)
def test_search_space_messages_name_the_real_problem(space, expected) -> None:
    if expected is None:
        tuned, _ = read_space(space)
        assert all(isinstance(d, IntRange | Choice) or type(d.low) is float for d in tuned.values())
        TuneSettings.read({"space": space})
        return
    with pytest.raises(ConfigError) as error:
        TuneSettings.read({"space": space})
    assert expected in str(error.value)
    assert "must be numbers" not in str(error.value) or "'x'" in str(error.value)


def test_a_data_file_rewritten_between_two_benchmarks_in_one_process_is_read_again(tmp_path) -> None:
    """The benchmark caches the data it read per process; a file rewritten with other cells must
    be read again (and the old results refused), not served from the cache under its path."""
    path = tmp_path / "sim.h5ad"
    simulate(n_cell_types=3, n_genes=60, n_cells=30, seed=0).write_h5ad(path)
    config = BenchmarkConfig(data=str(path), models=("control",), seeds=(1,), n_hvg=0, noise_ceiling_repeats=0)
    run_benchmark(config, tmp_path / "bench")
    simulate(n_cell_types=3, n_genes=60, n_cells=30, seed=1).write_h5ad(path)
    with pytest.raises(ConfigError, match="has other content"):
        run_benchmark(config, tmp_path / "bench")
