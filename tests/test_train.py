"""The shared trained-model base: seeding, runtime options kept apart from hyperparameters,
epoch progress, and one way to give every trained model its training settings."""

from __future__ import annotations

import io
import json
import logging
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from anndata import AnnData
from rich.console import Console

import mtpert.models.trained
import mtpert.train.loop
from mtpert.data import DatasetSpec, prepare, simulate
from mtpert.errors import ConfigError
from mtpert.models import MODELS, PerturbationModel, get_model
from mtpert.models.trained import TrainedModel
from mtpert.train import TrainConfig

SPEC = DatasetSpec()
TINY = {"hidden": [8], "latent_dim": 2, "max_epochs": 3}
"""A network that trains in a fraction of a second (on one thread: see ``fitted``)."""
RUNTIME = ("device", "num_threads", "progress")


@pytest.fixture(scope="module")
def cells() -> tuple[AnnData, AnnData, AnnData]:
    """Training cells, validation cells and control cells to predict from."""
    data = prepare(simulate(n_cell_types=2, n_genes=12, n_cells=12, seed=0), SPEC, n_hvg=0)
    rows = np.random.default_rng(0).permutation(data.n_obs)
    train, val = data[np.sort(rows[:36])].copy(), data[np.sort(rows[36:])].copy()
    return train, val, data[data.obs["condition"] == "control"]


def fitted(name: str, cells, **options) -> TrainedModel:
    """Registered model ``name`` fitted on ``cells``, quietly, on one CPU thread (unless given)."""
    train, val, _ = cells
    model = get_model(name)(SPEC, **TINY, **{"progress": False, "num_threads": 1, **options})
    return model.fit(train, val)  # type: ignore[return-value]


@pytest.mark.parametrize("name", ["mtae_adv", "scgen", "scpregan"])
def test_a_seed_gives_the_same_model_and_leaves_the_global_generator_alone(name: str, cells) -> None:
    control = cells[2]
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = fitted(name, cells, seed=7)
    assert torch.equal(torch.get_rng_state(), before)  # training ran in a forked random state
    torch.manual_seed(999)  # a different global state changes nothing when the seed is given
    again = fitted(name, cells, seed=7)
    other = fitted(name, cells, seed=8)
    pred = first.predict(control, "stimulated").X
    np.testing.assert_array_equal(again.predict(control, "stimulated").X, pred)
    pd.testing.assert_frame_equal(again.history, first.history)
    assert not np.array_equal(other.predict(control, "stimulated").X, pred)


def test_without_a_seed_the_global_generator_decides(cells) -> None:
    control = cells[2]
    predictions = []
    for global_seed in (5, 5, 6):
        torch.manual_seed(global_seed)
        predictions.append(fitted("mtae", cells).predict(control, "stimulated").X)
    np.testing.assert_array_equal(predictions[0], predictions[1])
    assert not np.array_equal(predictions[0], predictions[2])


def test_runtime_options_are_given_at_fit_and_not_saved(cells, tmp_path: Path, monkeypatch) -> None:
    threads_while_training = []
    train_for_real = mtpert.models.trained.train

    def recording_train(*args, **kwargs):
        threads_while_training.append(torch.get_num_threads())
        return train_for_real(*args, **kwargs)

    monkeypatch.setattr(mtpert.models.trained, "train", recording_train)
    threads_before = torch.get_num_threads()
    train, val, control = cells
    model = get_model("mtae")(SPEC, **TINY, seed=0)
    model.fit(train, val, device="cpu", num_threads=1, progress=False)  # runtime options at fit
    assert threads_while_training == [1] and torch.get_num_threads() == threads_before
    assert (model.device, model.num_threads, model.progress) == (torch.device("cpu"), 1, False)

    config = json.loads((model.save(tmp_path / "mtae") / "config.json").read_text())
    assert not set(RUNTIME) & set(config["hparams"])
    assert config["hparams"]["max_epochs"] == 3 and config["hparams"]["hidden"] == [8]
    loaded = PerturbationModel.load(tmp_path / "mtae", device="cpu")
    assert loaded.num_threads is None and loaded.progress is True  # this session's defaults
    np.testing.assert_array_equal(
        loaded.predict(control, "stimulated").X, model.predict(control, "stimulated").X
    )


