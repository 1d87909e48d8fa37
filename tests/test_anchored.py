"""Anchored prediction of the multi-task family: a baseline's change plus a gated correction."""

from __future__ import annotations

import json

import numpy as np
import pytest
from anndata import AnnData

from mtpert._array import dense
from mtpert.data import DatasetSpec, seed_everything, simulate
from mtpert.data.pp import prepare
from mtpert.errors import ConfigError, DataError
from mtpert.models import MultiTaskModel, PerturbationModel, get_model
from mtpert.models.anchor import ControlReference, anchor_weights
from mtpert.models.simple import MeanChanges

SPEC = DatasetSpec()
FAST = {"hidden": (64,), "latent_dim": 8, "max_epochs": 40, "seed": 0, "progress": False, "num_threads": 1}
SHIFTED, DEVIATING = slice(0, 10), slice(10, 20)
"""Genes every cell type raises alike, and genes whose rise depends on the cell's state."""


def cells(deviation: float) -> tuple[AnnData, str, int]:
    """Log data of 5 cell types: half of each type's simulated control cells stay control, the
    other half get one shift (+1 on genes 0-9, the same in every type) plus ``deviation`` times
    the cell's expression of the most type-specific gene on genes 10-19: a response specific to
    the cell type, known exactly, that a network can read from the control cells. Returns the data,
    the held-out type (second highest in that gene, inside the training types' range) and the gene.
    """
    data = prepare(simulate(n_cell_types=5, n_genes=60, n_cells=160, seed=1), DatasetSpec(dose_key="dose"), n_hvg=0)
    data = data[data.obs["condition"] == "control"].copy()
    del data.obs["dose"]
    X, types = dense(data.X), data.obs["cell_type"].astype(str).to_numpy()
    means = np.stack([X[types == t].mean(0) for t in np.unique(types)])
    marker = int(np.argmax(means.var(0)))
    perturbed = np.zeros(len(X), dtype=bool)
    for t in np.unique(types):
        perturbed[np.flatnonzero(types == t)[::2]] = True
    X[perturbed, SHIFTED] += 1.0
    X[perturbed, DEVIATING] += deviation * X[perturbed, marker : marker + 1]
    data.X = X
    data.obs["condition"] = np.where(perturbed, "stimulated", "control")
    held_out = str(np.unique(types)[np.argsort(means[:, marker])[-2]])
    return data, held_out, marker


def changes(data: AnnData, held_out: str, model: PerturbationModel) -> dict[str, np.ndarray]:
    """On the held-out type: the true mean change, mean shift's, and the model's."""
    types, condition = data.obs["cell_type"] == held_out, data.obs["condition"]
    control = data[types & (condition == "control")]
    start = dense(control.X).mean(0)
    train = data[data.obs["cell_type"] != held_out]
    anchor = get_model("mean_shift")(SPEC).fit(train).predict(control, "stimulated")
    return {
        "truth": dense(data[types & (condition == "stimulated")].X).mean(0) - start,
        "anchor": dense(anchor.X).mean(0) - start,
        "model": dense(model.predict(control, "stimulated").X).mean(0) - start,
    }


def fit(data: AnnData, held_out: str, **options) -> MultiTaskModel:
    seed_everything(0)
    model = get_model("mtae_anchored")(SPEC, **(FAST | options))
    return model.fit(data[data.obs["cell_type"] != held_out])  # type: ignore[return-value]


def test_when_the_truth_is_the_anchor_the_correction_stays_near_zero() -> None:
    data, held_out, _ = cells(deviation=0.0)
    model = fit(data, held_out)
    change = changes(data, held_out, model)
    assert model.anchor_of("stimulated")[0] == "mean_shift"
    assert np.corrcoef(change["model"], change["anchor"])[0, 1] > 0.99
    noise = np.linalg.norm(change["truth"] - change["anchor"])  # the anchor's own error
    assert np.linalg.norm(change["model"] - change["anchor"]) < 0.25 * noise
    # the change carries over between the training types, so the anchor keeps (nearly) all of it
    assert model.anchor_weights["stimulated"] > 0.9 and model.fit_summary()["anchors_at_no_change"] == 0


