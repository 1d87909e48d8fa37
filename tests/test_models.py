"""Every registered model against the shared contract, and the multi-task family against known truth.

Simulated data has a known answer (``mtpert.data.simulate``), so the behaviour tests check what
a model predicts, not only that it runs. Networks are kept small and trained briefly, on one CPU
thread so that parallel test runs do not slow each other down.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from matplotlib.axes import Axes
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from mtpert._array import dense
from mtpert.data import (
    DatasetSpec,
    heldout_mask,
    holdout_condition,
    holdout_group,
    prepare,
    seed_everything,
    simulate,
)
from mtpert.data.simulate import true_log_means
from mtpert.data.split import Split
from mtpert.errors import DataError
from mtpert.models import MODELS, MultiTaskModel, PerturbationModel, get_model
from mtpert.models.film import CONDITIONINGS
from mtpert.pl.training import loss_curves
from mtpert.train import ot_pairs, pair_within_groups

DOSE_SPEC = DatasetSpec(dose_key="dose")
SPEC = DatasetSpec()
TINY = {
    "hidden": (16,),
    "latent_dim": 4,
    "dose_dim": 4,
    "max_epochs": 3,
    "progress": False,
    "num_threads": 1,
}
"""Overrides that make a network model fit in a fraction of a second (applied where accepted)."""
SMALL = {"hidden": (64,), "latent_dim": 16, "progress": False, "num_threads": 1}


def build(name: str, spec: DatasetSpec, **overrides) -> PerturbationModel:
    """Registered model ``name`` with those of ``TINY`` and ``overrides`` its constructor accepts."""
    preset = get_model(name)
    accepted = preset.cls.parameters()
    return preset(spec, **{k: v for k, v in {**TINY, **overrides}.items() if k in accepted})


def fold(
    adata: AnnData, spec: DatasetSpec, group: str = "type_0"
) -> tuple[AnnData, Split, AnnData, AnnData]:
    """Log data (all genes), the split holding ``group`` out, and its train and val cells."""
    data = prepare(adata, spec, n_hvg=0)
    split = holdout_group(data, spec, group, min_cells=10)
    return data, split, split.subset(data, "train"), split.subset(data, "val")


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(((a - b) ** 2).mean()))


def r2(a: np.ndarray, b: np.ndarray) -> float:
    """Squared Pearson correlation; 0 when either side is constant (e.g. a prediction of no change)."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1] ** 2)


@pytest.fixture(scope="module")
def dosed():
    """Two doses per perturbation, so the dose path of every model is exercised."""
    return fold(
        simulate(n_cell_types=3, n_genes=40, n_cells=30, doses=(0.5, 1.0), seed=0), DOSE_SPEC
    )


@pytest.fixture(scope="module")
def single_dose():
    """One stimulus, no dose key: the common case (Kang-like)."""
    sim = simulate(n_cell_types=4, n_genes=200, n_cells=100, seed=1)
    return (sim, *fold(sim, SPEC))


# ---------------------------------------------------------------------- the shared contract
OWN_MODELS = [name for name, preset in MODELS.items() if preset.class_name != "ExternalModel"]
"""The models that run in mtpert's process; the peers' protocol is tested in test_external.py."""


@pytest.mark.parametrize("name", OWN_MODELS)
def test_model_contract(name: str, dosed, tmp_path) -> None:
    data, split, train, val = dosed
    target = split.targets[0]
    control = data[target.control]

    seed_everything(0)
    model = build(name, DOSE_SPEC).fit(train, val)
    pred = model.predict(control, target.condition, target.dose)
    assert pred.shape == control.shape
    assert list(pred.var_names) == model.genes == list(train.var_names)
    assert list(pred.obs_names) == list(control.obs_names)
    assert (pred.obs["condition"] == target.condition).all()
    assert np.allclose(pred.obs["dose"], target.dose)
    assert np.isfinite(pred.X).all() and pred.X.min() >= 0

    model.save(tmp_path / name)
    loaded = PerturbationModel.load(tmp_path / name)
    assert loaded.name == model.name == name
    np.testing.assert_array_equal(loaded.predict(control, target.condition, target.dose).X, pred.X)

    seed_everything(0)
    again = build(name, DOSE_SPEC).fit(train, val)
    np.testing.assert_array_equal(again.predict(control, target.condition, target.dose).X, pred.X)


