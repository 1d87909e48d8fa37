"""``mtpert fit``'s data options and messages that misled (issue 30), driven as a user would.

Cases: a screen fitted from the command line predicts an unseen pair from its parts (--separator,
--guide-key); a group too small to hold out is not met with advice to lower a --min-cells that
fit lacks; an out-of-range training setting is refused before the data is read; control
characters in labels are escaped visibly in report.html and summary.md; counts no single-cell
assay gives (1e9 for one gene in one cell) are refused, naming the value and gene.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

import anndata as ad
import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

from mtpert.benchmark import BenchmarkConfig, run_benchmark, write_report
from mtpert.cli import app
from mtpert.data import DatasetSpec, log_normalize, prepare, simulate, simulate_screen
from mtpert.data.pp import COUNTS_MAX
from mtpert.data.spec import require_groups
from mtpert.errors import ConfigError, DataError
from mtpert.models import PerturbationModel, get_model
from mtpert.pl._text import literal, visible
from mtpert.train import TrainConfig

runner = CliRunner(env={"COLUMNS": "200"})


# ---------------------------------------------------------------- fit takes the data options
@pytest.fixture(scope="module")
def screen_file(tmp_path_factory) -> tuple[str, ad.AnnData]:
    """A small simulated screen (singles and a few pairs of 5 regulators, 2 lines), as raw counts."""
    screen = simulate_screen(n_lines=2, n_genes=40, n_regulators=5, n_targets=4, n_pairs=3, n_cells=20, seed=2)
    path = tmp_path_factory.mktemp("screen") / "screen.h5ad"
    screen.write_h5ad(path)
    return str(path), screen


def test_a_screen_fitted_from_the_command_line_predicts_an_unseen_pair_from_its_parts(screen_file, tmp_path) -> None:
    data, screen = screen_file
    labels = set(screen.obs["perturbation"].astype(str))
    singles = sorted(c for c in labels if "+" not in c and c != "control")
    unseen = next(f"{a}+{b}" for a in singles for b in singles if a < b and {f"{a}+{b}", f"{b}+{a}"}.isdisjoint(labels))
    model_dir = tmp_path / "additive"
    fitted = runner.invoke(app, [
        "fit", data, "--model", "additive", "--out", str(model_dir), "--n-hvg", "0",
        "--condition-key", "perturbation", "--separator", "+", "--guide-key", "guide",
    ])  # fmt: skip
    assert fitted.exit_code == 0, fitted.output
    model = PerturbationModel.load(model_dir)
    assert (model.spec.combination_separator, model.spec.guide_key) == ("+", "guide")

    pred_file = tmp_path / "pred.h5ad"
    predicted = runner.invoke(app, ["predict", str(model_dir), data, "--group", "line_0", "--condition", unseen, "--out", str(pred_file)])
    assert predicted.exit_code == 0, predicted.output
    control = screen[(screen.obs["cell_type"] == "line_0").to_numpy() & model.spec.is_control(screen)].copy()
    log_normalize(control)
    a, b = unseen.split("+")
    expected = model.predict(control, unseen).X
    np.testing.assert_allclose(ad.read_h5ad(pred_file).X, expected, rtol=1e-5, atol=1e-6)
    change = {p: model.predict(control, p).X - control.X.toarray() for p in (a, b)}  # the parts, seen alone
    np.testing.assert_allclose(expected - control.X.toarray(), change[a] + change[b], rtol=1e-4, atol=1e-5)


def test_fit_declares_the_same_data_options_as_benchmark() -> None:
    import typer.main

    def options(name: str) -> set[str]:
        command = typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]
        return {o for p in command.params if p.param_type_name == "option" for o in p.opts}

    data_options = {"--cell-type-key", "--condition-key", "--control", "--dose-key", "--separator"}
    assert data_options <= options("benchmark")
    assert data_options | {"--guide-key"} <= options("fit")


# ---------------------------------------------------------------- advice names only fit's options
def test_fit_on_a_group_too_small_names_no_option_fit_lacks(tmp_path) -> None:
    raw = simulate(n_genes=40, n_cells=20, seed=1)
    control_of_type_0 = np.flatnonzero((raw.obs["cell_type"] == "type_0").to_numpy() & DatasetSpec().is_control(raw))
    keep = np.ones(raw.n_obs, dtype=bool)
    keep[control_of_type_0[1:]] = False  # one control cell left
    path = tmp_path / "one_control.h5ad"
    raw[keep].copy().write_h5ad(path)
    result = runner.invoke(app, ["fit", str(path), "--model", "mean_shift", "--out", str(tmp_path / "m"), "--holdout", "type_0"])
    assert result.exit_code == 2
    assert "has 1 cells under 'control', fewer than the 2 needed" in result.output
    assert "Pick another target." in result.output and "--min-cells" not in result.output
    with pytest.raises(DataError, match=r"lower min_cells \(CLI: --min-cells\)"):  # above the floor, lowering helps
        require_groups(raw, DatasetSpec(), "type_0", [], min_cells=25)


def test_tune_holds_out_a_small_group_as_fit_does(tmp_path) -> None:
    """tune keeps --holdout out of the study without scoring it, so a group of 10 cells a side is
    held out (it used benchmark's 20-cell minimum and then advised a --min-cells tune lacks)."""
    pytest.importorskip("optuna")
    path = tmp_path / "small.h5ad"
    simulate(n_genes=40, n_cells=10, seed=1).write_h5ad(path)
    result = runner.invoke(app, [
        "tune", str(path), "--model", "mean_shift", "--out", str(tmp_path / "t"), "--holdout", "type_0",
        "--trials", "1", "--n-hvg", "0",
    ])  # fmt: skip
    assert "--min-cells" not in result.output
    assert "tuning without the 10 held-out cells of type_0" in result.output


# ---------------------------------------------------------------- training settings, up front
@pytest.mark.parametrize(("value", "expected"), [("0", "max_epochs must be > 0, got 0"), ("-3", "max_epochs must be > 0, got -3")])
def test_fit_refuses_max_epochs_out_of_range_before_reading_data(tmp_path, value: str, expected: str) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(f"max_epochs: {value}\nhidden: [16]\n")
    absent = tmp_path / "not_read.h5ad"  # the data is never read: the error comes first
    result = runner.invoke(app, ["fit", str(absent), "--model", "mtae", "--out", str(tmp_path / "m"), "--params", str(params)])
    assert result.exit_code == 2, result.output
    assert expected in result.output and "reading" not in result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"max_epochs": 0}, "max_epochs must be > 0, got 0"),
        ({"max_epochs": "10"}, "max_epochs must be an integer, got '10'"),
        ({"batch_size": 32.5}, "batch_size must be an integer, got 32.5"),
        ({"weight_decay": float("nan")}, "weight_decay must be >= 0, got nan"),
        ({"lr": -1.0, "patience": 0}, "lr must be > 0, got -1.0; patience must be > 0, got 0"),
    ],
)
def test_training_settings_are_refused_with_their_name_and_range(settings: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(**settings)
    with pytest.raises(ConfigError, match="MultiTaskModel: Bad training settings"):
        get_model("mtae")(DatasetSpec(), **settings)


def test_a_family_hyperparameter_out_of_range_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="hidden needs at least one positive width"):
        get_model("mtae")(DatasetSpec(), hidden=[])