def test_a_cell_type_specific_deviation_is_recovered_on_the_held_out_type() -> None:
    data, held_out, _ = cells(deviation=1.0)
    model = fit(data, held_out)
    change = changes(data, held_out, model)
    deviation = {k: change[k] - change["anchor"] for k in ("truth", "model")}
    assert np.corrcoef(deviation["model"], deviation["truth"])[0, 1] >= 0.7
    assert model.gates["stimulated"] > 0.3
    record = model.predict(data[data.obs["condition"] == "control"][:5], "stimulated").uns
    assert (record["mtpert_prediction"]["anchor"], record["mtpert_prediction"]["gate"]) == (
        "mean_shift",
        model.gates["stimulated"],
    )
    [many] = model.predict_many([(data[data.obs["condition"] == "control"][:5], "stimulated", None)])
    keys = ("anchor", "gate", "control_denoising")  # the benchmark's path records them too
    assert [many.uns["mtpert_prediction"][k] for k in keys] == [record["mtpert_prediction"][k] for k in keys]
    error = {k: np.linalg.norm(change[k] - change["truth"]) for k in ("anchor", "model")}
    assert error["model"] < error["anchor"]


def test_with_one_training_group_the_model_returns_the_anchor_and_says_so() -> None:
    data, held_out, _ = cells(deviation=1.0)
    train = data[data.obs["cell_type"] == held_out]
    model = get_model("mtae_anchored")(SPEC, **(FAST | {"max_epochs": 2})).fit(train)
    assert model.gates == {} and model.anchor_of("stimulated") == ("mean_shift", 0.0)
    assert "1 training group: no group to hold out" in model.gate_note
    control = train[train.obs["condition"] == "control"]
    anchor = get_model("mean_shift")(SPEC).fit(train).predict(control, "stimulated").X
    np.testing.assert_allclose(model.predict(control, "stimulated").X, anchor, atol=1e-5)


def test_gates_and_anchors_survive_save_and_load(tmp_path) -> None:
    data, held_out, _ = cells(deviation=1.0)
    model = fit(data, held_out, max_epochs=3, gate_folds=2)
    model.save(tmp_path)
    loaded = PerturbationModel.load(tmp_path, device="cpu")
    assert isinstance(loaded, MultiTaskModel) and loaded.name == "mtae_anchored"
    assert loaded.gates == model.gates and loaded.gate_note == model.gate_note
    assert loaded.anchors.keys == model.anchors.keys  # type: ignore[union-attr]
    np.testing.assert_array_equal(loaded.anchors.shifts, model.anchors.shifts)  # type: ignore[union-attr]
    control = data[(data.obs["cell_type"] == held_out) & (data.obs["condition"] == "control")]
    np.testing.assert_array_equal(
        loaded.predict(control, "stimulated").X, model.predict(control, "stimulated").X
    )
    assert loaded.fit_summary()["gate_mean"] == model.fit_summary()["gate_mean"]
    assert (loaded.control_reference is None) == (model.control_reference is None)


def test_anchor_none_predicts_exactly_as_the_model_without_the_option() -> None:
    data, held_out, _ = cells(deviation=1.0)
    train = data[data.obs["cell_type"] != held_out]
    control = data[(data.obs["cell_type"] == held_out) & (data.obs["condition"] == "control")]
    tiny = FAST | {"max_epochs": 3}
    plain = get_model("mtae")(SPEC, **tiny).fit(train)
    none = MultiTaskModel(SPEC, anchor="none", **tiny).fit(train)
    assert none.name == "mtae" and none.anchors is None and "gate_mean" not in none.fit_summary()
    assert none.anchor_of("stimulated") == ("none", 1.0)
    np.testing.assert_array_equal(
        none.predict(control, "stimulated").X, plain.predict(control, "stimulated").X
    )