def test_runtime_options_given_to_the_constructor_are_defaults_not_hyperparameters(cells) -> None:
    model = fitted("scpregan", cells, num_threads=1, device="cpu")
    assert model.num_threads == 1 and model.device == torch.device("cpu")
    assert not set(RUNTIME) & set(model.hparams)


@pytest.mark.parametrize("name", ["mtae", "scbutterfly"])
def test_a_model_saved_with_runtime_options_as_hyperparameters_loads(
    name: str, cells, tmp_path: Path
) -> None:
    """As mtpert saved them before runtime options were set apart: in ``hparams``, on a device
    this machine may lack, and a single network's history alone rather than in a list."""
    control = cells[2]
    model = fitted(name, cells, seed=0)
    path = model.save(tmp_path / name)
    config = json.loads((path / "config.json").read_text())
    config["hparams"] |= {"device": "cuda:7", "num_threads": 3, "progress": True}
    if len(config["learned"]["history"]) == 1:
        config["learned"]["history"] = config["learned"]["history"][0]
    (path / "config.json").write_text(json.dumps(config))

    loaded = PerturbationModel.load(path, device="cpu")
    assert loaded.device == torch.device("cpu") and loaded.num_threads is None
    assert loaded.hparams == model.hparams
    pd.testing.assert_frame_equal(loaded.history, model.history)
    np.testing.assert_array_equal(
        loaded.predict(control, "stimulated").X, model.predict(control, "stimulated").X
    )


@pytest.mark.parametrize("terminal", [False, True])
def test_epochs_are_logged_where_output_is_not_a_terminal(terminal: bool, cells, caplog, monkeypatch) -> None:
    output = io.StringIO()
    console = Console(file=output, force_terminal=terminal, force_jupyter=False)
    monkeypatch.setattr(mtpert.train.loop, "get_console", lambda: console)
    train, val, _ = cells
    with caplog.at_level(logging.INFO, logger="mtpert.train"):
        get_model("mtae")(SPEC, **TINY, seed=0, num_threads=1).fit(train, val)
    epochs = [r.getMessage() for r in caplog.records if r.name.startswith("mtpert.train")]
    if terminal:  # a progress bar instead
        assert not epochs and "epoch" in output.getvalue()
    else:
        assert [m.split(":")[0] for m in epochs] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
        assert all("val loss" in m and "best" in m for m in epochs) and not output.getvalue()

    caplog.clear()
    shown = output.getvalue()
    with caplog.at_level(logging.INFO, logger="mtpert.train"):
        get_model("mtae")(SPEC, **TINY, seed=0, num_threads=1).fit(train, val, progress=False)
    assert not caplog.records and output.getvalue() == shown


def test_every_trained_model_takes_every_training_setting_with_its_own_defaults() -> None:
    trained = {name: p.cls for name, p in MODELS.items() if issubclass(p.cls, TrainedModel)}
    assert {"mtae", "scgen", "scvidr_multi", "scpregan", "scbutterfly"} <= set(trained)
    for cls in trained.values():
        accepted = cls.parameters()
        assert {f.name for f in fields(TrainConfig)} | {"seed", *RUNTIME} <= set(accepted)
        assert accepted["lr"].annotation in (float, float | None) and accepted["seed"].annotation == int | None
    scgen = get_model("scgen").cls.parameters()
    assert (scgen["batch_size"].default, scgen["warmup_epochs"].default) == (32, 0)  # the originals'
    assert get_model("mtae").cls.parameters()["batch_size"].default == TrainConfig().batch_size


def test_the_multitask_family_trains_on_a_cosine_schedule_slower_with_an_adversary() -> None:
    rates = {name: get_model(name)(SPEC).params.lr for name in ("mtae", "mtvae_plus_ot", "mtae_adv", "mtae_advg")}
    assert rates == {"mtae": 3e-3, "mtvae_plus_ot": 3e-3, "mtae_adv": 1e-3, "mtae_advg": 1e-3}
    assert get_model("mtae_advg")(SPEC, lr=5e-4).params.lr == 5e-4
    mtae = get_model("mtae")(SPEC).params
    assert (mtae.schedule, mtae.max_epochs) == ("cosine", 30)
    assert get_model("scgen")(SPEC).params.schedule == "plateau"


