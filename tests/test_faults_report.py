"""The report on hostile labels: ``$`` drawn as text, markup escaped, partial reports kept apart.

Each benchmark is a few runs of the two baselines on small simulated data, so the file takes
seconds of compute.
"""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from typer.testing import CliRunner

from mtpert.benchmark import BenchmarkConfig, run_benchmark, write_report
from mtpert.cli import app
from mtpert.data import simulate
from mtpert.pl import loss_curves

runner = CliRunner(env={"COLUMNS": "200"})
DOLLARS = "T $x_$ cells"
"""A cell type matplotlib cannot parse as mathtext (an empty subscript)."""
SCRIPT = "<script>alert(1)</script>"
PIPES = "a|b **x**"


def simulated(cell_types: dict[str, str], doses: tuple[float, ...] = (1.0,)):
    """3 small simulated cell types, renamed by ``cell_types``."""
    adata = simulate(seed=3, n_cell_types=3, n_genes=60, n_cells=25, doses=doses)
    adata.obs["cell_type"] = adata.obs["cell_type"].cat.rename_categories(cell_types)
    return adata


def benchmark(folder: Path, adata, data_name: str = "sim.h5ad", **settings) -> Path:
    """Control and mean shift on ``adata`` (written to ``folder/data_name``) in ``folder/bench``."""
    data = folder / data_name
    adata.write_h5ad(data)
    values = {"data": str(data), "models": ("control", "mean_shift"), "seeds": (1,), "n_hvg": 0, "min_cells": 10,
              "noise_ceiling_repeats": 1}  # fmt: skip
    run_benchmark(BenchmarkConfig(**{**values, **settings}), folder / "bench")
    return folder / "bench"


@pytest.fixture(scope="module")
def markup(tmp_path_factory) -> Path:
    """A finished benchmark (no report) whose cell types and data file name hold HTML, Markdown and ``|``."""
    adata = simulated({"type_0": SCRIPT, "type_1": PIPES})
    return benchmark(tmp_path_factory.mktemp("markup"), adata, "<i>sim|x.h5ad", holdout=(SCRIPT, PIPES))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_cell_types_conditions_and_genes_with_dollars_are_drawn_as_text(tmp_path) -> None:
    adata = simulated({"type_0": DOLLARS, "type_1": "T $x$ cells"}, doses=(0.5, 2.0))
    adata.obs["condition"] = adata.obs["condition"].cat.rename_categories({"stimulated": "IFN $^$ b"})
    adata.var_names = [f"G{i} $x_$" for i in range(adata.n_vars)]
    out = benchmark(tmp_path, adata, holdout=(DOLLARS, "T $x$ cells"), spec={"dose_key": "dose"}, showcase=DOLLARS)
    written = write_report(out)
    for name in ("metrics_by_model", "heatmap", "pca_", "scatter_", "dotplot_", "dose_response_"):  # per target: named after it
        (png,) = [path for key, path in written.items() if key.startswith(name) and key.endswith(".png")]
        assert png.stat().st_size > 10_000
        assert written[png.with_suffix(".pdf").name].read_bytes().startswith(b"%PDF")
    history = pd.DataFrame({"epoch": [0, 1], "train_$x_$": [2.0, 1.0], "val_$x_$": [2.5, 1.5]})
    ax = loss_curves(history, title=DOLLARS)
    for fmt in ("png", "pdf"):
        ax.figure.savefig(io.BytesIO(), format=fmt)
    plt.close(ax.figure)


def test_summary_md_escapes_markup_and_pipes_from_the_data(markup) -> None:
    written = write_report(markup, formats=("png",))
    summary = written["markdown"].read_text()
    assert "<script>" not in summary and "&lt;script&gt;alert(1)&lt;/script&gt;" in summary
    assert "<i>" not in summary and "**x**" not in summary and r"a\|b \*\*x\*\*" in summary
    tables = re.findall(r"(?:^\|.*\n)+", summary, re.MULTILINE)
    assert any("alert" in t for t in tables)
    for table in tables:  # every row has as many cell borders as the header
        assert len({len(re.findall(r"(?<!\\)\|", row)) for row in table.splitlines()}) == 1, table
    assert SCRIPT not in written["html"].read_text()


def test_a_report_on_some_models_leaves_the_full_report_alone(markup, tmp_path) -> None:
    directory = Path(shutil.copytree(markup, tmp_path / "bench"))
    assert runner.invoke(app, ["report", str(directory), "--no-pdf"]).exit_code == 0
    full = snapshot(directory / "report")
    part = runner.invoke(app, ["report", str(directory), "--no-pdf", "--models", "mean_shift"])
    assert part.exit_code == 0, part.output
    assert snapshot(directory / "report") == full
    (folder,) = directory.glob("report-mean_shift-*")  # its own folder, named after the models
    summary = (folder / "summary.md").read_text()
    assert "| mean_shift " in summary and "| noise_ceiling " in summary and "| control " not in summary
    mine = tmp_path / "mine"
    elsewhere = runner.invoke(app, ["report", str(directory), "--no-pdf", "--models", "control", "--out", str(mine)])
    assert elsewhere.exit_code == 0, elsewhere.output
    assert (mine / "report.html").is_file() and snapshot(directory / "report") == full


def test_a_report_on_some_models_is_refused_over_the_full_report(markup, tmp_path) -> None:
    directory = Path(shutil.copytree(markup, tmp_path / "bench"))
    before = snapshot(directory)
    for out in (directory / "report", directory / "runs" / ".." / "report"):
        result = runner.invoke(app, ["report", str(directory), "--models", "mean_shift", "--out", str(out)])
        assert result.exit_code == 2 and "holds the report on every model" in result.output
    assert snapshot(directory) == before


def test_names_made_from_labels_are_distinct_single_folder_names() -> None:
    from mtpert.io import safe_name

    hostile = ["../../etc", "a/b", "a_b", "..", ".", "", "T+x", "T_x", "x" * 300, "control+mean_shift"]
    names = [safe_name(label) for label in hostile]
    assert len(set(names)) == len(names)
    for name in names:
        assert Path(name).name == name and not name.startswith(".") and len(name) < 64
