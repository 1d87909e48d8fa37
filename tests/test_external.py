"""Models run in their own environment (the peers): the protocol, proved with a tiny fake peer
(tests/peers/fake_peer.py) run by this Python, so that no peer's environment is needed here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mtpert._array import dense
from mtpert.benchmark import BenchmarkConfig, run_benchmark
from mtpert.cli import app
from mtpert.data import DatasetSpec, make_fold, seed_everything, simulate
from mtpert.errors import ConfigError, MissingDependencyError, MtpertError, PeerError
from mtpert.models import MODELS, ExternalModel, ModelPreset, PerturbationModel, peer_envs
from mtpert.models.peer_envs import PEERS, peer_python, setup_peer

pytestmark = pytest.mark.subprocess

FAKE_PEER = str(Path(__file__).parent / "peers" / "fake_peer.py")
SPEC = DatasetSpec()
ODD = ("$x$", "A++B")
"""Condition labels a peer must take as they are (``A++B`` is no combination: the spec has no
separator)."""


@pytest.fixture(scope="module")
def raw():
    data = simulate(n_cell_types=3, n_genes=40, n_cells=60, perturbations=ODD, seed=3)
    del data.obs["dose"]
    return data


@pytest.fixture(scope="module")
def fold(raw):
    return make_fold(raw, SPEC, "type_1", seed=1, n_hvg=0)


def fake(**params) -> ExternalModel:
    return ExternalModel(SPEC, runner=FAKE_PEER, peer_params=params, time_limit=60)


def requests(fold):
    return [(fold.data[t.control], t.condition, t.dose) for t in fold.split.targets]


def fit(model: ExternalModel, fold) -> ExternalModel:
    return model.fit(fold.split.subset(fold.data, "train"), fold.split.subset(fold.data, "val"))


# ---------------------------------------------------------------------------- the protocol
def test_a_peer_gets_the_training_cells_and_settings_and_its_predictions_come_back(
    fold, tmp_path
) -> None:
    seed_everything(7)
    model = fit(fake(record=str(tmp_path)), fold)
    given = json.loads((tmp_path / "train.json").read_text())
    train, val = (fold.split.subset(fold.data, s) for s in ("train", "val"))
    assert given["n_obs"] == train.n_obs + val.n_obs and given["split"] == ["train", "val"]
    assert given["genes"] == fold.data.var_names.tolist() and given["has_counts"]
    # the held-out type's control cells are there, its perturbed cells are not
    assert "type_1|control" in given["pairs"] and not any(
        p.startswith("type_1|") and not p.endswith("control") for p in given["pairs"]
    )
    assert {p.split("|")[1] for p in given["pairs"]} == {
        "control",
        *ODD,
    }  # odd labels arrive as they are
    settings = given["settings"]
    assert settings["keys"] == {
        "condition": "condition",
        "cell_type": "cell_type",
        "dose": None,
        "control": "control",
        "separator": None,
    }
    assert (
        settings["seed"] == 7
        and settings["device"] == "cpu"
        and settings["params"]["record"] == str(tmp_path)
    )
    assert given["threads_env"] == str(settings["threads"])

    preds = model.predict_many(requests(fold))
    assert [p.obs["condition"].iloc[0] for p in preds] == [t.condition for t in fold.split.targets]
    for pred, target in zip(preds, fold.split.targets, strict=True):
        control, seen = (
            dense(fold.data[target.control].X),
            fold.data[fold.split.train.union(fold.split.val)],
        )
        labels = seen.obs["condition"].astype(str).to_numpy()
        shift = dense(seen.X)[labels == target.condition].mean(0) - dense(seen.X)[
            labels == "control"
        ].mean(0)
        np.testing.assert_allclose(
            dense(pred.X), np.clip(control + shift, 0, None), atol=1e-5
        )  # the peer's answer, unchanged
        assert pred.var_names.equals(fold.data.var_names) and pred.obs_names.equals(
            fold.data[target.control].obs_names
        )
    summary = model.fit_summary()
    assert (
        summary["epochs"] == 1
        and summary["peer_train_seconds"] > 0
        and summary["peer_peak_rss_mb"] > 10
    )
    assert summary["peer_predict_seconds"] > 0

    process, folder = model._process.process, model._process.folder
    model.close()
    assert process.poll() is not None and not folder.exists()  # nothing left running or on disk
    with pytest.raises(PeerError, match="closed; fit the model again"):
        model.predict(*requests(fold)[0])
    with pytest.raises(MtpertError, match="runs in its own environment"):
        model.save(tmp_path / "saved")


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        ("nan", r"1 of \d+ cells with NaN or infinite values"),
        ("counts", "raw counts, not log-normalized expression"),
        ("too_few_cells", r"predicted \d+ cells for \d+ control cells"),
        ("wrong_genes", "other genes than it was given: 40 missing"),
        ("crash_predict", "failed while predicting:(.|\n)*fake peer: prediction blew up"),
    ],
)
def test_a_bad_prediction_is_refused_with_what_is_wrong(fold, behaviour, message) -> None:
    model = fit(fake(behaviour=behaviour), fold)
    try:
        with pytest.raises(PeerError, match=message):
            model.predict_many(requests(fold))
    finally:
        model.close()


def test_genes_in_another_order_are_put_back_in_order(fold) -> None:
    ordered, reordered = fit(fake(), fold), fit(fake(behaviour="reordered_genes"), fold)
    try:
        np.testing.assert_array_equal(
            ordered.predict(*requests(fold)[0]).X, reordered.predict(*requests(fold)[0]).X
        )
    finally:
        ordered.close()
        reordered.close()


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        (
            "crash_train",
            "Peer 'fake_peer' failed while training:(.|\n)*RuntimeError: fake peer: training blew up",
        ),
        ("import_error", "No module named 'a_package_this_environment_lacks'"),
        ("exit_train", r"Peer 'fake_peer' ended \(exit code 3\)"),
    ],
)
def test_a_failing_peer_says_why(fold, behaviour, message) -> None:
    with pytest.raises(PeerError, match=message):
        fit(fake(behaviour=behaviour), fold)


def test_a_hanging_peer_is_stopped_at_its_time_limit(fold, tmp_path) -> None:
    model = ExternalModel(
        SPEC,
        runner=FAKE_PEER,
        peer_params={"behaviour": "hang_train", "record": str(tmp_path)},
        time_limit=3,
    )
    start = time.monotonic()
    with pytest.raises(
        PeerError, match="did not finish training within its time limit of 3 s, and was stopped"
    ):
        fit(model, fold)
    assert time.monotonic() - start < 30
    assert not _alive(int((tmp_path / "pid").read_text()))
    hanging = ExternalModel(
        SPEC, runner=FAKE_PEER, peer_params={"behaviour": "hang_predict"}, time_limit=3
    )
    fit(hanging, fold)
    with pytest.raises(PeerError, match="did not answer its predictions within its time limit"):
        hanging.predict(*requests(fold)[0])
    hanging.close()


def test_a_peer_ends_when_mtpert_is_killed(fold, raw, tmp_path) -> None:
    """A benchmark killed with SIGKILL runs no clean-up; its peer must not train on."""
    data = tmp_path / "raw.h5ad"
    raw.write_h5ad(data)
    script = textwrap.dedent(f"""
        import anndata as ad
        from mtpert.data import DatasetSpec, make_fold
        from mtpert.models import ExternalModel
        fold = make_fold(ad.read_h5ad({str(data)!r}), DatasetSpec(), "type_1", seed=1, n_hvg=0)
        params = {{"behaviour": "hang_train", "record": {str(tmp_path)!r}}}
        ExternalModel(DatasetSpec(), runner={FAKE_PEER!r}, peer_params=params).fit(fold.split.subset(fold.data, "train"))
    """)
    mtpert = subprocess.Popen([sys.executable, "-c", script])
    pid_file = tmp_path / "pid"
    deadline = time.monotonic() + 120
    while not pid_file.is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    peer = int(pid_file.read_text())
    assert _alive(peer)
    mtpert.send_signal(signal.SIGKILL)
    mtpert.wait()
    deadline = time.monotonic() + 10
    while _alive(peer) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(peer)
    [left] = [
        f
        for f in Path(tempfile.gettempdir()).glob("mtpert-peer-fake_peer-*")
        if (f / "owner.pid").read_text() == str(mtpert.pid)
    ]
    fit(fake(), fold).close()  # the next peer's start removes what the killed one left
    assert not left.exists()


# ---------------------------------------------------------------------------- in a benchmark
@pytest.fixture
def fake_peers(monkeypatch, tmp_path):
    """``fake_peer`` and ``crashing_peer`` registered as models, as a peer is."""
    external = "mtpert.models.external:ExternalModel"
    record = str(tmp_path / "record")
    monkeypatch.setitem(
        MODELS._entries,
        "fake_peer",
        ModelPreset(
            "fake_peer", external, {"runner": FAKE_PEER, "peer_params": {"record": record}}
        ),
    )
    crashing = {"runner": FAKE_PEER, "peer_params": {"behaviour": "crash_train"}}
    monkeypatch.setitem(
        MODELS._entries, "crashing_peer", ModelPreset("crashing_peer", external, crashing)
    )
    return Path(record)


def test_a_peer_run_is_an_ordinary_benchmark_run(raw, fake_peers, tmp_path) -> None:
    data = tmp_path / "raw.h5ad"
    raw.write_h5ad(data)
    config = BenchmarkConfig(
        data=str(data), models=("mean_shift", "fake_peer", "crashing_peer"), holdout=("type_1",), seeds=(1, 2),
        n_hvg=0, noise_ceiling_repeats=0, min_cells=10,
    )  # fmt: skip
    store = run_benchmark(config, tmp_path / "out")
    results = store.results()
    peer = results[results["model"] == "fake_peer"]
    assert set(peer["seed"]) == {1, 2} and set(peer["condition"]) == set(ODD)
    assert (
        (peer["peer_train_seconds"] > 0).all()
        and (peer["peer_peak_rss_mb"] > 10).all()
        and (peer["fit_seconds"] > 0).all()
    )
    # the fake peer is a mean shift over the training cells: it scores as mtpert's own does, within noise
    r2 = results[results["metric"] == "r2_top100"].groupby("model")["value"].mean()
    assert abs(r2["fake_peer"] - r2["mean_shift"]) < 0.1
    failures = sorted((tmp_path / "out" / "failed").glob("*.txt"))
    assert len(failures) == 2 and all(
        "fake peer: training blew up" in f.read_text() for f in failures
    )
    assert (fake_peers / "trainings.txt").read_text().count("trained") == 2
    run_benchmark(config, tmp_path / "out")  # resumes: the finished runs are not fitted again
    assert (fake_peers / "trainings.txt").read_text().count("trained") == 2


def test_a_model_that_cannot_serve_the_split_is_skipped_with_the_reason(
    fake_peers, tmp_path
) -> None:
    screen = simulate(
        n_cell_types=1,
        n_genes=40,
        n_cells=60,
        perturbations=("A", "B", "C", "A+B", "B+C", "A+C"),
        seed=2,
    )
    del screen.obs["dose"]
    data = tmp_path / "screen.h5ad"
    screen.write_h5ad(data)
    spec = DatasetSpec(combination_separator="+")
    config = BenchmarkConfig(
        data=str(data), models=("additive", "fake_peer"), split="combination", split_seeds=(1,), seeds=(1,), n_hvg=0,
        noise_ceiling_repeats=0, spec=spec, min_cells=10,
    )  # fmt: skip
    store = run_benchmark(config, tmp_path / "out")
    assert set(store.results()["model"]) == {"additive"}
    skipped = pd.read_csv(tmp_path / "out" / "skipped.csv")
    assert (
        skipped.loc[skipped["model"] == "fake_peer", "reason"]
        .str.contains("cannot predict a combination it was not trained on")
        .all()
    )
    # a later run of some of the store's models keeps the other models' reasons
    run_benchmark(BenchmarkConfig(**{**config.to_dict(), "models": ["additive"]}), tmp_path / "out")
    assert pd.read_csv(tmp_path / "out" / "skipped.csv").equals(skipped)
    with pytest.raises(ConfigError, match="'fake_peer' cannot predict a combination"):
        run_benchmark(
            BenchmarkConfig(**{**config.to_dict(), "models": ["fake_peer"]}), tmp_path / "other"
        )


# ---------------------------------------------------------------------------- environments
def test_a_peer_without_its_environment_names_the_setup_command(
    fold, monkeypatch, tmp_path
) -> None:
    monkeypatch.setenv("MTPERT_PEERS_DIR", str(tmp_path))
    monkeypatch.delenv("MTPERT_PEER_CPA", raising=False)
    with pytest.raises(
        MissingDependencyError, match="Peer 'cpa' has no environment .*`mtpert peers setup cpa`"
    ):
        fit(ExternalModel(SPEC, peer="cpa"), fold)
    (tmp_path / "cpa" / "bin").mkdir(parents=True)
    (tmp_path / "cpa" / "bin" / "python").symlink_to(sys.executable)
    with pytest.raises(
        MissingDependencyError, match="was never finished .*Run `mtpert peers setup cpa`"
    ):
        peer_python("cpa")
    monkeypatch.setenv("MTPERT_PEER_CPA", str(tmp_path / "nowhere" / "python"))
    with pytest.raises(
        MissingDependencyError,
        match=r"\$MTPERT_PEER_CPA names .*nowhere/python, which is not an executable Python",
    ):
        peer_python("cpa")
    with pytest.raises(
        MtpertError, match="Unknown peer 'cpa2'; mtpert runs: pertpy_scgen, cpa, state, cellflow"
    ):
        ExternalModel(SPEC, peer="cpa2")
    result = CliRunner().invoke(app, ["peers"])
    assert result.exit_code == 0 and "0 of 4 ready" in result.output


def test_setting_up_a_peer_makes_an_environment_it_then_runs_under(monkeypatch, tmp_path) -> None:
    """A peer whose pins are nothing beyond a fresh venv: what setup does, without PyPI."""
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    bare = peer_envs.Peer("bare", "a venv with pip only", python, "pip", ())
    monkeypatch.setitem(PEERS, "bare", bare)
    monkeypatch.setenv("MTPERT_PEERS_DIR", str(tmp_path))
    monkeypatch.setattr(
        peer_envs, "find_python", lambda version: sys.executable if version == python else None
    )
    steps: list[str] = []
    made = setup_peer("bare", on_step=steps.append)
    assert made == tmp_path / "bare" / "bin" / "python" and peer_python("bare") == made
    assert json.loads((tmp_path / "bare" / peer_envs.MARKER).read_text())[
        "version"
    ]  # pip's, read from the new env
    assert steps[0].startswith("bare: step 1/1: python -m venv") and "ready in" in steps[-1]
    assert "already set up" in (setup_peer("bare", on_step=steps.append) and steps[-1])

    monkeypatch.setitem(
        PEERS, "old", peer_envs.Peer("old", "needs an old Python", "2.7", "pip", ())
    )
    result = CliRunner().invoke(app, ["peers", "setup", "old"])
    assert (
        result.exit_code != 0
        and "needs Python 2.7" in result.output
        and "pyenv install 2.7" in result.output
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(
        f"/proc/{pid}/stat"
    ) as f:  # a zombie has ended; only its exit status waits to be read
        return f.read().split(") ")[-1][0] != "Z"


def test_peers_are_registered_models_that_cannot_be_saved() -> None:
    for name in PEERS:
        model = MODELS[name](SPEC)
        assert isinstance(model, ExternalModel) and model.name == name and not model.saveable
    assert (
        MODELS["cpa"](SPEC).predicts_unseen_combinations
        and not MODELS["pertpy_scgen"](SPEC).predicts_unseen_combinations
    )
    assert PerturbationModel.saveable


@pytest.mark.parametrize("name", list(PEERS))
def test_a_peer_runner_loads_without_its_peer(name) -> None:
    """A runner is loaded by its peer's Python, whose packages mtpert's lacks: loading it here,
    with numpy and anndata only, proves it imports its peer inside train and predict."""
    import importlib.util

    runner = PEERS[name].runner
    assert (
        runner.is_file() and runner.name == f"run_{name}.py"
    )  # <name>.py would shadow its package
    spec = importlib.util.spec_from_file_location(f"runner_{name}", runner)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(module.train) and callable(module.predict)
    assert "serve(train, predict)" in runner.read_text()
