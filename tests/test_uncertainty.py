"""Uncertainty: ensemble and MC-dropout draws, split-conformal intervals and their coverage."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from mtpert import pl
from mtpert.benchmark import BenchmarkConfig, make_fold, run_benchmark, write_report
from mtpert.data import DatasetSpec, simulate
from mtpert.errors import ConfigError
from mtpert.uncertainty import (
    Calibration,
    ChangeDraws,
    calibrate,
    fit_ensemble,
    interval_table,
    predict_draws,
    true_change,
)

SPEC = DatasetSpec()
FAST = {"max_epochs": 10, "num_threads": 1, "progress": False}


def test_the_conformal_quantile_is_the_corrected_order_statistic() -> None:
    calibration = Calibration(np.arange(1.0, 10.0), ("t",))  # scores 1..9
    assert calibration.factor(0.8) == 8.0  # ceil(10 * 0.8) = 8th smallest
    assert calibration.factor(0.5) == 5.0
    assert calibration.factor(0.95) == np.inf  # 9 scores cannot promise 95%
    with pytest.raises(ConfigError, match="between 0 and 1"):
        calibration.factor(1.0)


def test_conformal_intervals_cover_exchangeable_targets_at_the_stated_level() -> None:
    """No model: draws whose spread understates the error threefold, as an ensemble's does on a
    new group. Their own quantiles undercover; calibrated on other targets of the same kind, the
    intervals cover new ones at the nominal level."""
    rng = np.random.default_rng(0)
    genes = pd.Index([f"g{i}" for i in range(200)])

    def target() -> tuple[ChangeDraws, np.ndarray]:
        centre = rng.normal(size=200)
        spread = rng.uniform(0.05, 0.3, size=200)
        draws = centre + spread * rng.normal(size=(5, 200))
        return ChangeDraws(genes, draws), centre + 3 * spread * rng.normal(size=200)

    calibration = Calibration.from_draws({str(i): target() for i in range(20)}, floor=0.01)
    assert len(calibration.scores) == 20 * 200
    tables = pd.concat([interval_table(t, d, {"conformal": calibration}) for d, t in (target() for _ in range(20))])
    mean = tables.groupby(["method", "level"])["coverage"].mean()
    for level in (0.5, 0.8, 0.95):
        assert mean["conformal", level] == pytest.approx(level, abs=0.03)
        assert mean["draws", level] < level - 0.2


@pytest.fixture(scope="module")
def fold():
    raw = simulate(n_cell_types=5, n_genes=60, n_cells=50, seed=2)
    return make_fold(raw, SPEC, "type_0", seed=1, n_hvg=0)


def test_calibrated_ensemble_intervals_cover_a_held_out_cell_type_better_than_its_own_spread(fold) -> None:
    data, split = fold.data, fold.split
    train = data[split.train.union(split.val)]
    members = fit_ensemble("mtae", SPEC, split.subset(data, "train"), split.subset(data, "val"), seeds=[1, 2, 3], params=FAST)
    calibration = calibrate(train, SPEC, "mtae", seeds=[1, 2, 3], params=FAST, folds=3)
    assert len(calibration.targets) == 3 and all(not t.startswith("type_0/") for t in calibration.targets)
    assert len(calibration.scores) == 3 * data.n_vars
    target = split.targets[0]
    control, truth = data[target.control], data[target.truth]
    draws = predict_draws(members, control, target.condition)
    assert draws.draws.shape == (3, data.n_vars) and draws.uncertainty() > 0
    table = interval_table(true_change(control, truth), draws, {"conformal": calibration}).set_index(["method", "level"])
    assert table.loc[("conformal", 0.8), "coverage"] >= 0.6
    assert table.loc[("conformal", 0.8), "coverage"] > table.loc[("draws", 0.8), "coverage"]
    assert table.loc[("conformal", 0.95), "width"] > table.loc[("conformal", 0.5), "width"]


def test_mc_dropout_draws_differ_and_leave_the_model_deterministic(fold) -> None:
    data, split = fold.data, fold.split
    model = fit_ensemble("mtae", SPEC, split.subset(data, "train"), seeds=[1], params=FAST)[0]
    target = split.targets[0]
    control = data[target.control]
    draws = predict_draws([model], control, target.condition, dropout_draws=4, seed=0)
    assert draws.draws.shape[0] == 4 and draws.spread.mean() > 0
    again = predict_draws([model], control, target.condition, dropout_draws=4, seed=0)
    np.testing.assert_allclose(draws.draws, again.draws)  # seeded
    plain = [model.predict(control, target.condition).X for _ in range(2)]
    np.testing.assert_array_equal(plain[0], plain[1])  # dropout is off again after the block

    without = fit_ensemble("mtae", SPEC, split.subset(data, "train"), seeds=[1], params={**FAST, "dropout": 0.0, "input_dropout": 0.0})[0]
    with pytest.raises(ConfigError, match="no dropout"):
        predict_draws([without], control, target.condition, dropout_draws=2)
    with pytest.raises(ConfigError, match="needs a spread"):
        calibrate(data, SPEC, "mtae", seeds=[1], params=FAST)


def test_plots_draw_calibration_and_intervals() -> None:
    table = pd.DataFrame({"method": ["draws"] * 3 + ["conformal"] * 3, "level": [0.5, 0.8, 0.95] * 2, "coverage": [0.2, 0.3, 0.4, 0.5, 0.8, 0.95]})
    ax = pl.calibration_curve(table, title="$x$")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["calibrated", "draws", "conformal"]
    with pytest.raises(ValueError, match="lacks the columns"):
        pl.calibration_curve(table.drop(columns="coverage"))
    truth = np.array([1.0, -0.5, 0.2, 0.0])
    ax = pl.change_intervals(truth, truth + 0.1, truth + 0.05, truth + 0.3, ["a", "b", "c", "d"])
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["misses it (4)"]  # every interval lies above its truth
    ax = pl.change_intervals(truth, truth, truth - 0.1, truth + 0.1, ["a", "b", "c", "d"])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["covers the truth (4)"]


def test_a_benchmark_states_calibrated_intervals_and_the_report_shows_them(tmp_path) -> None:
    raw = simulate(n_cell_types=4, n_genes=60, n_cells=40, seed=4)
    path = tmp_path / "sim.h5ad"
    raw.write_h5ad(path)
    models = {"mtae": {**FAST, "uncertainty": {"members": 2, "folds": 2}}, "control": {}}
    config = BenchmarkConfig(data=str(path), models=models, holdout=["type_0", "type_1", "type_2"], seeds=[1], n_hvg=0, noise_ceiling_repeats=0)
    results = run_benchmark(config, tmp_path / "bench").results()
    rows = results[results["metric"].str.startswith("uq_")]
    assert set(rows["model"]) == {"mtae"} and rows["group"].nunique() == 3
    coverage = rows[rows["metric"].str.match(r"uq_(draws_)?coverage")]["value"]
    assert coverage.between(0, 1).all()
    assert (results.loc[results["model"] == "mtae", "uq_seconds"] > 0).all()
    summary = write_report(tmp_path / "bench", formats=("png",))["markdown"].read_text()
    section = summary.split("## Uncertainty")[1].split("\n## ")[0]
    assert "| mtae" in section and "coverage_80" in section and "| control" not in section
    headline = summary.split("## Mean over")[1].split("\n## ")[0]
    assert "uq_" not in headline  # intervals are not metrics of the headline table
    assert (tmp_path / "bench" / "report" / "figures" / "calibration.png").is_file()


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"members": 1}, "greater than or equal to 2"), ({"member": 3}, "unknown settings"), ({"levels": [0.8, 1.2]}, "between 0 and 1")],
)
def test_bad_uncertainty_settings_are_refused(settings, message) -> None:
    with pytest.raises(ConfigError, match=message):
        BenchmarkConfig(data="x.h5ad", models={"mtae": {"uncertainty": settings}})
