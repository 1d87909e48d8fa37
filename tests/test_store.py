"""mtpert.benchmark.store: what a ResultStore writes reads back as written.

Damaged files, other data, locks and permissions are in test_faults.py; resume and interrupted
writes through ``run_benchmark`` in test_benchmark.py. Here the store is used directly, with
hand-made run tables and predictions, so each check is about the store alone.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from mtpert.benchmark import BenchmarkConfig, expand
from mtpert.benchmark.store import PROVENANCE, ROW_COUNT, ResultStore, RunResult
from mtpert.data import DatasetSpec, holdout_group, prepare, simulate
from mtpert.data.fingerprint import data_sha256
from mtpert.scoring import Prediction

SPEC = DatasetSpec()


@pytest.fixture(scope="module")
def raw() -> ad.AnnData:
    return simulate(seed=4, n_cells=30, n_genes=60)


@pytest.fixture
def config(raw, tmp_path) -> BenchmarkConfig:
    path = tmp_path / "sim.h5ad"
    raw.write_h5ad(path)
    values = {
        "models": ("control", "mean_shift"),
        "seeds": (1, 2),
        "holdout": ("type_1",),
        "n_hvg": 0,
        "min_cells": 5,
    }
    return BenchmarkConfig(data=str(path), noise_ceiling_repeats=0, **values)


def scores(run_id: str, value: float) -> pd.DataFrame:
    """A run's table as the store sees it: rows keyed by the run id."""
    return pd.DataFrame(
        {"run_id": run_id, "metric": ["r2_all", "e_distance_rel"], "value": [value, 2 * value]}
    )


def test_results_read_back_every_written_run_with_its_provenance(raw, config, tmp_path) -> None:
    runs = expand(config, raw).runs
    assert len(runs) == 4
    store = ResultStore(tmp_path / "bench")
    digest = data_sha256(raw)
    with store.open(config, digest):
        for i, run in enumerate(runs[:3]):
            store.write(RunResult(run, scores(run.id, value=i / 10)))
    results = store.results()
    written = pd.concat(
        [scores(run.id, i / 10) for i, run in enumerate(runs[:3])], ignore_index=True
    )
    key = ["run_id", "metric"]
    pd.testing.assert_frame_equal(
        results[written.columns].sort_values(key, ignore_index=True),
        written.sort_values(key, ignore_index=True),
    )
    assert (results["data_sha256"] == digest).all() and (
        results["invocation"] == store.invocation.id
    ).all()
    assert set(PROVENANCE) <= set(results.columns) and (results[ROW_COUNT] == 2).all()
    assert [store.done(run) for run in runs] == [True, True, True, False]
    assert ResultStore(store.root).config() == config  # the directory's configuration, read back


def test_kept_predictions_read_back_per_model_and_seed(raw, config, tmp_path) -> None:
    data = prepare(raw, SPEC, n_hvg=0)
    target = holdout_group(data, SPEC, "type_1", min_cells=5).targets[0]
    control, truth = data[target.control].copy(), data[target.truth].copy()
    rng = np.random.default_rng(0)
    predicted = {}
    for model in ("control", "mean_shift"):
        for seed in (1, 2):
            pred = control.copy()
            pred.X = _dense(control.X) + rng.random(control.shape)
            predicted[model, seed] = pred
    store = ResultStore(tmp_path / "bench")
    runs = {(r.model, r.seed): r for r in expand(config, raw).runs}
    with store.open(config, data_sha256(raw)):
        for (model, seed), pred in predicted.items():
            kept = Prediction(target, model, seed, control, truth, pred)
            store.write(
                RunResult(runs[model, seed], scores(runs[model, seed].id, 0.5), predictions=(kept,))
            )
    got_control, got_truth, got = store.predictions("type_1", target.condition)
    assert list(got_control.obs_names) == list(control.obs_names) and list(
        got_truth.obs_names
    ) == list(truth.obs_names)
    np.testing.assert_allclose(_dense(got_truth.X), _dense(truth.X))
    assert set(got) == set(predicted)
    for key, pred in predicted.items():
        np.testing.assert_allclose(_dense(got[key].X), pred.X)
    with pytest.raises(FileNotFoundError, match="No kept predictions for 'type_2'"):
        store.predictions("type_2", target.condition)


def test_a_new_directory_has_no_results_and_says_how_to_make_them(tmp_path) -> None:
    store = ResultStore(tmp_path / "bench")
    assert store.config() is None
    with pytest.raises(FileNotFoundError, match="run `mtpert benchmark --out"):
        store.results()


def _dense(matrix) -> np.ndarray:
    return np.asarray(matrix.todense() if hasattr(matrix, "todense") else matrix)
