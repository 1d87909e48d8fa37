"""Every bad input and fault a user can cause, answered well: nothing lost, nothing stale, no
traceback. The reliability issue's list, case by case (each test failed before its fix):

Data loss and unsafe writes
    dotfiles under --out                 test_benchmark_into_an_existing_folder_leaves_the_users_...
    labels as folder names (.., T+x)     test_labels_are_safe_and_distinct_folder_names_inside_out
    truncated or corrupt run file        test_a_damaged_run_file_is_moved_aside_and_its_run_redone
    results reused for other data        test_results_are_not_reused_for_other_data_with_the_same_...
    report --models over the full one    test_faults_report: test_a_report_on_some_models_*
    provenance of every run              test_every_run_records_its_provenance_and_mixed_versions_...
Tracebacks that became clear errors (exit code 2)
    --out read-only, a file; truncated config.json
                                         test_a_read_only_out_is_refused, test_out_that_is_an_...,
                                         test_a_truncated_directory_file_is_a_clear_error
    config values of the wrong type, invalid YAML, python tags, holdout: [0]
                                         test_bad_config_files_are_clear_errors_before_any_run,
                                         test_config_lists_given_as_one_name_and_numeric_group_...
    evaluate on a bad file; its --out    test_evaluate_*
    checkpoints                          test_faults_checkpoint
    duplicate obs names                  test_duplicate_cell_names_..., test_faults_data
    `$` in a label                       test_faults_report: test_cell_types_conditions_and_genes_...
    demo --models ' , '                  test_demo_with_no_models_is_a_clear_error
Accepted silently before
    data logged twice                    test_data_logged_twice_is_refused_before_any_run, test_faults_data
    --min-cells 0                        test_min_cells_below_two_is_refused (here and in test_faults_data)
    duplicate models or seeds            test_duplicate_models_and_seeds_run_once_and_are_said
    duplicate genes in the prediction    test_evaluate_names_the_prediction_when_its_genes_are_duplicated
    hostile labels in summary.md         test_faults_report: test_summary_md_escapes_markup_and_pipes_...
Beyond the list: labels that look like console markup (`[/]` crashed `mtpert data info`), and
an internal error's traceback with a request for a bug report.

Benchmarks here run the two baselines on small simulated data with one seed: seconds each.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import mtpert
from mtpert.benchmark import BenchmarkConfig, expand, run_benchmark, write_report
from mtpert.benchmark import store as store_module
from mtpert.benchmark.store import PROVENANCE, ResultStore
from mtpert.cli import app
from mtpert.data import DatasetSpec, simulate
from mtpert.data.fingerprint import data_sha256
from mtpert.errors import ConfigError
from mtpert.io import TEMP_PREFIX

runner = CliRunner(env={"COLUMNS": "200"})
SPEC = DatasetSpec()


def simulated(seed: int = 1, cell_types: list[str] | None = None) -> ad.AnnData:
    """4 cell types x (control, stimulated) x 40 cells, 150 genes of raw counts; the cell types
    renamed to ``cell_types`` if given."""
    adata = simulate(seed=seed, n_cells=40, n_genes=150)
    if cell_types is not None:
        names = dict(zip(sorted(adata.obs["cell_type"].unique()), cell_types, strict=True))
        adata.obs["cell_type"] = adata.obs["cell_type"].map(names).astype(str)
    return adata


@pytest.fixture(scope="module")
def sim_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "sim.h5ad"
    simulated().write_h5ad(path)
    return path


def config(data: Path, **overrides) -> BenchmarkConfig:
    values = {"data": str(data), "models": ("control", "mean_shift"), "seeds": (1,), "n_hvg": 100, "noise_ceiling_repeats": 0}
    return BenchmarkConfig(**{**values, **overrides})


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path, with its bytes."""
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def cli(*args: str):
    """``mtpert ARGS`` in-process; a Python traceback in its output is a failure in itself."""
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result


