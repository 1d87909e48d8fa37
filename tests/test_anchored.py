"""Anchored prediction of the multi-task family: a baseline's change plus a gated correction."""

from __future__ import annotations

import numpy as np
import pytest
from anndata import AnnData

from mtpert._array import dense
from mtpert.data import DatasetSpec, seed_everything, simulate
from mtpert.data.pp import prepare
from mtpert.errors import ConfigError, DataError
from mtpert.models import MultiTaskModel, PerturbationModel, get_model

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
    assert model.gates["stimulated"] < 0.4 and model.fit_summary()["gate_max"] < 0.4


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
    error = {k: np.linalg.norm(change[k] - change["truth"]) for k in ("anchor", "model")}
    assert error["model"] < error["anchor"]


def test_with_one_training_group_the_model_returns_the_anchor_and_says_so() -> None:
    data, held_out, _ = cells(deviation=1.0)
    train = data[data.obs["cell_type"] == held_out]
    model = get_model("mtae_anchored")(SPEC, **(FAST | {"max_epochs": 2})).fit(train)
    assert model.gates == {"stimulated": 0.0} and "every gate is 0" in model.gate_note
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