def test_an_anchor_needs_residual_prediction() -> None:
    with pytest.raises(ConfigError, match="prediction='residual'"):
        MultiTaskModel(SPEC, anchor="auto", objective="ot")
    assert MultiTaskModel(SPEC, anchor="additive").name == "mtae_anchored_additive"


def test_a_pair_never_trained_together_starts_from_the_sum_of_its_parts() -> None:
    data, held_out, _ = cells(deviation=0.0)
    data = data[data.obs["cell_type"] == held_out].copy()
    X = dense(data.X)
    condition = np.array(["control", "A", "B"] * len(X))[: len(X)]
    X[condition == "A", SHIFTED] += 1.0
    X[condition == "B", DEVIATING] += 1.0
    data.X, data.obs["condition"] = X, condition
    spec = DatasetSpec(combination_separator="+")
    model = get_model("mtae_anchored")(spec, **(FAST | {"max_epochs": 2})).fit(data)
    assert model.anchor_of("A+B") == ("additive", 0.0) and model.anchor_of("B") == ("mean_shift", 0.0)
    control = data[data.obs["condition"] == "control"]
    additive = get_model("additive")(spec).fit(data).predict(control, "A+B").X
    np.testing.assert_allclose(model.predict(control, "B+A").X, additive, atol=1e-5)


def test_an_anchored_model_refuses_a_dose_it_has_no_anchor_for() -> None:
    spec = DatasetSpec(dose_key="dose")
    data = prepare(simulate(n_cell_types=2, n_genes=20, n_cells=20, doses=(0.5, 1.0), seed=0), spec, n_hvg=0)
    model = get_model("mtae_anchored")(spec, **(FAST | {"max_epochs": 2})).fit(data)
    assert not model.predicts_unseen_doses and get_model("mtae")(spec).predicts_unseen_doses
    assert model.anchor_of("stimulated", 0.5)[0] == "mean_shift"
    with pytest.raises(DataError, match="never seen alone at dose 0.7"):
        model.predict(data[data.obs["condition"] == "control"], "stimulated", 0.7)


@pytest.mark.parametrize("shrinkage", ["expected", "lower_bound"])
def test_anchor_weights_keep_a_change_that_carries_over_and_drop_one_that_does_not(shrinkage) -> None:
    rng = np.random.default_rng(0)
    shared = rng.normal(0, 1, 200)
    noise = np.full((3, 200), 0.01)  # the sampling variance of each group's change
    carried = shared + rng.normal(0, 0.1, (3, 200))
    unrelated = rng.normal(0, 1, (3, 200))  # each group's own response
    only_noise = rng.normal(0, 0.1, (3, 200))  # no effect: sampling noise of variance 0.01
    alone = np.stack([shared, np.full(200, np.nan), np.full(200, np.nan)])
    table = MeanChanges(
        [("carried", None), ("unrelated", None), ("only_noise", None), ("alone", None)],
        ["a", "b", "c"],
        np.stack([carried, unrelated, only_noise, alone]).astype(np.float32),
        np.stack([noise] * 4),
    )
    weights = anchor_weights(table, shrinkage)
    assert weights[0] > 0.95 and weights[1] < 0.15
    if shrinkage == "lower_bound":
        assert weights[2] == 0.0  # no better than noise: exactly no change
    else:  # a small weight, which keeps the sign of the mean change
        assert 0.0 < weights[2] < 0.1
    assert weights[3] == 1.0  # measured in one group: nothing to judge it by