def values(results: pd.DataFrame) -> pd.Series:
    return results.set_index(["run_id", "group", "condition", "metric"])["value"].sort_index()


# ============================================================================ data loss, unsafe writes
def test_benchmark_into_an_existing_folder_leaves_the_users_files_byte_identical(sim_path, tmp_path) -> None:
    out = tmp_path / "project"
    for name, text in {".env": "SECRET=1", ".gitignore": "*.h5ad", "src/.config": "x", "notes.md": "mine", "runs/.keep": ""}.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    before = snapshot(out)
    (out / "runs" / f"{TEMP_PREFIX}abc.parquet.x1").write_bytes(b"half a result")  # what a killed run leaves
    run_benchmark(config(sim_path, holdout=("type_0",)), out)
    after = snapshot(out)
    assert {k: after.get(k) for k in before} == before  # every file of the user's, byte for byte
    assert not [p for p in out.rglob(f"{TEMP_PREFIX}*")]  # the store's own stale temporary file is gone


def test_labels_are_safe_and_distinct_folder_names_inside_out(tmp_path) -> None:
    hostile = ["..", "T+x", "T_x", "../../escape"]
    data = tmp_path / "data" / "hostile.h5ad"
    data.parent.mkdir()
    simulated(cell_types=hostile).write_h5ad(data)
    out = tmp_path / "work" / "out"
    store = run_benchmark(config(data, save_predictions="all"), out)
    outside = {p for p in tmp_path.rglob("*") if p.is_file()} - {p for p in out.rglob("*")} - {data}
    assert not outside  # nothing written beside or above --out
    for label in hostile:  # each group's kept cells are its own, read back under its own label
        control, truth, preds = store.predictions(label, "stimulated")
        assert set(control.obs["cell_type"]) == set(truth.obs["cell_type"]) == {label}
        assert {m for m, _ in preds} == {"control", "mean_shift"}
        assert all(set(p.obs["cell_type"]) == {label} for p in preds.values())
    folders = {p.name for p in (out / "predictions").iterdir()}
    assert len(folders) == len(hostile) and not any(f.startswith(".") for f in folders)


def test_labels_that_look_like_console_markup_are_printed_as_written(tmp_path) -> None:
    hostile = ["[/]", "[bold]x", "T[x]", "$y$"]
    data = tmp_path / "markup.h5ad"
    simulated(cell_types=hostile).write_h5ad(data)
    info = cli("data", "info", str(data))
    assert info.exit_code == 0 and all(label in info.output for label in hostile)
    result = cli("benchmark", "--data", str(data), "--models", "control", "--seeds", "1", "--n-hvg", "100", "--out", str(tmp_path / "out"), "--no-report")
    assert result.exit_code == 0 and all(label in result.output for label in hostile[:2])  # the live table's last rows