@pytest.mark.parametrize("schedule", ["plateau", "cosine"])
def test_learning_rate_warms_up_then_follows_its_schedule(schedule: str, cells) -> None:
    epochs, warmup = 12, 2
    train, val, _ = cells
    model = get_model("mtae")(
        SPEC, **{**TINY, "max_epochs": epochs}, lr=1e-2, warmup_epochs=warmup, patience=epochs, schedule=schedule,
        progress=False, num_threads=1,
    ).fit(train, val)
    lr = model.history["lr"].to_numpy()  # the rate of each epoch's last step
    assert len(lr) == epochs and lr[warmup - 1] == pytest.approx(1e-2)
    assert lr[0] == pytest.approx(1e-2 / warmup)
    after = lr[warmup:]
    if schedule == "cosine":  # a half cosine from the peak down to 0 at the last step
        assert np.all(np.diff(after) < 0) and after[-1] == pytest.approx(0.0, abs=1e-12)
        assert after[len(after) // 2 - 1] == pytest.approx(0.5e-2, rel=0.05)
    else:  # held, halved on plateaus only
        assert set(np.round(after / 1e-2, 6)) <= {1.0, 0.5, 0.25, 0.125, 0.0625}


def test_small_data_trains_at_least_min_steps(cells) -> None:
    """36 cells in minibatches of 16 are 3 steps an epoch: 2 epochs would be 6 steps, so 30
    min_steps plan 10 epochs, and the cosine schedule ends at the last of them."""
    train, val, _ = cells
    options = {**TINY, "max_epochs": 2, "batch_size": 16, "patience": 50, "warmup_epochs": 0, "progress": False, "num_threads": 1}
    model = get_model("mtae")(SPEC, **options, min_steps=30).fit(train, val)
    assert len(model.history) == 10 and model.history["lr"].iloc[-1] == pytest.approx(0.0, abs=1e-12)
    assert len(get_model("mtae")(SPEC, **options, min_steps=0).fit(train, val).history) == 2
    assert mtpert.train.loop.planned_epochs(TrainConfig(max_epochs=30, min_steps=300), 20_000) == 30  # reached
    default = get_model("mtae")(SPEC).params
    assert (default.max_epochs, default.min_steps) == (30, 300) and get_model("scgen")(SPEC).params.min_steps == 0
    assert get_model("mtae")(SPEC, max_epochs=3).params.min_steps == 0  # a budget given is trained as given
    with pytest.raises(ConfigError, match="min_steps"):
        TrainConfig(min_steps=-1)


def test_an_unknown_schedule_or_precision_is_refused() -> None:
    with pytest.raises(ValueError, match=r"schedule must be one of \['plateau', 'cosine'\], got 'linear'"):
        TrainConfig(schedule="linear")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"precision must be one of \['float32', 'bfloat16'\], got 'half'"):
        TrainConfig(precision="half")  # type: ignore[arg-type]


def test_bfloat16_training_rounds_the_forward_pass_and_learns_as_well(cells) -> None:
    _, _, control = cells
    histories, predictions = {}, {}
    for precision in ("float32", "bfloat16"):
        model = fitted("mtae_adv", cells, precision=precision, seed=0)
        histories[precision] = model.history
        predictions[precision] = model.predict(control, "stimulated").X
        assert {p.dtype for p in model.net.parameters()} == {torch.float32}  # weights stay float32
    losses = {p: h["val_recon"].to_numpy() for p, h in histories.items()}
    assert not np.array_equal(losses["float32"], losses["bfloat16"])  # autocast did round
    assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=0.05)
    assert predictions["bfloat16"] == pytest.approx(predictions["float32"], abs=0.05)


def test_config_checks_see_every_hyperparameter_and_its_type() -> None:
    preset = get_model("scvidr_multi")
    assert preset.check_params({"max_epochs": "5", "hidden": [16], "num_threads": 1}) == {
        "max_epochs": 5,
        "hidden": (16,),
        "num_threads": 1,
    }
    with pytest.raises(ConfigError, match=r"model_params\.patience: 'soon' is not valid"):
        preset.check_params({"patience": "soon"})
    with pytest.raises(ConfigError, match=r"not a parameter of 'scvidr_multi'.*kl_weight.*grad_clip"):
        preset.check_params({"epochs": 5})
    with pytest.raises(TypeError, match="LatentShiftModel has no parameter epochs; its parameters: shift"):
        preset(SPEC, epochs=5)
