"""The command line, driven as a user would: help, version, data info/list/download, models,
demo, evaluate; and output to a file or pipe is never cut at 80 columns."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from typer.testing import CliRunner

import mtpert
from mtpert.cli import app
from mtpert.data import DatasetSpec, heldout_mask, holdout_group, prepare, simulate
from mtpert.data import registry as data_registry
from mtpert.data.registry import list_datasets
from mtpert.models import get_model, list_models
from tests.test_registry import _closed_port, _entry, server, tiny  # noqa: F401 (its local HTTP server's fixtures; F811 below: they are the tests' arguments)

runner = CliRunner(env={"COLUMNS": "200"})  # wide enough that rich does not wrap lines
piped = CliRunner(env={"COLUMNS": None})  # output to a pipe, as `mtpert ... > file` gives


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("fit", "predict", "evaluate", "benchmark", "report", "demo", "data", "models"):
        assert re.search(rf"^. {command} ", result.output, re.MULTILINE), f"`{command}` is not listed in --help"


def test_version_names_mtpert_and_what_it_runs_on() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert f"mtpert {mtpert.__version__}" in result.output
    for name in ("python", "torch", "anndata", "scanpy"):
        assert re.search(rf"{name} \d", result.output), f"--version does not give the {name} version"


def test_tables_are_not_cut_when_output_is_not_a_terminal() -> None:
    result = piped.invoke(app, ["data", "list"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    for name, row in list_datasets().iterrows():
        assert any(name in line and row["description"] in line for line in lines), f"{name}'s row is cut or wrapped"
    assert max(map(len, lines)) > 200, "the table is as wide as its longest row, not the 80 columns of no terminal"


def test_data_list_says_which_screens_have_a_published_checksum() -> None:
    result = piped.invoke(app, ["data", "list"])
    assert result.exit_code == 0
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.startswith("│")}
    assert "verified" in rows["norman2019"]
    assert "none published" in rows["papalexi2021"] and "none published" in rows["mcfaline2023"]


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


def test_models_describes_each_class_once_and_each_preset_by_its_options() -> None:
    result = piped.invoke(app, ["models"])
    assert result.exit_code == 0
    presets = list_models()
    for description in presets["description"].unique():
        assert result.output.count(description) == 1, "a class's description is repeated per preset"
    lines = result.output.splitlines()
    for name, row in presets.iterrows():
        one_dose = get_model(name).one_dose_at_a_time
        options = [f"{k}={v}" for k, v in row["options"].items()] + ["one dose at a time"] * one_dose
        [line] = [line for line in lines if line.split()[:1] == [name]]
        assert line.split(None, 1)[1].strip() == (", ".join(options) or "(class defaults)"), f"{name}: {line}"


def test_demo_writes_results_and_figures(tmp_path) -> None:
    result = runner.invoke(app, ["demo", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for name in ("results.csv", "metrics.png", "scatter.png"):
        assert (tmp_path / name).stat().st_size > 0
    results = pd.read_csv(tmp_path / "results.csv")
    r2 = results[results["metric"] == "r2_top100"].groupby("model")["value"].mean()
    assert r2["mean_shift"] > r2["control"], "the demo's simulated response is learnable"
    assert "Each row is a metric" in result.output and "↑: higher is better" in result.output
    # the table names each metric's best model as results.csv scores it, and the overall leader
    from mtpert.benchmark.demo import demo_summary

    summary = demo_summary(results, sorted(results["model"].unique()))
    row = next(line for line in result.output.splitlines() if line.startswith("│ r2_top100 "))
    assert summary.loc["r2_top100", "best"] in row and "R² of per-gene means over the top-100 true DEGs" in row
    wins = {m: sum(m in best.split(", ") for best in summary["best"]) for m in results["model"].unique()}
    leader, count = re.search(r"Best: (\S+), on (\d) of 6 metrics", result.output).groups()  # type: ignore[union-attr]
    assert wins[leader] == int(count) == max(wins.values())


def test_demo_summary_marks_the_best_model_in_each_metric_direction() -> None:
    from mtpert.benchmark.demo import DEMO_METRICS, demo_summary

    rows = [
        (metric, model, value, metric != "e_distance_rel")
        for metric, scores in {"r2_all": (0.9, 0.8), "e_distance_rel": (1.0, 0.3)}.items()
        for model, value in zip(("control", "mean_shift"), scores, strict=True)
    ]
    results = pd.DataFrame(rows, columns=["metric", "model", "value", "higher_is_better"])
    summary = demo_summary(results, ["control", "mean_shift"])
    assert list(summary.index) == list(DEMO_METRICS)
    assert summary.loc["r2_all", "best"] == "control" and summary.loc["e_distance_rel", "best"] == "mean_shift"
    assert summary.loc["r2_all", "measures"].startswith("↑ ") and summary.loc["e_distance_rel", "measures"].startswith("↓ ")
    assert summary.loc["mmd_rel", "best"] == "-"  # no scores


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
    tables = {}
    for space in ("target", "group"):
        out = tmp_path / f"scores_{space}.csv"
        command = ["evaluate", str(tmp_path / "truth.h5ad"), str(tmp_path / "pred.h5ad"), "--out", str(out), "--space", space]
        result = runner.invoke(app, command)
        assert result.exit_code == 0, result.output
        tables[space] = pd.read_csv(out)
    scores = tables["target"]
    assert {"metric", "value"} <= set(scores.columns)
    r2 = scores.loc[scores["metric"] == "r2_all", "value"].item()
    assert 0.5 < r2 <= 1.0
    # one target of the group: its own space is the group's
    pd.testing.assert_frame_equal(tables["group"], scores, rtol=1e-9)


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


@pytest.fixture
def registered(monkeypatch, tmp_path):
    """Register a test dataset served from 127.0.0.1; returns a function taking its URL and hash."""

    def register(url: str, known_hash: str) -> str:
        monkeypatch.setattr(data_registry, "DATASETS", {**data_registry.DATASETS, "tiny": _entry(url, known_hash)})
        return str(tmp_path / "cache")

    return register


def test_data_download_fetches_verifies_and_says_where(server, tiny, registered) -> None:  # noqa: F811
    cache = registered(tiny.url, f"sha256:{tiny.sha256}")
    result = piped.invoke(app, ["data", "download", "tiny", "--cache-dir", cache])
    assert result.exit_code == 0, result.output
    assert f"{cache}/tiny.h5ad" in result.output and "matches its recorded checksum" in result.output
    assert piped.invoke(app, ["data", "download", "tiny", "--cache-dir", cache]).exit_code == 0
    assert server.hits == ["/tiny.h5ad"], "the second download came from the cache"


@pytest.mark.parametrize(
    ("problem", "reason"),
    [
        ("checksum", "does not match the recorded checksum"),
        ("missing", "HTTP error 404"),
        ("unreachable", "no connection to the server"),
    ],
)
def test_a_failed_download_is_one_line_saying_what_to_do(server, tiny, registered, problem, reason) -> None:  # noqa: F811
    url, known_hash = tiny.url, f"sha256:{tiny.sha256}"
    if problem == "checksum":
        known_hash = "sha256:" + "0" * 64
    elif problem == "missing":
        url = f"{server.url}/absent.h5ad"
    else:
        url = f"http://127.0.0.1:{_closed_port()}/tiny.h5ad"
    cache = registered(url, known_hash)
    result = piped.invoke(app, ["data", "download", "tiny", "--cache-dir", cache])
    assert result.exit_code == 2
    [message] = result.output.strip().splitlines()
    assert message.startswith("error: Could not download dataset 'tiny'") and reason in message
    assert f"{cache}/tiny.h5ad" in message and "path=" in message  # where to put a copy, or how to pass one
    assert "urllib3" not in message and "HTTPConnectionPool" not in message and "Max retries" not in message


def test_too_small_holdout_names_the_min_cells_flag(kang_path, tmp_path) -> None:
    result = runner.invoke(app, ["benchmark", "--data", str(kang_path), "--models", "control", "--holdout", "pDC", "--out", str(tmp_path / "b")])
    assert result.exit_code == 2
    assert "Too small to hold out and score: pDC (4 control cells < 20)" in result.output
    assert "--min-cells" in result.output