@pytest.mark.parametrize(
    ("suffix", "damage"),
    [(".parquet", "truncated"), (".parquet", "garbage"), (".csv", "truncated"), (".csv", "garbage"), (".csv", "cut at a line")],
)
def test_a_damaged_run_file_is_moved_aside_and_its_run_redone(sim_path, tmp_path, monkeypatch, suffix, damage) -> None:
    if suffix == ".csv":  # the store writes CSV where pyarrow is missing
        monkeypatch.setattr(store_module, "find_spec", lambda name: None)
    settings = config(sim_path, holdout=("type_0", "type_1"))
    clean = run_benchmark(settings, tmp_path / "clean").results()
    out = tmp_path / "out"
    run_benchmark(settings, out)
    victim = min((out / "runs").iterdir())
    data = victim.read_bytes()
    broken = {"truncated": data[: len(data) // 2], "garbage": b"\x00\x13not a table" * 10,
              "cut at a line": data[: data.rfind(b"\n", 0, len(data) - 1) + 1]}[damage]  # fmt: skip
    victim.write_bytes(broken)
    # the report leaves it out, with a warning, instead of crashing
    assert write_report(out, formats=("png",))["markdown"].is_file()
    plans = []
    store = run_benchmark(settings, out, on_plan=plans.append)
    assert plans[0].n_done == 3 and [r.run.id for r in plans[0].todo] == [victim.stem]
    (moved, problem), = store.quarantined
    assert moved.parent == out / "quarantine" and moved.read_bytes() == broken and problem
    pd.testing.assert_series_equal(values(store.results()), values(clean))


def test_results_are_not_reused_for_other_data_with_the_same_file_name(tmp_path) -> None:
    first, second = tmp_path / "a" / "sim.h5ad", tmp_path / "b" / "sim.h5ad"
    for path, seed in ((first, 1), (second, 2)):
        path.parent.mkdir()
        simulated(seed).write_h5ad(path)
    out = tmp_path / "out"
    run_benchmark(config(first, holdout=("type_0",)), out)
    with pytest.raises(ConfigError, match=r"other content") as error:
        run_benchmark(config(second, holdout=("type_0",)), out)
    assert str(first) in str(error.value) and str(second) in str(error.value)
    result = cli("benchmark", "--data", str(second), "--models", "control", "--seeds", "1", "--holdout", "type_0", "--out", str(out))
    assert result.exit_code == 2 and "other content" in result.output
    for file in ("config.json", "environment.json"):  # the runs themselves record their data
        (out / file).unlink()
    with pytest.raises(ConfigError, match=r"holds runs made from other data"):
        run_benchmark(config(second, holdout=("type_0",)), out)
    # the same content under another name and path is the same data
    copy = tmp_path / "c" / "sim.h5ad"
    copy.parent.mkdir()
    shutil.copy(first, copy)
    plans = []
    run_benchmark(config(copy, holdout=("type_0",)), out, on_plan=plans.append)
    assert not plans[0].todo and plans[0].n_done == 2


def test_every_run_records_its_provenance_and_mixed_versions_are_said(sim_path, tmp_path, monkeypatch, caplog) -> None:
    out = tmp_path / "out"
    run_benchmark(config(sim_path, holdout=("type_0",)), out)
    monkeypatch.setattr(mtpert, "__version__", "9.9.9")
    with caplog.at_level(logging.WARNING, logger="mtpert.benchmark"):
        store = run_benchmark(config(sim_path, holdout=("type_0", "type_1")), out)
    assert "9.9.9" in caplog.text and "holds runs made by mtpert" in caplog.text
    results = store.results()
    environments = json.loads((out / "environment.json").read_text())
    assert environments[0]["mtpert"] != "9.9.9" and environments[1]["mtpert"] == "9.9.9"
    versions = results.drop_duplicates("run_id").groupby("group")["mtpert_version"].unique()
    assert list(versions["type_0"]) == [environments[0]["mtpert"]] and list(versions["type_1"]) == ["9.9.9"]
    assert set(results["data_sha256"]) == {data_sha256(ad.read_h5ad(sim_path))} == {e["data_sha256"] for e in environments}
    assert set(results["invocation"]) == {e["invocation"] for e in environments}
    assert results[list(PROVENANCE)].notna().all().all()


# ============================================================================ clear errors, exit code 2
def test_out_that_is_an_existing_file_is_refused(sim_path, tmp_path) -> None:
    out = tmp_path / "results.txt"
    out.write_text("my notes")
    result = cli("benchmark", "--data", str(sim_path), "--models", "control", "--seeds", "1", "--out", str(out))
    assert result.exit_code == 2 and "existing file" in result.output
    assert out.read_text() == "my notes"


@pytest.fixture
def public_tmp() -> Path:
    """A temporary folder any user can enter (pytest's own are private to their user)."""
    folder = Path(tempfile.mkdtemp(prefix="mtpert-test-"))
    folder.chmod(0o777)
    yield folder
    for path in folder.rglob("*"):
        if path.is_dir():
            path.chmod(0o755)
    shutil.rmtree(folder)


@pytest.mark.subprocess
def test_a_read_only_out_is_refused(public_tmp) -> None:
    """Run as an unprivileged user: root may write anywhere."""
    command = [sys.executable, "-c", "from mtpert.cli import app; app()"]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root and setpriv (util-linux) is missing: cannot drop to a user a read-only folder stops")
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    data = public_tmp / "sim.h5ad"
    simulated().write_h5ad(data)
    data.chmod(0o644)
    out = public_tmp / "readonly"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    out.chmod(0o555)
    caches = {"HOME": "home", "MPLCONFIGDIR": "mpl", "NUMBA_CACHE_DIR": "numba"}  # folders that user may write
    for name in caches.values():
        (public_tmp / name).mkdir(mode=0o777)
        (public_tmp / name).chmod(0o777)
    env = {**os.environ, **{k: str(public_tmp / v) for k, v in caches.items()}}
    result = subprocess.run([*command, "benchmark", "--data", str(data), "--models", "control", "--seeds", "1", "--out", str(out)],
                            check=False, capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Cannot write to --out" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


@pytest.mark.parametrize("file", ["config.json", "environment.json"])
def test_a_truncated_directory_file_is_a_clear_error(sim_path, tmp_path, file) -> None:
    out = tmp_path / "out"
    run_benchmark(config(sim_path, holdout=("type_0",)), out)
    path = out / file
    text = path.read_bytes()
    path.write_bytes(text[: len(text) // 2])
    runs = snapshot(out / "runs")
    result = cli("benchmark", "--data", str(sim_path), "--models", "control,mean_shift", "--seeds", "1", "--holdout", "type_0",
                 "--n-hvg", "100", "--out", str(out))  # fmt: skip
    assert result.exit_code == 2 and file in result.output and "truncated" in result.output
    assert snapshot(out / "runs") == runs and path.read_bytes() == text[: len(text) // 2]


@pytest.mark.parametrize(
    ("yaml", "expected"),
    [
        ("seeds: abc", "seeds[0]: 'abc' is not valid: Input should be a valid integer"),
        ("n_hvg: many", "n_hvg: 'many' is not valid: Input should be a valid integer"),
        ("min_cells: 0", "min_cells: 0 is not valid: Input should be greater than or equal to 2"),
        ("holdout: 5", "Held-out target(s) ['5'] not in obs['cell_type']"),
        ("split: sideways", "split: 'sideways' is not valid: Input should be 'group', 'condition' or 'combination'"),
        ("save_predictions: 3", "save_predictions: 3 is not valid"),
        ("spec: {cell_type: ct}", "spec.cell_type: 'ct' is not valid"),
        ("model_params: {mean_shift: {}}\nmodels: [mtae]", "model_params names models not in the benchmark: ['mean_shift']"),
        ("models: [mtae]\nmodel_params: {mtae: {max_epochs: ten}}", "model_params.mtae.max_epochs: 'ten' is not valid (Input should be a valid integer"),
        ("models: [mtae]\nmodel_params: {mtae: {epochs: 3}}", "model_params.mtae.epochs: not a parameter of 'mtae'"),
        ("models: [control, mean_shift", "Cannot read"),
        ("models: !!python/object/apply:os.system ['touch PWNED']", "Cannot read"),
        ("- a list", "must hold a mapping of settings"),
        ("{}", "Missing benchmark setting(s) ['data', 'models']"),
    ],
)
def test_bad_config_files_are_clear_errors_before_any_run(sim_path, tmp_path, yaml, expected) -> None:
    file = tmp_path / "bench.yaml"
    valid = f"data: {sim_path}\nmodels: [control]\nseeds: [1]\n"  # the case's keys come later and win
    file.write_text(yaml if yaml.startswith(("- ", "{")) else valid + yaml)
    out = tmp_path / "out"
    result = cli("benchmark", "--config", str(file), "--out", str(out), "--no-report")
    assert result.exit_code == 2, result.output
    assert expected in " ".join(result.output.split()), result.output
    assert not (out / "runs").exists() or not any((out / "runs").iterdir())
    assert not Path("PWNED").exists()


def test_config_lists_given_as_one_name_and_numeric_group_names_work(tmp_path) -> None:
    data = tmp_path / "numbered.h5ad"
    simulated(cell_types=["0", "1", "2", "3"]).write_h5ad(data)
    file = tmp_path / "bench.yaml"
    file.write_text(f"data: {data}\nmodels: mean_shift\nholdout: [0]\nseeds: 3\nn_hvg: 100\nnoise_ceiling_repeats: 0\n")
    result = cli("benchmark", "--config", str(file), "--out", str(tmp_path / "out"), "--no-report")
    assert result.exit_code == 0, result.output
    runs = ResultStore(tmp_path / "out").results().drop_duplicates("run_id")
    assert runs[["group", "model", "seed"]].astype(str).values.tolist() == [["0", "mean_shift", "3"]]


def test_data_logged_twice_is_refused_before_any_run(tmp_path) -> None:
    from mtpert.data import log_normalize

    adata = simulated()
    log_normalize(adata)
    adata.X.data = np.log1p(adata.X.data)
    data = tmp_path / "twice.h5ad"
    adata.write_h5ad(data)
    result = cli("benchmark", "--data", str(data), "--models", "control", "--seeds", "1", "--out", str(tmp_path / "out"))
    assert result.exit_code == 2 and "log-transformed twice" in result.output
    assert not (tmp_path / "out").exists()


def test_duplicate_models_and_seeds_run_once_and_are_said(sim_path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="mtpert.benchmark"):
        settings = config(sim_path, models=("control", "mean_shift", "control"), seeds=(1, 2, 1))
    assert settings.models == ("control", "mean_shift") and settings.seeds == (1, 2)
    assert "['control'] more than once" in caplog.text and "[1] more than once" in caplog.text
    runs = expand(settings, ad.read_h5ad(sim_path)).runs
    assert len({r.id for r in runs}) == len(runs) == 4 * 2 * 2


@pytest.mark.parametrize("min_cells", ["0", "1"])
def test_min_cells_below_two_is_refused(sim_path, tmp_path, min_cells) -> None:
    result = cli("benchmark", "--data", str(sim_path), "--models", "control", "--min-cells", min_cells, "--out", str(tmp_path / "out"))
    assert result.exit_code == 2 and "min_cells" in result.output and "greater than or equal to 2" in result.output


def test_duplicate_cell_names_are_refused_up_front_with_the_fix(tmp_path) -> None:
    adata = simulated()
    adata.obs_names = [f"cell{i % 50}" for i in range(adata.n_obs)]
    data = tmp_path / "dupes.h5ad"
    adata.write_h5ad(data)
    result = cli("benchmark", "--data", str(data), "--models", "control", "--seeds", "1", "--out", str(tmp_path / "out"))
    assert result.exit_code == 2 and "obs_names_make_unique" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("models", [" , ", ",", ""])
def test_demo_with_no_models_is_a_clear_error(tmp_path, models) -> None:
    result = cli("demo", "--models", models, "--out", str(tmp_path / "demo"))
    assert result.exit_code == 2 and "No models given" in result.output
    assert not (tmp_path / "demo").exists()


# ---------------------------------------------------------------------------- mtpert evaluate
@pytest.fixture(scope="module")
def scored_files(tmp_path_factory) -> tuple[Path, Path]:
    """A truth file (raw counts) and a prediction file of it (mean shift, type_0 held out)."""
    from mtpert.data import holdout_group, prepare
    from mtpert.models import get_model

    folder = tmp_path_factory.mktemp("evaluate")
    adata = simulated()
    data = prepare(adata, SPEC, n_hvg=0)
    split = holdout_group(data, SPEC, "type_0")
    target = split.targets[0]
    pred = get_model("mean_shift")(SPEC).fit(split.subset(data, "train")).predict(data[target.control], target.condition)
    truth_path, pred_path = folder / "truth.h5ad", folder / "pred.h5ad"
    adata.write_h5ad(truth_path)
    pred.write_h5ad(pred_path)
    return truth_path, pred_path


@pytest.mark.parametrize("damage", ["truncated", "text", "other hdf5"])
def test_evaluate_on_a_file_that_is_not_an_h5ad_is_a_clear_error(scored_files, tmp_path, damage) -> None:
    truth, pred = scored_files
    bad = tmp_path / "bad.h5ad"
    if damage == "truncated":
        bad.write_bytes(pred.read_bytes()[:2000])
    elif damage == "text":
        bad.write_text("cell,gene\n1,2\n")
    else:
        import h5py

        with h5py.File(bad, "w") as f:
            f.create_dataset("x", data=[1, 2])
    result = cli("evaluate", str(truth), str(bad), "--out", str(tmp_path / "scores.csv"))
    assert result.exit_code == 2 and "as an .h5ad file" in result.output and "bad.h5ad" in result.output


@pytest.mark.parametrize("out", ["scores.txt", "folder"])
def test_evaluate_checks_its_output_before_scoring(scored_files, tmp_path, monkeypatch, out) -> None:
    import mtpert.metrics

    def never(*args, **kwargs):
        raise AssertionError("scored before checking --out")

    monkeypatch.setattr(mtpert.metrics, "evaluate_prediction", never)
    (tmp_path / "folder").mkdir()
    result = cli("evaluate", *map(str, scored_files), "--out", str(tmp_path / out))
    assert result.exit_code == 2 and (".csv or .parquet" in result.output)


def test_evaluate_names_the_prediction_when_its_genes_are_duplicated(scored_files, tmp_path) -> None:
    truth, pred = scored_files
    adata = ad.read_h5ad(pred)
    adata.var_names = [adata.var_names[0], *adata.var_names[:-1]]
    dupes = tmp_path / "pred_dupes.h5ad"
    adata.write_h5ad(dupes)
    result = cli("evaluate", str(truth), str(dupes), "--out", str(tmp_path / "scores.csv"))
    assert result.exit_code == 2 and "pred_dupes.h5ad has duplicate gene names" in " ".join(result.output.split())
    assert str(truth) not in result.output


# ---------------------------------------------------------------------------- internal errors
def test_an_internal_error_shows_its_traceback_and_asks_for_a_bug_report(sim_path, tmp_path, monkeypatch) -> None:
    import mtpert.benchmark

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(mtpert.benchmark, "run_benchmark", broken)
    result = runner.invoke(app, ["benchmark", "--data", str(sim_path), "--models", "control", "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "ZeroDivisionError" in result.output and "Traceback" in result.output and "this is a bug" in result.output


def _children(pid: int) -> set[int]:
    """Ids of the live processes whose parent is ``pid`` (read from Linux's /proc)."""
    found = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:  # the process ended while we looked
            continue
        if fields.get("PPid", "").strip() == str(pid) and not fields.get("State", "").strip().startswith("Z"):
            found.add(int(status.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in state


@pytest.mark.subprocess
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads process parents from /proc (Linux)")
def test_the_workers_of_a_killed_benchmark_exit(sim_path, tmp_path) -> None:
    """SIGKILL (or SIGTERM) runs no clean-up in `mtpert benchmark --jobs 2`; its worker processes
    notice their parent is gone and exit instead of computing runs nobody will save."""
    command = [sys.executable, "-c", "from mtpert.cli import app; app()", "benchmark", "--data", str(sim_path),
               "--models", "mtae", "--seeds", "1,2,3,4", "--out", str(tmp_path / "out"), "--jobs", "2"]  # fmt: skip
    parent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not list((tmp_path / "out").glob("runs/*")) and parent.poll() is None:
            workers = _children(parent.pid)
            time.sleep(0.5)
        assert parent.poll() is None, "the benchmark ended before it could be killed"
        assert len(workers) >= 2  # the pool's workers (and the board's manager)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.5)
    assert not [pid for pid in workers if _alive(pid)]
