"""The report: a verdict from the tables first, then figures named after their target and seed.

One small benchmark (control and mean shift, 2 held-out cell types x 2 seeds of simulated data,
with a user-registered metric) serves the file; the wording of the verdict is also checked on
hand-made tables where the headline model is not the baseline.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mtpert.benchmark import BenchmarkConfig, run_benchmark, write_report
from mtpert.benchmark.report import HEADLINE, best_models, headline, overall_verdict
from mtpert.benchmark.store import ResultStore
from mtpert.data import simulate
from mtpert.metrics import METRICS, EvalPair, register_metric

HELD_OUT = ("type_0", "type_2")
SEEDS = (1, 2)


def mean_abs_error(pair: EvalPair) -> float:
    """Mean absolute difference of per-gene means, pred vs truth."""
    return float(np.abs(pair.means["pred"] - pair.means["truth"]).mean())


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    """The benchmark directory, its report written with PNG figures; ``mean_abs_error`` registered
    while it runs (and removed after the module)."""
    folder = tmp_path_factory.mktemp("report")
    data = folder / "sim.h5ad"
    simulate(seed=1, n_cells=40, n_genes=120).write_h5ad(data)
    settings = BenchmarkConfig(data=str(data), models=("control", "mean_shift"), seeds=SEEDS, holdout=HELD_OUT,
                               showcase="type_2", n_hvg=0, noise_ceiling_repeats=1)  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(METRICS, "_entries", dict(METRICS._entries))
        register_metric("mean_abs_error", mean_abs_error, best=0.0, higher_is_better=False,
                        description="Mean absolute difference of per-gene means")  # fmt: skip
        run_benchmark(settings, folder / "bench")
        write_report(folder / "bench", formats=("png",))
    return folder / "bench"


def test_the_verdict_comes_first_and_says_what_the_tables_say(bench) -> None:
    results = ResultStore(bench).results()
    metrics = [*(m for m in HEADLINE if m in set(results["metric"])), "mean_abs_error"]
    mean, _ = headline(results, metrics)
    marks = best_models(mean, results.groupby("metric")["higher_is_better"].first())
    wins = int(marks.loc["mean_shift"].sum())
    assert wins >= len(metrics) - 2  # the simulated response is shared: shifting by it wins
    where = f"all {wins} metrics" if wins == len(metrics) else f"{wins} of {len(metrics)} metrics ("
    summary = (bench / "report" / "summary.md").read_text()
    verdict = summary.split("\n\n")[1]
    assert verdict.startswith(f"Over 2 held-out targets x 2 seeds, mean_shift is best on {where}")
    assert "No model beats mean_shift on any metric (better on average and on more than half of the targets)." in verdict
    # the order: verdict, figures, then the tables, in both renderings
    positions = [summary.index(s) for s in (verdict, "## Figures", "## Mean over held-out targets and seeds")]
    assert positions == sorted(positions)
    page = (bench / "report" / "report.html").read_text()
    positions = [page.index(s) for s in ("<p class='verdict'>Over 2 held-out targets", "<figure", "<table")]
    assert positions == sorted(positions)
    # the user's metric is reported like mtpert's own, described from the registry
    table = summary.split("## Mean over held-out targets and seeds")[1].split("##")[0]
    assert "mean_abs_error: Mean absolute difference of per-gene means (lower is better; best 0)." in table
    assert "mean_abs_error" in table.splitlines()[4]  # the header row


def test_each_figure_names_its_target_and_seed(bench) -> None:
    figures = bench / "report" / "figures"
    per_target = {f"{kind}_type_2_stimulated_seed1.png" for kind in ("pca", "scatter", "dotplot")}
    assert {p.name for p in figures.iterdir()} == {"metrics_by_model.png", "heatmap.png", *per_target}
    for name in per_target:
        assert Image.open(figures / name).text["Title"] == "type_2 -> stimulated, seed 1"
    for name in ("metrics_by_model.png", "heatmap.png"):
        assert "2 held-out targets x seeds 1, 2" in Image.open(figures / name).text["Title"]
    summary = (bench / "report" / "summary.md").read_text()
    assert "![pca_type_2_stimulated_seed1](figures/pca_type_2_stimulated_seed1.png)" in summary


def test_the_verdict_of_a_model_that_beats_the_baseline_on_some_metrics() -> None:
    metrics = ["r2_top100", "e_distance_rel", "deg_overlap_top100"]
    mean = pd.DataFrame(
        [[0.9, 0.6, 40.0], [0.8, 0.4, 30.0], [0.3, 1.0, 35.0], [0.95, 0.2, 50.0]],
        index=["mtae", "mean_shift", "control", "noise_ceiling"], columns=metrics,
    )  # fmt: skip
    marks = best_models(mean, pd.Series([True, False, True], index=metrics))
    comparison = pd.DataFrame(
        [("mtae", "r2_top100", 8, 9, True), ("mtae", "e_distance_rel", 3, 9, False),
         ("mtae", "deg_overlap_top100", 6, 9, True), ("control", "r2_top100", 0, 9, False),
         ("control", "e_distance_rel", 0, 9, False), ("control", "deg_overlap_top100", 5, 9, True)],
        columns=["model", "metric", "targets_better", "targets", "beats"],
    )  # fmt: skip
    verdict = overall_verdict(mean, marks, comparison, n_targets=9, seeds=[1, 2, 3])
    assert verdict == (
        "Over 9 held-out targets x 3 seeds, mtae is best on 2 of 3 metrics (r2_top100, deg_overlap_top100); "
        "mean_shift on 1 (e_distance_rel). It beats mean_shift (better on average and on more than half of "
        "the targets) on r2_top100 (8/9 targets), deg_overlap_top100 (6/9 targets), but not on "
        "e_distance_rel (3/9 targets). Of the other models, control beats mean_shift on deg_overlap_top100."
    )


def test_a_screen_report_has_a_row_per_perturbation_and_every_baseline(tmp_path) -> None:
    """A screen (tens of perturbations): per-perturbation tables and a heatmap per model, the
    comparison with each baseline that ran, and the cell-level figures of a few perturbations only."""
    from mtpert.benchmark.report import MAX_SHOWN_CONDITIONS
    from mtpert.data import simulate_screen

    adata = simulate_screen(n_lines=3, n_genes=80, n_regulators=6, n_pairs=3, n_cells=30, seed=2)
    data = tmp_path / "screen.h5ad"
    adata.write_h5ad(data)
    spec = adata.uns["simulation"]["spec"]
    settings = BenchmarkConfig(
        data=str(data), models=("control", "mean_shift", "global_mean", "additive"), holdout=("line_0",), seeds=(1,),
        n_hvg=0, noise_ceiling_repeats=0, spec=dict(spec), min_cells=10,
    )  # fmt: skip
    run_benchmark(settings, tmp_path / "out")
    written = write_report(tmp_path / "out", formats=("png",))
    summary = written["markdown"].read_text()
    conditions = sorted(ResultStore(tmp_path / "out").results()["condition"].unique())
    assert len(conditions) > MAX_SHOWN_CONDITIONS
    table = summary.split("## r2_top100 per perturbation (mean over seeds)")[1].split("\n## ")[0]
    rows = [line for line in table.splitlines() if line.startswith("|")]
    assert [c.strip() for c in rows[0].strip("|").split("|")] == ["perturbation", *settings.models]  # a column per model
    assert sorted(r.split("|")[1].strip() for r in rows[2:]) == conditions  # a row per perturbation
    verdict = summary.split("## Figures")[0]
    assert "mean_shift" in verdict and "Against global_mean" in verdict and "Against additive" in verdict
    for baseline in ("mean_shift", "global_mean", "additive"):
        assert f"## Against {baseline}" in summary
    figures = {p.stem for p in (tmp_path / "out" / "report" / "figures").iterdir()}
    assert {f"perturbations_{m}" for m in settings.models} <= figures
    assert len([f for f in figures if f.startswith("pca_")]) == MAX_SHOWN_CONDITIONS


def test_an_unfinished_grid_is_named_and_empty_comparisons_are_left_out(tmp_path) -> None:
    """Single perturbations only: the additive baseline equals mean shift there, so no section
    compares with it, and the combination metrics (no value on any target) get no column; a model
    with fewer finished runs than the others is named before the verdict."""
    data = tmp_path / "sim.h5ad"
    simulate(seed=1, n_cells=30, n_genes=80).write_h5ad(data)
    settings = BenchmarkConfig(data=str(data), models=("control", "mean_shift", "additive", "global_mean"), seeds=(1, 2),
                               holdout=("type_0",), n_hvg=0, noise_ceiling_repeats=0)  # fmt: skip
    store = run_benchmark(settings, tmp_path / "bench")
    results = store.results()
    assert results.loc[results["metric"] == "gi_pearson_top20", "value"].isna().all()
    unfinished = results.loc[(results["model"] == "additive") & (results["seed"] == 2), "run_id"].iloc[0]
    (store.root / "runs" / f"{unfinished}.parquet").unlink()
    summary = write_report(tmp_path / "bench", formats=("png",))["markdown"].read_text()
    verdict = summary.split("## Figures")[0]
    assert "Not every model finished: additive 1 of 2 target-seed runs" in verdict
    assert "## Against mean_shift" in summary and "## Against global_mean" in summary
    assert "## Against additive" not in summary
    table = summary.split("## Mean over held-out targets and seeds")[1].split("\n## ")[0]
    header = next(line for line in table.splitlines() if line.startswith("| model"))
    assert "r2_top100" in header and "gi_pearson_top20" not in header