def test_the_expected_shared_energy_is_the_truncated_normal_mean() -> None:
    """E[A | a] for a ~ N(A, s^2), A >= 0: a + s phi(a/s) / Phi(a/s), stable far below 0."""
    from mtpert.models.anchor import _expected_non_negative

    assert _expected_non_negative(0.0, 1.0) == pytest.approx(np.sqrt(2 / np.pi))
    assert _expected_non_negative(10.0, 1.0) == pytest.approx(10.0, abs=1e-12)  # clear agreement
    far = _expected_non_negative(-50.0, 1.0)  # clear disagreement: small, positive, finite
    assert 0 < far < 0.03 and far == pytest.approx(1 / 50, rel=0.01)
    assert _expected_non_negative(-1.0, 0.0) == 0.0 and _expected_non_negative(2.0, 0.0) == 2.0


def test_a_perturbation_whose_change_does_not_carry_over_is_predicted_as_no_change() -> None:
    data, held_out, _ = cells(deviation=0.0)
    X, types = dense(data.X), data.obs["cell_type"].astype(str).to_numpy()
    condition = data.obs["condition"].astype(str).to_numpy()
    # 'private': each type raises a different gene block; nothing the types share
    rng = np.random.default_rng(3)
    for i, t in enumerate(np.unique(types)):
        rows = np.flatnonzero((types == t) & (condition == "control"))[1::2]
        condition[rows] = "private"
        X[np.ix_(rows, range(20 + 5 * i, 25 + 5 * i))] += rng.uniform(0.5, 1.5)
    data.X, data.obs["condition"] = X, condition
    model = fit(data, held_out, max_epochs=10)
    assert model.anchor_weights["private"] < 0.1 and model.anchor_weights["stimulated"] > 0.9
    assert model.fit_summary()["anchors_near_no_change"] == 1
    assert "1 of 2 training conditions carry (almost) no change" in model.gate_note
    control = data[(data.obs["cell_type"] == held_out) & (data.obs["condition"] == "control")]
    predicted = dense(model.predict(control, "private").X).mean(0) - dense(control.X).mean(0)
    shift = dense(get_model("mean_shift")(SPEC).fit(data[data.obs["cell_type"] != held_out]).predict(control, "private").X).mean(0) - dense(control.X).mean(0)
    assert np.abs(predicted).max() < 0.25 * np.abs(shift).max()