# ---------------------------------------------------------------- control characters in the report
@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("evil\u202eright", r"evil\u202eright"),
        ("a\x01b\x00c", r"a\x01b\x00c"),
        ("two\nlines\ttab", r"two\nlines\ttab"),
        ("tag\U000e0041", r"tag\U000e0041"),
        ("lone \ud800", r"lone \ud800"),
        ("CD4+ T cells é ü 中 \u00a0", "CD4+ T cells é ü 中 \u00a0"),  # printable text stays as written
    ],
)
def test_visible_escapes_hidden_characters_and_keeps_the_rest(text: str, shown: str) -> None:
    assert visible(text) == shown
    assert literal(f"${text}") == "\\$" + shown
    assert visible(shown) == shown  # escaping twice changes nothing


@pytest.fixture(scope="module")
def hostile_report(tmp_path_factory) -> dict[str, Path]:
    """A finished benchmark (control and mean shift) whose run files were then given a cell type
    and a model name holding control characters (as a hand-edited or foreign run store could;
    h5ad cannot even hold a NUL), and its report."""
    folder = tmp_path_factory.mktemp("hostile")
    adata = simulate(seed=3, n_cell_types=3, n_genes=60, n_cells=25)
    adata.write_h5ad(folder / "sim.h5ad")
    config = BenchmarkConfig(data=str(folder / "sim.h5ad"), models=("control", "mean_shift"), seeds=(1,), n_hvg=0, min_cells=10,
                             noise_ceiling_repeats=1)  # fmt: skip
    run_benchmark(config, folder / "bench")
    renamed = {"type_0": "T\u202eevil\x00", "control": "ctl\x01\u200b\u2028x\ny"}
    for path in (folder / "bench" / "runs").iterdir():
        table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
        for column in ("group", "model"):
            table[column] = table[column].astype(str).replace(renamed)
        table.to_parquet(path) if path.suffix == ".parquet" else table.to_csv(path, index=False)
    return write_report(folder / "bench", formats=("png",))


