"""The report: the verdict table and the means first, then figures named after their target and
seed, legible at 20 models.

One small benchmark (control and mean shift, 2 held-out cell types x 2 seeds of simulated data,
with a user-registered metric) serves the file; the verdict's statistics are checked on
constructed scores in test_verdict.py.
"""

from __future__ import annotations

import shutil
from itertools import combinations
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mtpert.benchmark import BenchmarkConfig, run_benchmark, write_report
from mtpert.benchmark.report import HEADLINE, best_models, headline
from mtpert.benchmark.store import ResultStore
from mtpert.benchmark.verdict import paired_verdict, verdict_counts
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


def test_the_verdict_table_comes_first_and_says_what_the_runs_say(bench) -> None:
    results = ResultStore(bench).results()
    metrics = [*(m for m in HEADLINE if m in set(results["metric"])), "mean_abs_error"]
    mean, _ = headline(results, metrics)
    marks = best_models(mean, results.groupby("metric")["higher_is_better"].first())
    assert int(marks.loc["mean_shift"].sum()) >= len(metrics) - 2  # the simulated response is shared: shifting by it wins
    # verdict.csv is the paired bootstrap of every model against every baseline, and the table counts it
    detail = pd.read_csv(bench / "report" / "verdict.csv")
    expected = paired_verdict(results, ["control", "mean_shift"], metrics, models=["control", "mean_shift"])
    pd.testing.assert_frame_equal(
        detail.sort_values(["model", "baseline", "metric"], ignore_index=True),
        expected.sort_values(["model", "baseline", "metric"], ignore_index=True),
        check_dtype=False,
    )
    assert set(detail["pairs"]) == {4}  # 2 held-out targets x 2 seeds
    counts = verdict_counts(detail, ["control", "mean_shift"], ["control", "mean_shift"])
    summary = (bench / "report" / "summary.md").read_text()
    verdict = summary.split("## Verdict: each model against each baseline")[1].split("\n## ")[0]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in verdict.splitlines() if line.startswith("| ")}
    assert rows["model"] == ["vs control", "vs mean_shift"]
    assert rows["mean_shift"] == [counts.loc["mean_shift", "control"], "—"]
    assert rows["control"] == ["—", counts.loc["control", "mean_shift"]]
    assert rows["mean_shift"][0].startswith(f"{len(metrics) - 1} won")  # all but Pearson of the change, none for control
    # the order: verdict table, the means with the noise ceiling beside it, figures, the verdict per metric
    sections = ("## Verdict: each model", "## Mean over held-out targets and seeds", "| noise_ceiling", "## Figures", "<summary>Verdict per metric")
    positions = [summary.index(s) for s in sections]
    assert positions == sorted(positions)
    assert summary.split("\n\n")[1].startswith("## Verdict")  # nothing comes before it on a finished grid
    page = (bench / "report" / "report.html").read_text()
    sections = ("<h2>Verdict: each model", "<th>noise_ceiling</th>", "<figure", "<details><summary><h2>Verdict per metric")
    positions = [page.index(s) for s in sections]
    assert positions == sorted(positions)
    assert "<td>0 won · 0 tied · " in page
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


def test_model_names_stay_legible_at_twenty_models(bench, tmp_path, monkeypatch) -> None:
    """A study of 20 models (mean shift's runs copied under 18 long names): no two tick labels of
    any figure of the report overlap."""
    directory = Path(shutil.copytree(bench, tmp_path / "bench"))
    runs = directory / "runs"
    for file in list(runs.glob("*.parquet")):
        table = pd.read_parquet(file)
        if table["model"].iloc[0] == "mean_shift":
            for i in range(18):
                run_id = f"{file.stem}-{i:02d}"
                table.assign(model=f"mean_shift_variant_{i:02d}", run_id=run_id).to_parquet(runs / f"{run_id}.parquet")
    drawn = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (drawn.append(fig), close(fig)))
    write_report(directory, formats=("png",))
    (grid,) = [f for f in drawn if f.get_suptitle().startswith("Each metric per model")]
    assert len(grid.axes[0].get_yticklabels()) == 21  # 20 models and the noise ceiling
    for figure in drawn:
        figure.canvas.draw()
        labels = [  # those drawn: a tick label outside its axis' limits is not
            label
            for ax in figure.axes if ax.get_visible()
            for axis, labels in ((0, ax.get_xticklabels()), (1, ax.get_yticklabels()))
            for label in labels
            if label.get_visible() and label.get_text() and _within((ax.get_xlim(), ax.get_ylim())[axis], label.get_position()[axis])
        ]  # fmt: skip
        boxes = [label.get_window_extent() for label in labels]
        for (a, box_a), (b, box_b) in combinations(zip(labels, boxes, strict=True), 2):
            assert not box_a.overlaps(box_b), f"{figure.get_suptitle()}: '{a.get_text()}' overlaps '{b.get_text()}'"


def _within(limits: tuple[float, float], value: float) -> bool:
    return min(limits) - 1e-9 <= value <= max(limits) + 1e-9


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
    verdict = summary.split("## Verdict: each model against each baseline")[1].split("\n## ")[0]
    header = next(line for line in verdict.splitlines() if line.startswith("| model"))
    assert [c.strip() for c in header.strip("|").split("|")][1:] == [f"vs {b}" for b in ("control", "mean_shift", "additive", "global_mean")]
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
    opening, verdict = summary.split("## Verdict: each model against each baseline")
    assert "Not every model finished: additive 1 of 2 target-seed runs" in opening
    header = next(line for line in verdict.splitlines() if line.startswith("| model"))
    assert "vs mean_shift" in header and "vs global_mean" in header and "vs additive" not in header
    table = summary.split("## Mean over held-out targets and seeds")[1].split("\n## ")[0]
    header = next(line for line in table.splitlines() if line.startswith("| model"))
    assert "r2_top100" in header and "gi_pearson_top20" not in header