def screen(synergy: float) -> tuple[AnnData, list[str]]:
    """One cell type's log data: control, 5 single activations (each raises its own 4 genes) and
    pairs of them, each pair the sum of its parts plus ``synergy`` on genes 40-49 (a response only
    two perturbations together give, the same for every pair). Returns the data and the 2 pairs
    to hold out."""
    data = prepare(simulate(n_cell_types=1, n_genes=60, n_cells=1200, seed=2), DatasetSpec(dose_key="dose"), n_hvg=0)
    data = data[data.obs["condition"] == "control"].copy()
    del data.obs["dose"]
    singles = list("ABCDE")
    pairs = ["A+B", "A+C", "B+C", "C+D", "D+E", "A+E", "B+E", "B+D", "A+D"]
    labels = ["control", *singles, *pairs]
    condition = np.array(labels * (data.n_obs // len(labels) + 1))[: data.n_obs]
    X = dense(data.X)
    for i, p in enumerate(singles):
        X[np.char.find(condition.astype(str), p) >= 0, 4 * i : 4 * i + 4] += 1.0
    X[np.char.find(condition.astype(str), "+") >= 0, 40:50] += synergy
    data.X, data.obs["condition"] = X, condition
    return data, ["B+D", "A+D"]


def deviations(data: AnnData, held: list[str], model: PerturbationModel, spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray]:
    """Over the held-out pairs: the true and the model's mean change minus the additive one."""
    train = data[~data.obs["condition"].isin(held)]
    control = data[data.obs["condition"] == "control"]
    additive = get_model("additive")(spec).fit(train)
    truth, predicted = [], []
    for pair in held:
        base = dense(additive.predict(control, pair).X).mean(0)
        truth.append(dense(data[data.obs["condition"] == pair].X).mean(0) - base)
        predicted.append(dense(model.predict(control, pair).X).mean(0) - base)
    return np.concatenate(truth), np.concatenate(predicted)


def test_a_non_additive_interaction_is_recovered_on_pairs_never_trained_together(tmp_path) -> None:
    spec = DatasetSpec(combination_separator="+")
    data, held = screen(synergy=1.0)
    seed_everything(0)
    model = get_model("mtae_anchored")(spec, **FAST).fit(data[~data.obs["condition"].isin(held)])
    # a synergy every pair shares is what the linear model's intercept holds: on the held-out
    # training pairs it beat the sum of the parts, so it anchors the combinations
    assert model.anchor_of("B+D") == ("linear", model.combination_gate)
    assert "combinations anchored on the linear model of their parts" in model.gate_note
    assert model.fit_summary()["linear_combination_anchor"] == 1.0
    assert model.combination_gate > 0.5 and "combination gate" in model.gate_note
    truth, predicted = deviations(data, held, model, spec)
    assert np.corrcoef(truth, predicted)[0, 1] >= 0.7
    assert np.linalg.norm(predicted - truth) < 0.5 * np.linalg.norm(truth)  # most of it, not a trace
    loaded = PerturbationModel.load(model.save(tmp_path), device="cpu")
    control = data[data.obs["condition"] == "control"]
    assert loaded.anchor_of("B+D") == model.anchor_of("B+D")
    np.testing.assert_array_equal(loaded.predict(control, "B+D").X, model.predict(control, "B+D").X)


def test_pairs_that_are_the_sum_of_their_parts_stay_near_the_sum() -> None:
    spec = DatasetSpec(combination_separator="+")
    data, held = screen(synergy=0.0)
    seed_everything(0)
    model = get_model("mtae_anchored")(spec, **FAST).fit(data[~data.obs["condition"].isin(held)])
    truth, predicted = deviations(data, held, model, spec)
    # no synergy is invented where the test above recovers one of 1 (genes 40-49 of each pair),
    # and the prediction is no worse than the sum on the measured pairs (whose misses share the
    # control cells' noise, which the linear anchor's intercept and the correction pick up)
    synergy_genes = np.r_[40:50, 100:110]
    assert abs(predicted[synergy_genes].mean()) < 0.1
    assert np.linalg.norm(predicted - truth) <= np.linalg.norm(truth)


def test_anchor_groups_judge_the_anchor_over_replicates_of_one_cell_line() -> None:
    data = prepare(simulate(n_cell_types=1, n_genes=60, n_cells=600, seed=4), DatasetSpec(dose_key="dose"), n_hvg=0)
    data = data[data.obs["condition"] == "control"].copy()
    del data.obs["dose"]
    X = dense(data.X)
    n = data.n_obs
    data.obs["replicate"] = np.array(["r1", "r2", "r3"] * n)[:n]
    condition = np.array(["control", "control", "works", "silent"] * n)[:n]
    X[condition == "works", :10] += 1.0  # a knock-out that repeats; 'silent' changes nothing
    data.X, data.obs["condition"] = X, condition
    one_group = get_model("mtae_anchored")(SPEC, **(FAST | {"max_epochs": 2})).fit(data)
    assert one_group.anchor_weights == {"silent": 1.0, "works": 1.0}  # nothing to judge them by
    by_replicate = get_model("mtae_anchored")(SPEC, **(FAST | {"max_epochs": 2, "anchor_groups": "replicate"})).fit(data)
    # 60 genes of noise: the expected shared change is a fifth of the noise's, not nothing
    assert by_replicate.anchor_weights["silent"] < 0.25 and by_replicate.anchor_weights["works"] > 0.9
    control = data[data.obs["condition"] == "control"]
    silent = dense(by_replicate.predict(control, "silent").X).mean(0) - dense(control.X).mean(0)
    assert np.abs(silent).max() < 0.05
    with pytest.raises(DataError, match="anchor_groups='plate' is not a column of obs"):
        get_model("mtae_anchored")(SPEC, **(FAST | {"anchor_groups": "plate"})).fit(data)
    with pytest.raises(ConfigError, match="set anchor='auto'"):
        MultiTaskModel(SPEC, anchor_groups="replicate")


def test_an_anchor_weight_is_the_best_weight_for_the_mean_of_all_groups() -> None:
    """Each of 3 groups changes by a shared part plus a part of its own as large: the mean of the
    3 predicts a new group's change best at weight 1 / (1 + 1/3), not at the 1 / (1 + 1/2)
    that leaving one group out finds for a mean of 2."""
    rng = np.random.default_rng(1)
    shared = rng.normal(0, 1, 20_000)
    changes = shared + rng.normal(0, 1, (3, 20_000))
    table = MeanChanges([("stimulated", None)], ["a", "b", "c"], changes[None].astype(np.float32), np.zeros((1, 3, 20_000)))
    assert anchor_weights(table)[0] == pytest.approx(0.75, abs=0.02)


def test_an_additive_anchor_holds_out_only_combinations_to_gate_them() -> None:
    """anchor='additive' anchors singles on their own change too; the combination gate's inner
    folds hold out pairs only (holding out a single left its pairs without an anchor: a crash)."""
    spec = DatasetSpec(combination_separator="+")
    data, held = screen(synergy=1.0)
    seed_everything(0)
    model = MultiTaskModel(spec, anchor="additive", **FAST).fit(data[~data.obs["condition"].isin(held)])
    assert "chosen on inner folds of the 7 training combinations" in model.gate_note
    assert model.anchor_of("B+D") == ("additive", model.combination_gate)


def replicates(batch: float) -> AnnData:
    """Log data of one simulated cell line in 3 replicates, half of each replicate's cells
    knocked out (+1 on genes 0-9), each replicate's cells raised by ``batch`` times its own
    random offset per gene: 0 makes replicates whose control means differ by sampling noise only."""
    data = prepare(simulate(n_cell_types=1, n_genes=60, n_cells=900, seed=4), DatasetSpec(dose_key="dose"), n_hvg=0)
    data = data[data.obs["condition"] == "control"].copy()
    del data.obs["dose"]
    X, n, rng = dense(data.X), data.n_obs, np.random.default_rng(0)
    replicate = np.array(["r1", "r2", "r3"] * n)[:n]
    condition = np.where(rng.random(n) < 0.5, "control", "knockout")
    X[condition == "knockout", :10] += 1.0
    for r in ("r1", "r2", "r3"):
        X[replicate == r] += batch * rng.normal(0, 1, X.shape[1])
    data.X, data.obs["condition"], data.obs["replicate"] = np.maximum(X, 0), condition, replicate
    return data


@pytest.mark.parametrize("batch", [0.0, 1.0])
def test_the_control_cells_noise_is_removed_where_replicates_differ_by_noise_alone(batch: float) -> None:
    """A replicate held out: where replicates differ by sampling noise only, denoising pays on the
    training replicates, and the prediction lands closer to the held-out knock-out cells than
    without; where each replicate has its own offset, which its knock-out cells share, it does not
    pay there and the prediction is the one without."""
    data = replicates(batch)
    obs = data.obs
    held = (obs["replicate"] == "r3").to_numpy()
    train = data[~(held & (obs["condition"] == "knockout").to_numpy())]
    control = data[held & (obs["condition"] == "control").to_numpy()]
    truth = dense(data[held & (obs["condition"] == "knockout").to_numpy()].X).mean(0)
    options = FAST | {"max_epochs": 5, "anchor_groups": "replicate"}
    denoised = get_model("mtae_anchored")(SPEC, **options).fit(train)
    plain = get_model("mtae_anchored")(SPEC, **(options | {"denoise_control": False})).fit(train)
    assert plain.control_reference is None and "denoise_control=False" in plain.gate_note
    record = denoised.predict(control, "knockout").uns["mtpert_prediction"]
    error = {
        name: float(np.sum((dense(m.predict(control, "knockout").X).mean(0) - truth) ** 2))
        for name, m in (("denoised", denoised), ("plain", plain))
    }
    if batch == 0.0:
        assert denoised.fit_summary()["controls_denoised"] == 1.0 and "control cells denoised" in denoised.gate_note
        assert record["control_denoising"] > 0.5 and error["denoised"] < 0.8 * error["plain"]
        # the cells' genes in another order, plus one the model does not know: the same prediction
        shuffled = AnnData(dense(control.X)[:, ::-1], obs=control.obs, var=control.var.iloc[::-1])
        extra = AnnData(np.hstack([dense(shuffled.X), np.ones((shuffled.n_obs, 1))]), obs=control.obs)
        extra.var_names = [*shuffled.var_names, "not_in_training"]
        again = denoised.predict(extra, "knockout")
        np.testing.assert_allclose(again.X, denoised.predict(control, "knockout").X, atol=1e-5)
        assert again.uns["mtpert_prediction"]["control_denoising"] == pytest.approx(record["control_denoising"], rel=1e-4)
    else:
        assert denoised.control_reference is None and "no control denoising" in denoised.gate_note
        assert record["control_denoising"] == 0.0 and error["denoised"] == pytest.approx(error["plain"])


def test_between_cell_types_the_control_cells_are_not_denoised() -> None:
    data, held_out, _ = cells(deviation=0.0)
    model = fit(data, held_out, max_epochs=3, gate_folds=0)
    assert model.control_reference is None and model.fit_summary()["controls_denoised"] == 0.0
    assert "no control denoising (it did not pay on held-out training groups" in model.gate_note


def test_the_denoising_removes_a_deviation_within_the_noise_and_little_of_one_beyond_it() -> None:
    """Per gene, the positive-part James-Stein share ``min(1, v / d^2)`` of the deviation ``d``
    from the average: all of it within the noise (sd 1 here), a tenth at sqrt(10) sd."""
    rng = np.random.default_rng(2)
    n_cells = 10_000
    cells_ = rng.normal(0, np.sqrt(n_cells), (n_cells, 3))  # each gene's mean has variance 1
    mean = cells_.mean(0)
    reference = ControlReference((mean - np.array([0.5, np.sqrt(10), 0.0])).astype(np.float32))
    shift = reference.shift(cells_)
    noise = cells_.var(0, ddof=1) / n_cells
    np.testing.assert_allclose(shift[0], -0.5, rtol=1e-3)
    np.testing.assert_allclose(shift[1], -noise[1] / np.sqrt(10), rtol=1e-3)
    assert abs(shift[2]) < 1e-6  # no deviation, nothing to remove
    assert reference.weight(cells_[:1]) == 0.0  # one cell: no noise to measure
    table = MeanChanges([("knockout", None)], ["g0"], np.zeros((1, 1, 3), np.float32), None, mean[None])
    assert ControlReference.of(table, np.ones(1))[0] is None  # one group: nothing to judge it on


def test_a_model_saved_before_denoise_control_existed_loads_without_it(tmp_path) -> None:
    data = replicates(0.0)
    options = FAST | {"max_epochs": 2, "gate_folds": 0, "anchor_groups": "replicate", "denoise_control": False}
    model = get_model("mtae_anchored")(SPEC, **options).fit(data)
    model.save(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["hparams"]["denoise_control"], config["learned"]["control_denoised"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = PerturbationModel.load(tmp_path, device="cpu")
    assert not loaded.params.denoise_control and loaded.control_reference is None  # type: ignore[attr-defined]
    control = data[data.obs["condition"] == "control"]
    np.testing.assert_array_equal(loaded.predict(control, "knockout").X, model.predict(control, "knockout").X)
