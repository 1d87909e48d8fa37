"""The benchmark harness on simulated data: stable grid, resume, atomic results, executors, report.

Runs use the two baselines and a tiny multi-task network on one torch thread, so the whole file
takes seconds of compute; Ray and the headless-browser check skip when those are not installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mtpert.benchmark import BenchmarkConfig, expand, run_benchmark, write_report
from mtpert.benchmark import store as store_module
from mtpert.benchmark.executors import LocalExecutor
from mtpert.benchmark.grid import NOISE_CEILING
from mtpert.benchmark.report import headline
from mtpert.benchmark.store import ResultStore
from mtpert.benchmark.verdict import paired_verdict
from mtpert.cli import app
from mtpert.data import DatasetSpec, simulate
from mtpert.errors import ConfigError

TINY_MTAE = {"hidden": [16], "latent_dim": 4, "max_epochs": 2, "num_threads": 1}
runner = CliRunner(env={"COLUMNS": "200"})
SPEC = DatasetSpec()


@pytest.fixture(scope="module")
def sim_path(tmp_path_factory) -> Path:
    """Simulated counts, 4 cell types x (control, stimulated) x 40 cells, 150 genes, on disk."""
    path = tmp_path_factory.mktemp("data") / "sim.h5ad"
    simulate(seed=1, n_cells=40, n_genes=150).write_h5ad(path)
    return path


def config(data: Path, **overrides) -> BenchmarkConfig:
    values = {"data": str(data), "models": ("control", "mean_shift"), "seeds": (1,), "n_hvg": 100, "noise_ceiling_repeats": 2}
    return BenchmarkConfig(**{**values, **overrides})


def values(results: pd.DataFrame) -> pd.Series:
    """Metric values by (run, target, metric), for comparing two runs of the same grid."""
    return results.set_index(["run_id", "group", "condition", "metric"])["value"].sort_index()


# ---------------------------------------------------------------------------- grid
def test_run_ids_are_stable_distinct_and_follow_what_decides_a_result(sim_path, tmp_path) -> None:
    adata = simulate(seed=1, n_cells=40, n_genes=150)
    grid = expand(config(sim_path, models=("control", "mtae"), seeds=(1, 2), model_params={"mtae": TINY_MTAE}), adata)
    ids = [r.id for r in grid.runs]
    assert len(ids) == len(set(ids)) == 4 * 3 * 2  # groups x (2 models + noise ceiling) x seeds
    # the same settings from a JSON file (lists, not tuples) and the data moved elsewhere: same ids
    moved = tmp_path / "elsewhere" / sim_path.name
    moved.parent.mkdir()
    shutil.copy(sim_path, moved)
    file = tmp_path / "bench.json"
    file.write_text(json.dumps({"data": str(moved), "models": ["control", "mtae"], "seeds": [1, 2], "n_hvg": 100,
                                "noise_ceiling_repeats": 2, "model_params": {"mtae": {**TINY_MTAE, "hidden": [16]}}}))
    assert [r.id for r in expand(BenchmarkConfig.from_file(file), adata).runs] == ids
    # another hyperparameter changes the mtae runs' ids and no other
    other = expand(config(sim_path, models=("control", "mtae"), seeds=(1, 2), model_params={"mtae": {**TINY_MTAE, "latent_dim": 8}}), adata)
    changed = {r.model for r, new in zip(grid.runs, other.runs, strict=True) if r.id != new.id}
    assert changed == {"mtae"}


def test_run_ids_of_existing_results_survive_new_fields() -> None:
    """The committed Kang grid (benchmarks/results/kang_grid) is resumed by run id: fields added
    to RunSpec or DatasetSpec since must not change the id of a run that does not use them."""
    from mtpert.benchmark import RunSpec

    preparation = '{"hvg_on_all_cells":false,"min_cells":20,"n_hvg":2000}'
    run = RunSpec("kang2018_pbmc_ifnb_2k.h5ad", DatasetSpec(), preparation, "group", "B", "control", 1, "{}")
    assert run.id == "21fee1e29dfb0a77"  # its run in benchmarks/kang_grid/runs.parquet (packed runs/)
    packed = Path(__file__).parents[1] / "benchmarks/kang_grid/runs.parquet"
    assert run.id in set(pd.read_parquet(packed, columns=["run_id"])["run_id"])
    assert RunSpec(**{**run.__dict__, "spec": DatasetSpec(combination_separator="+")}).id != run.id


def test_groups_too_small_to_score_are_skipped_with_the_reason(sim_path) -> None:
    adata = simulate(seed=1, n_cells=40, n_genes=150)
    spec = DatasetSpec()
    small = (adata.obs["cell_type"] == "type_2").to_numpy() & ~spec.is_control(adata)
    adata = adata[~small | (np.cumsum(small) <= 5)].copy()  # type_2 keeps 5 stimulated cells
    grid = expand(config(sim_path), adata)
    assert "type_2" not in {r.target for r in grid.runs}
    assert grid.skipped.loc["type_2", "reason"] == "5 perturbed cells < 20"
    with pytest.raises(ConfigError, match="not in obs"):
        expand(config(sim_path, holdout=("type_9",)), adata)


def test_named_variants_of_one_model_run_and_are_reported_under_their_names(sim_path, tmp_path) -> None:
    models = {"mtae": TINY_MTAE, "mtae_decoded": {"model": "mtae", "prediction": "decoded", **TINY_MTAE}}
    settings = BenchmarkConfig.from_dict({"data": str(sim_path), "models": models, "holdout": ["type_0"], "seeds": [1],
                                          "n_hvg": 100, "noise_ceiling_repeats": 0, "save_predictions": "all"})  # fmt: skip
    assert settings.models == ("mtae", "mtae_decoded") and dict(settings.variants) == {"mtae_decoded": "mtae"}
    store = run_benchmark(settings, tmp_path)
    results = store.results()
    assert set(results["model"]) == {"mtae", "mtae_decoded"} and results["run_id"].nunique() == 2
    _, _, preds = store.predictions("type_0", "stimulated")
    residual, decoded = preds["mtae", 1].X, preds["mtae_decoded", 1].X
    assert not np.allclose(residual, decoded)  # the setting took effect
    assert ResultStore(tmp_path).config().variants == {"mtae_decoded": "mtae"}  # kept for resuming
    summary = write_report(tmp_path, formats=("png",))["markdown"].read_text()
    assert "| mtae_decoded " in summary
    with pytest.raises(ConfigError, match="registered model of mtae_decoded"):  # one name, one setting per directory
        run_benchmark(BenchmarkConfig.from_dict({**settings.to_dict(), "variants": {"mtae_decoded": "mtvae"}}), tmp_path)


# ---------------------------------------------------------------------------- store
def test_resume_skips_finished_runs_and_extends_the_grid(sim_path, tmp_path) -> None:
    first = run_benchmark(config(sim_path, holdout=("type_0", "type_1")), tmp_path)
    files = {f.name: f.stat().st_mtime_ns for f in first.runs.iterdir()}
    assert len(files) == 2 * 3
    plans = []
    run_benchmark(config(sim_path, holdout=("type_0", "type_1")), tmp_path, on_plan=plans.append)
    assert len(plans[0].todo) == 0 and plans[0].n_done == 6
    assert {f.name: f.stat().st_mtime_ns for f in first.runs.iterdir()} == files  # nothing rewritten
    run_benchmark(config(sim_path, holdout=("type_0", "type_1"), seeds=(2,)), tmp_path, on_plan=plans.append)
    assert len(plans[1].todo) == 6  # only the new seed ran
    saved = ResultStore(tmp_path).config()
    assert saved.seeds == (1, 2) and saved.holdout == ("type_0", "type_1")
    environments = json.loads((tmp_path / "environment.json").read_text())
    assert len(environments) == 3 and "torch" in environments[0]["packages"]
    with pytest.raises(ConfigError, match="n_hvg"):  # incomparable settings in one directory
        run_benchmark(config(sim_path, n_hvg=50), tmp_path)


def test_a_run_killed_while_writing_leaves_nothing_and_the_rerun_completes(sim_path, tmp_path, monkeypatch) -> None:
    settings = config(sim_path, holdout=("type_0",))
    written = []

    def dies_midway(table, target):  # writes part of the second run's file, then the process "is killed"
        if Path(target).parent.name != "runs":
            return original(table, target)
        if len(written) == 1:
            store_module.atomic_write(target, lambda f: (f.write(b"run_id,metric\n"), _raise(KeyboardInterrupt())))
        written.append(target)
        return original(table, target)

    original = store_module.write_table
    monkeypatch.setattr(store_module, "write_table", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(settings, tmp_path)
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [written[0].name]  # no partial, no temp file
    monkeypatch.undo()
    plans = []
    store = run_benchmark(settings, tmp_path, on_plan=plans.append)
    assert len(plans[0].todo) == 2
    clean = run_benchmark(settings, tmp_path / "clean")
    pd.testing.assert_series_equal(values(store.results()), values(clean.results()))


def _raise(error: BaseException) -> None:
    raise error


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_benchmark_killed_with_sigkill_resumes_where_it_stopped(sim_path, tmp_path) -> None:
    """The real thing: ``kill -9`` of the command and its workers mid-grid, as when a job is
    preempted, then the same command. Nothing finished is lost or redone, nothing partial is read."""
    file = tmp_path / "bench.yaml"
    slow_mtae = {**TINY_MTAE, "hidden": [256], "max_epochs": 60}  # a second or so per run
    file.write_text(json.dumps({"data": str(sim_path), "models": ["control", "mean_shift", "mtae"], "seeds": [1],
                                "n_hvg": 100, "noise_ceiling_repeats": 2, "model_params": {"mtae": slow_mtae}}))  # fmt: skip
    out, runs = tmp_path / "out", tmp_path / "out" / "runs"
    command = [sys.executable, "-c", "from mtpert.cli import app; app()", "benchmark", "--config", str(file), "--out", str(out)]
    process = subprocess.Popen([*command, "--jobs", "2", "--no-report"], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (runs.is_dir() and any(runs.glob("[!.]*"))) and process.poll() is None and time.monotonic() < deadline:  # a finished run, not a temporary file
        time.sleep(0.02)
    assert process.poll() is None, process.stderr.read().decode()  # still running: the kill lands mid-grid
    os.killpg(process.pid, signal.SIGKILL)  # the command and its worker processes
    process.wait()
    done = ResultStore(out).results()["run_id"].nunique()  # reads every result on disk: none is partial
    total = 16  # 4 held-out types x (3 models + noise ceiling) x 1 seed
    assert 1 <= done < total
    resumed = runner.invoke(app, ["benchmark", "--config", str(file), "--out", str(out), "--no-report"])
    assert resumed.exit_code == 0, resumed.output
    assert f"{done} already done, {total - done} to run" in resumed.output
    assert not [p for p in out.rglob(".*") if p.is_file() and p.name != ".lock"]  # no temporary file left
    clean = runner.invoke(app, ["benchmark", "--config", str(file), "--out", str(tmp_path / "clean"), "--no-report"])
    assert clean.exit_code == 0, clean.output
    pd.testing.assert_series_equal(values(ResultStore(out).results()), values(ResultStore(tmp_path / "clean").results()))


# ---------------------------------------------------------------------------- executors
def test_run_holdout_is_the_benchmark_engine_in_memory(sim_path, tmp_path, monkeypatch) -> None:
    from mtpert.benchmark import Holdout, make_fold, run_holdout
    from mtpert.benchmark.executors import _prepared

    monkeypatch.chdir(tmp_path)
    adata = ad.read_h5ad(sim_path)
    seen = []
    in_memory = run_holdout(adata, SPEC, ["control", "mean_shift"], groups=["type_0", "type_2"], seeds=(1,), n_hvg=100, on_prediction=seen.append)
    assert not list(tmp_path.iterdir())  # nothing written
    assert {(p.target.group, p.model) for p in seen} == {(g, m) for g in ("type_0", "type_2") for m in ("control", "mean_shift")}
    on_disk = run_benchmark(config(sim_path, holdout=("type_0", "type_2"), noise_ceiling_repeats=0), tmp_path / "out").results()
    by_target = lambda r: r.set_index(["group", "condition", "model", "seed", "metric"])["value"].sort_index()
    pd.testing.assert_series_equal(by_target(in_memory), by_target(on_disk))
    # the one fold helper gives the fold every run uses
    fold = make_fold(adata, SPEC, "type_0", seed=1, n_hvg=100)
    prepared = _prepared(str(sim_path), SPEC, Holdout("type_0"), 100, False, 20)
    assert fold.data.var_names.equals(prepared.var_names) and np.array_equal(fold.data.X.toarray(), prepared.X.toarray())
    with pytest.raises(ConfigError, match="only be run in this process"):
        run_benchmark(config(sim_path), tmp_path / "x", adata=adata, executor=LocalExecutor(jobs=2))
    from mtpert.models.simple import ControlPredictor

    monkeypatch.setattr(ControlPredictor, "_fit", lambda self, train, val: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # a run's error reaches the caller as itself
        run_holdout(adata, SPEC, ["control"], groups=["type_0"], seeds=(1,), n_hvg=100)


@pytest.mark.slow
def test_two_local_jobs_give_the_same_results_as_one(sim_path, tmp_path) -> None:
    settings = config(sim_path, holdout=("type_0",), models=("mean_shift", "mtae"), model_params={"mtae": TINY_MTAE}, noise_ceiling_repeats=0)
    serial = run_benchmark(settings, tmp_path / "serial").results()
    parallel = run_benchmark(settings, tmp_path / "parallel", executor=LocalExecutor(jobs=2)).results()
    pd.testing.assert_series_equal(values(serial), values(parallel))
    assert (parallel.drop_duplicates("run_id")["torch_threads"] >= 1).all()


class _Recording(dict):
    """A board that remembers every status posted on it."""

    def __init__(self) -> None:
        super().__init__()
        self.posted: list[str] = []

    def __setitem__(self, key: str, value: str) -> None:
        self.posted.append(value)
        super().__setitem__(key, value)


def test_running_runs_post_their_epochs_on_the_executors_board(sim_path, tmp_path) -> None:
    settings = config(sim_path, holdout=("type_0",), models=("mean_shift", "mtae"), model_params={"mtae": TINY_MTAE}, noise_ceiling_repeats=0)
    executor = LocalExecutor(jobs=1)
    executor.board = board = _Recording()
    run_benchmark(settings, tmp_path / "serial", executor=executor)
    assert board.posted.count("running") == 2 and "epoch 1/2" in board.posted and "epoch 2/2" in board.posted
    assert not board  # finished runs leave the board
    # in worker processes, the board is shared: a watcher sees the fits' epochs while they run
    slow = {**TINY_MTAE, "hidden": [128], "max_epochs": 40, "patience": 40}
    executor, seen, stop = LocalExecutor(jobs=2), set(), threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.update(executor.board.copy().values())
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        run_benchmark(config(sim_path, holdout=("type_0",), models=("mtae",), model_params={"mtae": slow}, seeds=(1, 2), noise_ceiling_repeats=0),
                      tmp_path / "parallel", executor=executor)  # fmt: skip
    finally:
        stop.set()
        watcher.join()
    assert any(status.startswith("epoch ") and status.endswith("/40") for status in seen), seen
    assert executor.board == {}


@pytest.mark.slow
@pytest.mark.ray
def test_ray_executor_runs_the_grid_on_a_cluster_of_two_nodes_as_locally(sim_path, tmp_path) -> None:
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'mtpert[ray]'")
    from ray.cluster_utils import Cluster

    from mtpert.benchmark.executors import RayExecutor

    settings = config(sim_path, holdout=("type_1",))
    # a head that runs nothing and two worker nodes (each its own raylet process) of one CPU:
    # every run must be shipped to a worker node, as on a real cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        executor = RayExecutor()
        assert executor.jobs == 2
        on_ray = run_benchmark(settings, tmp_path / "ray", executor=executor).results()
        workers = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU")]
        assert len(workers) == 2
    finally:
        ray.shutdown()
        cluster.shutdown()
    local = run_benchmark(settings, tmp_path / "local").results()
    assert len(on_ray) == len(local) > 1
    pd.testing.assert_series_equal(values(on_ray), values(local))


def test_time_left_comes_from_the_durations_of_each_models_finished_runs() -> None:
    from mtpert.benchmark.progress import Eta

    eta = Eta(["mean_shift"] * 4 + ["mtae"] * 2, jobs=2, earlier={"mean_shift": [1.0, 3.0]})
    assert eta.unknown() == ["mtae"] and eta.text() == ">= 0:00:04 (no mtae run timed yet)"  # 4 x 2 s on 2 jobs
    eta.finished("mtae", 300.0)
    assert eta.unknown() == [] and eta.seconds() == (4 * 2.0 + 1 * 300.0) / 2 and eta.text() == "0:02:34"
    eta.failed("mean_shift")
    eta.finished("mtae", 100.0)  # the last mtae run: only mean shift is left, timed by 2 s a run
    assert eta.seconds() == 3 * 2.0 / 2


# ---------------------------------------------------------------------------- report
@pytest.fixture(scope="module")
def finished(sim_path, tmp_path_factory) -> Path:
    """A finished benchmark with its report: baselines and a tiny mtae, 2 groups x 2 seeds."""
    out = tmp_path_factory.mktemp("bench")
    models = ("mtae", "mean_shift", "control")  # not alphabetical: the report keeps this order
    settings = config(sim_path, holdout=("type_0", "type_2"), seeds=(1, 2), models=models, model_params={"mtae": TINY_MTAE})
    run_benchmark(settings, out)
    write_report(out, formats=("png",))
    return out


def test_report_tables_say_what_the_results_say(finished) -> None:
    results = ResultStore(finished).results()
    mean, spread = headline(results)
    r2 = results[results["metric"] == "r2_top100"]
    assert mean.loc["mtae", "r2_top100"] == pytest.approx(r2[r2["model"] == "mtae"]["value"].mean())
    per_seed = r2[r2["model"] == "mean_shift"].groupby("seed")["value"].mean()
    assert spread.loc["mean_shift", "r2_top100"] == pytest.approx(per_seed.std())
    # the simulated response is shared across cell types: the ceiling is above the mean shift,
    # and the mean shift beats doing nothing on every target
    assert mean.loc[NOISE_CEILING, "r2_top100"] > mean.loc["mean_shift", "r2_top100"] > mean.loc["control", "r2_top100"]
    verdict = paired_verdict(results, ["mean_shift"]).set_index(["model", "metric"])
    assert verdict.loc[("control", "r2_top100"), "verdict"] == "lost" and verdict.loc[("control", "r2_top100"), "ci_high"] < 0
    summary = (finished / "report" / "summary.md").read_text()
    assert re.search(r"^\| control +\| +— +\| +0 won · ", summary, re.MULTILINE)  # vs control, vs mean_shift

    def section(title: str) -> str:
        return summary.split(f"## {title}")[1].split("##")[0]

    headline_md = section("Mean over held-out targets and seeds")
    assert re.search(r"\| noise_ceiling +\|", headline_md) and "**" in headline_md  # ceiling row, best marked
    def row_names(title: str) -> list[str]:  # the models of a table, in order (header row dropped)
        return re.findall(r"^\| (\w+) +\|", section(title), re.MULTILINE)[1:]

    assert row_names("Mean over held-out targets and seeds") == ["mtae", "mean_shift", "control", NOISE_CEILING]
    assert row_names("Verdict: each model against each baseline") == ["mtae", "mean_shift", "control"]
    for name in ("metrics_by_model", "heatmap", "pca_*_seed1", "scatter_*_seed1", "dotplot_*_seed1"):  # per target: named after it
        (png,) = (finished / "report" / "figures").glob(f"{name}.png")
        assert png.stat().st_size > 10_000
    assert len(list((finished / "predictions").rglob("*_seed1.h5ad"))) == 3  # showcase group, first seed


def _browser() -> str | None:
    return next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.mark.subprocess
@pytest.mark.skipif(_browser() is None, reason="no headless browser (chromium) installed: apt-get install chromium")
def test_report_renders_in_a_headless_browser(finished, tmp_path) -> None:
    html = (finished / "report" / "report.html").read_text()
    # the page itself counts what the browser rendered: tables with rows, images that decoded
    probe = (
        "<script>window.addEventListener('load',()=>{const imgs=[...document.images];"
        "document.body.dataset.tables=document.querySelectorAll('table tbody tr').length;"
        "document.body.dataset.images=imgs.filter(i=>i.complete&&i.naturalWidth>100).length;"
        "document.body.dataset.external=imgs.filter(i=>!i.src.startsWith('data:')).length;});</script>"
    )
    page = tmp_path / "probe.html"
    page.write_text(html.replace("</body>", probe + "</body>"))
    dom = subprocess.run(
        [_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    found = dict(re.findall(r'data-(tables|images|external)="(\d+)"', dom))
    assert int(found["images"]) == 5 and found["external"] == "0"
    assert int(found["tables"]) > 10
    assert "Mean over held-out targets and seeds" in dom and "noise_ceiling" in dom


# ---------------------------------------------------------------------------- command line
def test_cli_runs_a_configured_benchmark_and_reports(sim_path, tmp_path) -> None:
    file = tmp_path / "bench.yaml"
    file.write_text(f"data: {sim_path}\nmodels: [control, mean_shift]\nholdout: [type_1]\nn_hvg: 100\nnoise_ceiling_repeats: 1\n")
    out = tmp_path / "out"
    result = runner.invoke(app, ["benchmark", "--config", str(file), "--seeds", "3", "--out", str(out), "--no-report"])
    assert result.exit_code == 0, result.output
    assert "3 runs" in result.output and "0 already done, 3 to run" in result.output
    assert ResultStore(out).config().seeds == (3,)  # the option overrode the file
    again = runner.invoke(app, ["benchmark", "--config", str(file), "--seeds", "3", "--out", str(out), "--no-report"])
    assert "3 already done, 0 to run" in again.output
    report = runner.invoke(app, ["report", str(out), "--no-pdf"])
    assert report.exit_code == 0, report.output
    assert (out / "report" / "report.html").is_file() and not list(out.rglob("*.pdf"))
    # a report on part of the models, in its own folder: only their rows (and the noise ceiling's) remain
    part = runner.invoke(app, ["report", str(out), "--no-pdf", "--models", "mean_shift"])
    assert part.exit_code == 0, part.output
    (folder,) = out.glob("report-mean_shift-*")
    summary = (folder / "summary.md").read_text()
    assert "| mean_shift " in summary and "| noise_ceiling " in summary and "| control " not in summary
    wrong = runner.invoke(app, ["report", str(out), "--models", "mtae"])
    assert wrong.exit_code == 2 and "no results for model(s) ['mtae']" in wrong.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--models", "control,nope"], "Unknown model 'nope'"),
        (["--models", "control", "--holdout", "type_0,zebra"], "['zebra'] not in obs"),
        (["--models", "control", "--seeds", "1,x"], "comma-separated integers"),
        (["--models", "control", "--executor", "slurm"], "slurm"),
    ],
)
def test_cli_refuses_bad_input_with_exit_2(sim_path, tmp_path, args, message) -> None:
    result = runner.invoke(app, ["benchmark", "--data", str(sim_path), "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2
    assert message in result.output


def test_cli_refuses_unreadable_data_bad_config_and_empty_dirs(tmp_path) -> None:
    missing = runner.invoke(app, ["benchmark", "--data", str(tmp_path / "none.h5ad"), "--models", "control", "--out", str(tmp_path / "o")])
    assert missing.exit_code == 2 and "neither a registered dataset nor an existing file" in missing.output
    file = tmp_path / "bench.yaml"
    file.write_text("data: x.h5ad\nmodels: [control]\nepochs: 3\n")
    typo = runner.invoke(app, ["benchmark", "--config", str(file), "--out", str(tmp_path / "o")])
    assert typo.exit_code == 2 and "Unknown benchmark settings ['epochs']" in typo.output
    (tmp_path / "empty").mkdir()
    empty = runner.invoke(app, ["report", str(tmp_path / "empty")])
    assert empty.exit_code == 2 and "No finished runs" in empty.output


def test_a_failing_run_is_recorded_and_the_grid_goes_on(sim_path, tmp_path, monkeypatch) -> None:
    from mtpert.benchmark import executors

    original = executors.fit_and_score

    def breaks_mean_shift(data, split, spec, model, *args, **kwargs):
        if model == "mean_shift":
            raise RuntimeError("mean shift is broken")
        return original(data, split, spec, model, *args, **kwargs)

    monkeypatch.setattr(executors, "fit_and_score", breaks_mean_shift)
    failures = []
    store = run_benchmark(config(sim_path, holdout=("type_0", "type_1")), tmp_path, on_failure=failures.append)
    assert sorted(f.run.heldout for f in failures) == ["type_0", "type_1"]
    assert all(f.message == "RuntimeError: mean shift is broken" for f in failures)
    assert set(store.results()["model"]) == {"control", NOISE_CEILING}  # the other runs finished
    tracebacks = sorted(store.failed.iterdir())
    assert len(tracebacks) == 2 and "mean shift is broken" in tracebacks[0].read_text()
    monkeypatch.undo()
    plans = []
    store = run_benchmark(config(sim_path, holdout=("type_0", "type_1")), tmp_path, on_plan=plans.append)
    assert {t.run.model for t in plans[0].todo} == {"mean_shift"}  # only the failed runs again
    assert not any(store.failed.iterdir())


def test_cli_exits_1_naming_failed_runs(sim_path, tmp_path, monkeypatch) -> None:
    from mtpert.benchmark import executors

    def broken(*args, **kwargs):
        raise RuntimeError("broken model")

    monkeypatch.setattr(executors, "fit_and_score", broken)
    args = ["benchmark", "--data", str(sim_path), "--models", "mean_shift", "--holdout", "type_0", "--seeds", "1"]
    result = CliRunner().invoke(app, [*args, "--n-hvg", "100", "--out", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "failed" in result.output and "RuntimeError: broken model" in result.output