def test_report_html_and_summary_md_show_control_characters_as_escapes(hostile_report) -> None:
    html = hostile_report["html"].read_text(encoding="utf-8")
    summary = hostile_report["markdown"].read_text(encoding="utf-8")
    for text in (html, summary):
        hidden = sorted({f"U+{ord(c):04X}" for c in text if unicodedata.category(c) in {"Cc", "Cf", "Zl", "Zp"} and c != "\n"})
        assert hidden == [], hidden
    for escape in (r"T\u202eevil\x00", r"ctl\x01\u200b\u2028x\ny"):
        assert escape in html
        assert escape.replace("\\", "\\\\") in summary  # Markdown shows a backslash written twice as one
    for row in (line for line in summary.splitlines() if line.startswith("|")):  # no label broke a table row
        assert row.endswith("|"), row


# ---------------------------------------------------------------- counts no assay gives
def _with_count(value: float) -> ad.AnnData:
    raw = simulate(n_genes=40, n_cells=20, seed=1)
    counts = raw.X.toarray().astype(np.float64)
    counts[3, 7] = value
    raw.X = sp.csr_matrix(counts)
    return raw


def test_counts_beyond_any_assay_are_refused_naming_the_value_and_gene(tmp_path) -> None:
    raw = _with_count(1e9)
    with pytest.raises(DataError, match=r"gene 'gene_07' has 1e\+09 in one cell: above 1e\+07.*scaled or summed"):
        prepare(raw, DatasetSpec())
    with pytest.raises(DataError, match="gene_07"):
        log_normalize(raw.copy())
    path = tmp_path / "huge.h5ad"
    raw.write_h5ad(path)
    result = runner.invoke(app, ["fit", str(path), "--model", "mean_shift", "--out", str(tmp_path / "m")])
    assert result.exit_code == 2 and "1e+09" in result.output and "adata.layers['counts']" in result.output
    assert not (tmp_path / "m").exists()
    info = runner.invoke(app, ["data", "info", str(path)])
    assert info.exit_code == 0 and "warning:" in info.output and "1e+09" in info.output


def test_counts_as_large_as_a_deep_cell_holds_are_accepted() -> None:
    data = prepare(_with_count(COUNTS_MAX), DatasetSpec(), n_hvg=0)
    assert np.isfinite(data.X.toarray()).all()


# ---------------------------------------------------------------- seeds no generator takes
@pytest.mark.parametrize(
    "command",
    [
        ["data", "simulate", "--out", "{tmp}/s.h5ad"],
        ["fit", "{tmp}/s.h5ad", "--model", "mean_shift", "--out", "{tmp}/m"],
        ["demo", "--out", "{tmp}/d"],
        ["tune", "{tmp}/s.h5ad", "--model", "mtae", "--out", "{tmp}/t"],
    ],
)
@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_a_seed_no_generator_takes_is_refused_before_any_work(tmp_path, command, seed) -> None:
    """numpy takes seeds from 0 to 2**32 - 1; -1 used to end in numpy's 'expected non-negative
    integer' and mtpert's internal-error traceback, after the work had begun."""
    result = runner.invoke(app, [a.format(tmp=tmp_path) for a in command] + ["--seed", seed])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--seed'" in result.output and "Traceback" not in result.output
    assert not any(tmp_path.iterdir())  # nothing written, nothing read