def test_preset_names_are_derived_from_options() -> None:
    for name, preset in MODELS.items():
        if preset.cls is MultiTaskModel:
            assert preset(SPEC).name == name
    assert (
        MultiTaskModel(SPEC, latent="variational", regularizer="adversarial", objective="ot").name
        == "mtvae_adv_ot"
    )
    assert (
        MultiTaskModel(SPEC, conditioning="concat", condition_encoder=True).name
        == "mtae_concat_condenc"
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"latent": "gaussian"}, r"latent must be one of \('deterministic', 'variational'\)"),
        ({"objective": "pairs"}, "objective must be one of"),
        ({"conditioning": "film2"}, "conditioning must be one of"),
        ({"conditioning": "multihead", "condition_encoder": True}, "no encoder form"),
        ({"hidden": ()}, "at least one positive width"),
        ({"prediction": "residual", "objective": "ot"}, "never trains"),
        ({"batch_size": 0}, "batch_size must be > 0"),
    ],
)
def test_bad_options_name_the_choices(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MultiTaskModel(SPEC, **options)


def test_unknown_condition_or_dose_misuse_raises_data_error(single_dose) -> None:
    _, data, split, train, val = single_dose
    model = build("mtae", SPEC).fit(train, val)
    control = data[split.targets[0].control]
    with pytest.raises(DataError, match=r"known conditions: \['stimulated'\]"):
        model.predict(control, "interferon")
    with pytest.raises(DataError, match="without doses"):
        model.predict(control, "stimulated", dose=1.0)


def test_history_and_loss_curves(single_dose) -> None:
    _, _, _, train, val = single_dose
    model = build("mtae_adv", SPEC, max_epochs=4).fit(train, val)
    history = model.history
    assert list(history["epoch"]) == [1, 2, 3, 4]
    assert {"train_recon", "val_recon", "train_adv", "train_disc", "lr"} <= set(history.columns)
    assert isinstance(loss_curves(history), Axes)
    with pytest.raises(ValueError, match="train_<term>"):
        loss_curves(pd.DataFrame({"epoch": [1]}))


def test_residual_prediction_keeps_each_cells_variation(single_dose) -> None:
    _, data, split, train, val = single_dose
    control = dense(data[split.targets[0].control].X)
    spread = {}
    for prediction in ("decoded", "residual"):  # same seed, same training: only prediction differs
        model = build("mtae", SPEC, **SMALL, max_epochs=20, seed=0, prediction=prediction).fit(
            train, val
        )
        pred = dense(model.predict(data[split.targets[0].control], "stimulated").X)
        spread[prediction] = pred.var(0).mean() / control.var(0).mean()
        assert model.name == {"decoded": "mtae_decoded", "residual": "mtae"}[prediction]
    assert spread["decoded"] < 0.8 < spread["residual"] < 1.2, spread


# ---------------------------------------------------------------------- saved before sets of perturbations
SAVED = Path(__file__).parent / "data" / "multitask_saved"
"""Tiny multi-task models saved, with their predictions, by mtpert 0.1.0 at commit 5ddf6bf (before
conditions were encoded as sets of perturbations), each fitted on :func:`saved_fold` with the
hyperparameters in its ``config.json`` after ``seed_everything(0)``."""


def saved_fold(spec: DatasetSpec) -> tuple[AnnData, Split]:
    """The data the saved models were fitted on: two perturbations, doses where the spec has them."""
    doses = (0.5, 1.0) if spec.dose_key else (1.0,)
    sim = simulate(
        n_cell_types=3, n_genes=40, n_cells=30, perturbations=("drug_a", "drug_b"), doses=doses, seed=0
    )
    data, split, _, _ = fold(sim, spec)
    return data, split


@pytest.mark.parametrize("saved", sorted(p.name for p in SAVED.iterdir()))
def test_models_saved_before_sets_load_and_train_as_before(saved: str) -> None:
    """Plain conditions (no combination separator) train and predict as before the set encoding:
    the saved model loads and predicts its saved predictions, and the same model fitted now
    (``bound_change``, added since, off) predicts them too (max abs difference 0 on the machine
    that saved them; the tolerance allows for another CPU's float rounding)."""
    config = json.loads((SAVED / saved / "config.json").read_text())
    spec = DatasetSpec.from_dict(config["spec"])
    data, split = saved_fold(spec)
    expected = np.load(SAVED / saved / "predictions.npz")
    loaded = PerturbationModel.load(SAVED / saved, device="cpu")
    seed_everything(0)
    options = {**config["hparams"], "bound_change": False}
    refitted = MultiTaskModel(spec, **options, progress=False, num_threads=1, device="cpu")
    refitted.fit(split.subset(data, "train"), split.subset(data, "val"))
    assert loaded.name == refitted.name
    assert not loaded.params.bound_change and loaded.change_bounds is None
    assert loaded.params.schedule == "plateau"  # saved before the cosine default, trained without it
    assert len(split.targets) == len(expected.files)
    for target in split.targets:
        key = target.condition if target.dose is None else f"{target.condition}@{target.dose}"
        for model in (loaded, refitted):
            pred = model.predict(data[target.control], target.condition, target.dose).X
            np.testing.assert_allclose(pred, expected[key], rtol=0, atol=1e-5)


def test_a_saved_model_keeps_the_schedule_it_was_trained_with(single_dose, tmp_path) -> None:
    _, _, _, train, val = single_dose
    for schedule in ("cosine", "plateau"):
        build("mtae", SPEC, **SMALL, max_epochs=2, schedule=schedule).fit(train, val).save(tmp_path / schedule)
        loaded = PerturbationModel.load(tmp_path / schedule)
        assert (loaded.params.schedule, loaded.params.lr) == (schedule, 3e-3)


def test_bound_change_scales_a_larger_mean_change_down_to_the_bound(single_dose) -> None:
    _, data, split, train, val = single_dose
    control = data[split.targets[0].control]
    cells = dense(control.X)
    free, bounded = (
        build("mtae", SPEC, max_epochs=5, seed=0, bound_change=on).fit(train, val) for on in (False, True)
    )
    assert free.change_bounds is None and free.name == "mtae_unbounded"
    assert set(bounded.change_bounds) == {"stimulated"} and bounded.change_bounds["stimulated"] > 0
    unbounded = dense(free.predict(control, "stimulated").X)
    change = np.sqrt(((unbounded.mean(0) - cells.mean(0)) ** 2).mean())
    bounded.change_bounds["stimulated"] = change / 4
    pred = dense(bounded.predict(control, "stimulated").X)
    np.testing.assert_allclose(pred, cells + (unbounded - cells) / 4, atol=1e-5)
    bounded.change_bounds["stimulated"] = change * 2  # within the bound: unchanged
    np.testing.assert_array_equal(bounded.predict(control, "stimulated").X, unbounded)


# ---------------------------------------------------------------------- options all train
@pytest.mark.parametrize(
    ("conditioning", "condition_encoder"),
    [
        (c, e) for c in CONDITIONINGS for e in (False, True) if not (c == "multihead" and e)
    ],  # no encoder form
)
def test_conditioning_mechanisms_train(
    conditioning: str, condition_encoder: bool, dosed, tmp_path
) -> None:
    data, split, train, val = dosed
    target = split.targets[0]
    model = build(
        "mtae",
        DOSE_SPEC,
        conditioning=conditioning,
        condition_encoder=condition_encoder,
        max_epochs=30,
        seed=0,
    )
    model.fit(train, val)
    recon = model.history["train_recon"]
    assert recon.iloc[-1] < 0.9 * recon.iloc[0]
    low, high = (model.predict(data[target.control], target.condition, d).X for d in (0.5, 1.0))
    assert np.isfinite(low).all() and not np.array_equal(low, high)
    model.save(tmp_path)  # names like mtae_concat_condenc have no preset but must load
    np.testing.assert_array_equal(
        PerturbationModel.load(tmp_path).predict(data[target.control], target.condition, 1.0).X,
        high,
    )


def test_ot_objective_needs_a_cell_type_with_both_conditions(single_dose) -> None:
    _, _, _, train, _ = single_dose
    # keep each cell type under one condition only: nothing to pair
    one_sided = train[
        (train.obs["cell_type"].isin(["type_1"])) == (train.obs["condition"] == "control")
    ]
    with pytest.raises(DataError, match="no training cell type has both"):
        build("mtae_ot", SPEC).fit(one_sided)


# ---------------------------------------------------------------------- optimal-transport pairing
def test_ot_pairs_recover_a_shifted_permutation() -> None:
    rng = np.random.default_rng(0)
    source = rng.normal(size=(12, 3)) * 5
    order = rng.permutation(12)
    target = source[order] + 0.01
    np.testing.assert_array_equal(ot_pairs(source, target), order)


@pytest.mark.parametrize("block_size", [1000, 7])  # exact, then minibatch OT in blocks of 7
def test_ot_pairs_keep_clusters_together(block_size: int) -> None:
    rng = np.random.default_rng(1)
    centers = np.array([[0.0, 0.0], [20.0, 0.0]])
    source_cluster, target_cluster = np.repeat([0, 1], 15), np.repeat([0, 1], 20)
    source = centers[source_cluster] + rng.normal(size=(30, 2))
    target = centers[target_cluster] + [0.0, 3.0] + rng.normal(size=(40, 2))  # shifted, more cells
    partner = ot_pairs(source, target, block_size=block_size, seed=0)
    assert (source_cluster[partner] == target_cluster).mean() >= (1.0 if block_size > 40 else 0.9)


def test_pairs_stay_within_cell_type_and_condition() -> None:
    coords = np.arange(8, dtype=float)[:, None]
    cell_type = np.array(["a", "a", "a", "b", "b", "b", "c", "c"])
    condition = np.array(["ctrl", "x", "x", "ctrl", "x", "y", "x", "x"])
    is_control = condition == "ctrl"
    partner = pair_within_groups(coords, cell_type, condition, is_control)
    np.testing.assert_array_equal(partner, [-1, 0, 0, -1, 3, 3, -1, -1])  # type c has no control


# ---------------------------------------------------------------------- behaviour against truth
def test_predicted_change_matches_truth_for_held_out_type(single_dose) -> None:
    sim, data, split, train, val = single_dose
    target = split.targets[0]
    control = data[target.control]
    truth = (
        true_log_means(sim, "type_0", target.condition) - true_log_means(sim, "type_0", "control")
    ).to_numpy()
    scores = {}
    for name in ("control", "mean_shift", "mtae"):
        seed_everything(0)
        model = build(name, SPEC, **SMALL, max_epochs=60)
        pred = model.fit(train, val).predict(control, target.condition)
        scores[name] = r2(dense(pred.X).mean(0) - dense(control.X).mean(0), truth)
    assert scores["control"] == 0.0
    assert scores["mtae"] > 0.25, scores


def test_dose_encoding_interpolates_an_unseen_dose() -> None:
    sim = simulate(
        n_cell_types=3,
        n_genes=100,
        n_cells=60,
        doses=(0.25, 0.5, 1.0, 2.0),
        effect_size=1.5,
        seed=2,
    )
    data = prepare(sim, DOSE_SPEC, n_hvg=0)
    split = holdout_condition(data, DOSE_SPEC, "stimulated", dose=0.5, min_cells=10)
    seed_everything(0)
    model = build("mtae", DOSE_SPEC, **SMALL, max_epochs=60)
    model.fit(split.subset(data, "train"), split.subset(data, "val"))
    for target in split.targets:
        control = data[target.control]
        base = dense(control.X).mean(0)
        untreated = true_log_means(sim, target.group, "control").to_numpy()
        truth = true_log_means(sim, target.group, "stimulated", 0.5).to_numpy() - untreated
        full = true_log_means(sim, target.group, "stimulated", 2.0).to_numpy() - untreated
        predicted = {
            d: dense(model.predict(control, "stimulated", d).X).mean(0) - base
            for d in (0.25, 0.5, 1.0)
        }
        along = {d: float(v @ full / (full @ full)) for d, v in predicted.items()}
        assert along[0.25] < along[0.5] < along[1.0], along  # monotone in dose
        in_type = data.obs["cell_type"] == target.group
        measured = {
            d: dense(data[in_type & np.isclose(data.obs["dose"], d)].X).mean(0) - base
            for d in (0.25, 1.0)
        }
        error = rmse(predicted[0.5], truth)
        assert error < min(rmse(m, truth) for m in measured.values()), (
            error,
            measured,
        )  # beats either neighbour


@pytest.mark.slow
def test_adversarial_regularizer_hides_condition_from_a_linear_probe() -> None:
    """A linear probe reads the condition from the latent less well with the regularizer.

    The baseline is the same model, discriminator training included, without the encoder's
    adversarial term (``adv_weight=0``). On simulation seeds 3 and 4 the probe's balanced accuracy
    drops from 0.71 / 0.81 to 0.53 / 0.56; on seed 5 only from 0.89 to 0.85: alternating
    adversarial training does not always remove what a fresh probe can read.
    """
    sim = simulate(
        n_cell_types=3, n_genes=100, n_cells=80, effect_size=1.5, responsive_fraction=0.2, seed=3
    )
    _, _, train, val = fold(sim, SPEC)
    is_perturbed = (train.obs["condition"] != "control").to_numpy()
    accuracy = {}
    for weight in (0.0, 0.1):
        seed_everything(0)
        model = build(
            "mtae_adv", SPEC, **SMALL, adv_weight=weight, max_epochs=60, patience=100, batch_size=32
        )
        z = model.fit(train, val).encode(train)
        z = (z - z.mean(0)) / (z.std(0) + 1e-6)
        probe = LogisticRegression(max_iter=2000)
        accuracy[weight] = cross_val_score(
            probe, z, is_perturbed, cv=5, scoring="balanced_accuracy"
        ).mean()
    assert accuracy[0.0] > 0.65, accuracy
    assert accuracy[0.1] < accuracy[0.0] - 0.1, accuracy


def test_gaussian_regularizer_moves_latent_towards_standard_normal(single_dose) -> None:
    _, _, _, train, val = single_dose
    moments = {}
    for name in ("mtae", "mtae_advg"):
        seed_everything(0)
        z = build(name, SPEC, **SMALL, max_epochs=40).fit(train, val).encode(train)
        moments[name] = (
            abs(np.log(z.var(0).mean())),
            np.abs(z.mean(0)).mean(),
        )  # (0, 0) for N(0, I)
    assert all(g < p for g, p in zip(moments["mtae_advg"], moments["mtae"], strict=True)), moments


# ---------------------------------------------------------------------- real data
@pytest.mark.slow
def test_mtae_beats_control_on_kang(kang_adata) -> None:
    group = "CD14 Mono"
    data = prepare(kang_adata, SPEC, n_hvg=2000, exclude=heldout_mask(kang_adata, SPEC, group))
    split = holdout_group(data, SPEC, group)
    target = split.targets[0]
    control, truth = data[target.control], data[target.truth]
    seed_everything(0)
    model = build("mtae", SPEC, hidden=(256, 128), latent_dim=64, max_epochs=25)
    pred = model.fit(split.subset(data, "train"), split.subset(data, "val")).predict(
        control, target.condition
    )
    true_change = dense(truth.X).mean(0) - dense(control.X).mean(0)
    pred_change = dense(pred.X).mean(0) - dense(control.X).mean(0)
    assert r2(pred_change, true_change) > 0.5
    assert r2(dense(pred.X).mean(0), dense(truth.X).mean(0)) > r2(
        dense(control.X).mean(0), dense(truth.X).mean(0)
    )
