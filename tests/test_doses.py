"""Multi-dose and cross-species studies on simulated data with a known answer.

The three split types (a cell type at every dose, one dose in every cell type, a species), the
rank metric across doses and the dose-response figure. The dose-interpolation behaviour of the
continuous dose encoding is tested in test_models.py (test_dose_encoding_interpolates_an_unseen_dose).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from matplotlib.figure import Figure

from mtpert._array import dense
from mtpert.data import (
    DatasetSpec,
    eligible_groups,
    holdout_condition,
    holdout_group,
    prepare,
    seed_everything,
    simulate,
    single_dose,
)
from mtpert.data.simulate import true_log_means, true_response
from mtpert.errors import DataError
from mtpert.metrics import condition_rank, rank_prediction
from mtpert.models import MultiTaskModel
from mtpert.pl.dose import dose_response, dose_response_means

SPEC = DatasetSpec(dose_key="dose")
DOSES = (0.1, 0.5, 2.5)
MODEL = {"hidden": (64,), "latent_dim": 16, "max_epochs": 50, "progress": False, "num_threads": 1}


@pytest.fixture(scope="module")
def dosed() -> tuple[AnnData, AnnData]:
    """Simulated counts (with the truth) and their log data: 4 cell types x 3 doses."""
    sim = simulate(n_cell_types=4, n_genes=100, n_cells=50, doses=DOSES, effect_size=1.5, seed=0)
    return sim, prepare(sim, SPEC, n_hvg=0)


def _cells(adata: AnnData, cell_type: str, condition: str, dose: float | None = None) -> AnnData:
    obs = adata.obs
    mask = (obs["cell_type"] == cell_type).to_numpy() & (obs["condition"] == condition).to_numpy()
    if dose is not None:
        mask &= np.isclose(obs["dose"], dose)
    return adata[mask]


def _halves(adata: AnnData, cell_type: str) -> tuple[dict[float, AnnData], dict[float, AnnData]]:
    """Each dose's cells of ``cell_type`` split in two: independent samples of the same truth."""
    cells = {d: _cells(adata, cell_type, "stimulated", d) for d in DOSES}
    return {d: c[::2] for d, c in cells.items()}, {d: c[1::2] for d, c in cells.items()}


# ---------------------------------------------------------------------- splits
def test_holdout_group_targets_every_dose(dosed) -> None:
    _, data = dosed
    split = holdout_group(data, SPEC, "type_0", min_cells=10)
    assert [(t.condition, t.dose) for t in split.targets] == [("stimulated", d) for d in DOSES]
    seen = split.train.union(split.val)
    for target in split.targets:
        assert target.truth.equals(_cells(data, "type_0", "stimulated", target.dose).obs_names)
        assert set(target.control) <= set(seen), (
            "the target's control cells are the input and stay visible"
        )
    assert not seen.intersection(split.heldout).size
    assert len(split.heldout) == 3 * 50


def test_holdout_condition_holds_one_dose_out_of_every_cell_type(dosed) -> None:
    _, data = dosed
    split = holdout_condition(data, SPEC, "stimulated", dose=0.5, min_cells=10)
    assert [t.group for t in split.targets] == SPEC.cell_types(data)
    train = data.obs.loc[split.train]
    assert not np.isclose(train["dose"], 0.5).any()
    assert set(train.loc[train["condition"] == "stimulated", "dose"]) == {0.1, 2.5}, (
        "the other doses train"
    )
    for target in split.targets:  # predicted from the group's control cells, which are trained on
        assert (data.obs.loc[target.control, "dose"] == SPEC.control_dose).all()
        assert set(target.control) <= set(split.train.union(split.val))
    with pytest.raises(DataError, match=r"no cells at dose 0\.3; its doses: \[0\.1, 0\.5, 2\.5\]"):
        holdout_condition(data, SPEC, "stimulated", dose=0.3)
    with pytest.raises(DataError, match="say which dose"):
        holdout_condition(data, SPEC, "stimulated")
    with pytest.raises(DataError, match="no dose key"):
        holdout_condition(data, DatasetSpec(), "stimulated", dose=0.5)
    with pytest.raises(DataError, match="available conditions"):
        holdout_condition(data, SPEC, "drug", dose=0.5)


def test_small_targets_are_held_out_but_not_scored(dosed) -> None:
    _, data = dosed
    few = _cells(data, "type_0", "stimulated", 0.1).obs_names[5:]
    data = data[~data.obs_names.isin(few)]
    split = holdout_group(data, SPEC, "type_0", min_cells=10)
    assert [t.dose for t in split.targets] == [0.5, 2.5]
    assert len(split.heldout) == 5 + 2 * 50, (
        "the 5 cells at dose 0.1 are not scored, but never trained on"
    )
    assert not split.train.union(split.val).intersection(split.heldout).size
    table = eligible_groups(data, SPEC, min_cells=10)
    assert table.loc["type_0", "eligible"] and table.loc["type_0", "n_perturbed"] == 50
    fewer = data[~data.obs_names.isin(_cells(data, "type_0", "stimulated").obs_names[::2])]
    with pytest.raises(DataError, match="at most 25 perturbed cells per condition and dose"):
        holdout_group(fewer, SPEC, "type_0", min_cells=40)


def test_single_dose_keeps_control_and_one_dose_for_single_condition_models(dosed) -> None:
    _, data = dosed
    cells, spec = single_dose(data, SPEC, 0.5)
    assert spec.dose_key is None and spec.cell_type_key == SPEC.cell_type_key
    spec.validate(cells)
    assert set(cells.obs["dose"]) == {0.0, 0.5}
    assert cells.n_obs == 4 * 50 * 2
    with pytest.raises(DataError, match=r"No perturbed cells at dose 0\.3"):
        single_dose(data, SPEC, 0.3)


# ---------------------------------------------------------------------- species
@pytest.fixture(scope="module")
def species() -> AnnData:
    return simulate(n_species=3, n_cell_types=2, n_genes=200, n_cells=40, effect_size=1.5, seed=0)


def test_species_share_conserved_genes_and_differ_in_others(species) -> None:
    truth = species.uns["simulation"]
    assert species.obs["species"].cat.categories.tolist() == ["species_0", "species_1", "species_2"]
    assert DatasetSpec().cell_types(species)[:2] == ["species_0.type_0", "species_0.type_1"]
    conserved = truth["conserved"]["stimulated"]
    assert len(conserved) == 10  # half of the 20 responsive genes
    own = {s: set(g["stimulated"]) - set(conserved) for s, g in truth["species_responsive"].items()}
    assert all(len(genes) == 10 for genes in own.values()) and own["species_1"] != own["species_2"]
    a = true_response(species, "species_1.type_0", "stimulated")
    b = true_response(species, "species_2.type_0", "stimulated")
    np.testing.assert_allclose(a[conserved], b[conserved])  # same effects in every species
    assert (b[sorted(own["species_2"])] != 0).all() and (
        a[sorted(own["species_2"] - own["species_1"])] == 0
    ).all()
    with pytest.raises(DataError, match="conserved_fraction"):
        simulate(n_species=2, conserved_fraction=1.5)
    with pytest.raises(DataError, match="already an obs key"):
        simulate(n_species=2, species_key="dose")
    log = prepare(species, DatasetSpec(), n_hvg=0)  # the data show the truth
    ctype = "species_2.type_1"
    measured = dense(_cells(log, ctype, "stimulated").X).mean(0) - dense(
        _cells(log, ctype, "control").X
    ).mean(0)
    responsive = log.var_names.isin(truth["species_responsive"]["species_2"]["stimulated"])
    assert (
        np.corrcoef(measured[responsive], true_response(species, ctype, "stimulated")[responsive])[
            0, 1
        ]
        > 0.9
    )


def test_species_split_transfers_the_conserved_response(species) -> None:
    """Held out, a species' conserved response is learned from the others; its own genes are not."""
    spec = DatasetSpec()
    data = prepare(species, spec, n_hvg=0)
    split = holdout_group(data, spec, "species_2", group_key="species", min_cells=10)
    (target,) = split.targets
    assert set(data.obs.loc[target.truth, "species"]) == {"species_2"}
    seed_everything(0)
    model = MultiTaskModel(spec, **{**MODEL, "max_epochs": 40}).fit(
        split.subset(data, "train"), split.subset(data, "val")
    )
    truth = species.uns["simulation"]
    conserved = data.var_names.isin(truth["conserved"]["stimulated"])
    own = data.var_names.isin(truth["species_responsive"]["species_2"]["stimulated"]) & ~conserved
    for ctype in ("species_2.type_0", "species_2.type_1"):
        control = data[target.control][data.obs.loc[target.control, "cell_type"] == ctype]
        change = dense(model.predict(control, "stimulated").X).mean(0) - dense(control.X).mean(0)
        true = (
            true_log_means(species, ctype, "stimulated") - true_log_means(species, ctype, "control")
        ).to_numpy()
        r = {
            name: np.corrcoef(change[m], true[m])[0, 1]
            for name, m in (("conserved", conserved), ("own", own))
        }
        error = {
            name: np.sqrt(((change[m] - true[m]) ** 2).mean())
            for name, m in (("conserved", conserved), ("own", own))
        }
        assert r["conserved"] > 0.7 and r["own"] < r["conserved"], (ctype, r)
        assert error["conserved"] < 0.6 * error["own"], (ctype, error)


# ---------------------------------------------------------------------- a model across doses
@pytest.fixture(scope="module")
def predicted(dosed) -> tuple[AnnData, AnnData]:
    """A multi-task model with the dose encoding, type_0 held out at every dose; its predictions."""
    _, data = dosed
    split = holdout_group(data, SPEC, "type_0", min_cells=10)
    seed_everything(0)
    model = MultiTaskModel(SPEC, **MODEL).fit(
        split.subset(data, "train"), split.subset(data, "val")
    )
    control = data[split.targets[0].control]
    preds = []
    for target in split.targets:
        pred = model.predict(control, target.condition, target.dose)
        pred.obs_names = [f"{name}@{target.dose:g}" for name in pred.obs_names]
        preds.append(pred)
    return control, ad.concat(preds)


def test_predicted_response_grows_with_dose_and_ranks_above_chance(dosed, predicted) -> None:
    sim, data = dosed
    control, preds = predicted
    full = (
        true_log_means(sim, "type_0", "stimulated", DOSES[-1])
        - true_log_means(sim, "type_0", "control")
    ).to_numpy()
    change = {
        d: dense(preds[np.isclose(preds.obs["dose"], d)].X).mean(0) - dense(control.X).mean(0)
        for d in DOSES
    }
    along = [float(change[d] @ full / (full @ full)) for d in DOSES]
    assert along[0] < along[1] < along[2], along
    ranks = rank_prediction(data, preds, SPEC)
    assert list(ranks.columns) == [
        "cell_type",
        "condition",
        "dose",
        "metric",
        "value",
        "spread",
        "best",
        "higher_is_better",
    ]
    assert ranks["dose"].tolist() == list(DOSES) and (ranks["metric"] == "rank").all()
    assert ranks["value"].mean() < 0.5, ranks  # a dose-blind prediction scores exactly 0.5
    blind = preds[np.isclose(preds.obs["dose"], DOSES[-1])]
    blind = ad.concat([blind.copy() for _ in DOSES], keys=[str(d) for d in DOSES], index_unique="-")
    blind.obs["dose"] = np.repeat(DOSES, len(control))
    assert rank_prediction(data, blind, SPEC)["value"].mean() == pytest.approx(0.5)


def test_dose_response_figure_and_table(dosed, predicted) -> None:
    _, data = dosed
    _, preds = predicted
    truth = data[data.obs["cell_type"] == "type_0"]
    table = dose_response_means(truth, {"mtae": preds}, SPEC, n_genes=4)
    genes = list(dict.fromkeys(table["gene"]))
    top = _cells(data, "type_0", "stimulated", DOSES[-1])
    control = _cells(data, "type_0", "control")
    t = np.abs(dense(top[:, genes].X).mean(0) - dense(control[:, genes].X).mean(0))
    assert len(genes) == 4 and t.min() > 0.3, "the top DEGs of the highest dose respond strongly"
    rows = table.set_index(["source", "dose", "gene"])["mean"].sort_index()
    assert sorted(table.loc[table["source"] == "truth", "dose"].unique()) == [0.0, *DOSES]
    np.testing.assert_allclose(
        rows.loc["truth", 0.0][genes], dense(control[:, genes].X).mean(0), rtol=1e-6
    )
    np.testing.assert_allclose(
        rows.loc["truth", 2.5][genes], dense(top[:, genes].X).mean(0), rtol=1e-6
    )
    assert sorted(table.loc[table["source"] == "mtae", "dose"].unique()) == list(DOSES)
    fig = dose_response(truth, {"mtae": preds}, SPEC, n_genes=4, ncols=2)
    assert isinstance(fig, Figure) and len(fig.axes) == 4
    assert [ax.get_title() for ax in fig.axes] == genes
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["truth", "mtae"]
    with pytest.raises(DataError, match="pass the cells of one"):
        dose_response_means(data, {"mtae": preds}, SPEC)


# ---------------------------------------------------------------------- the rank metric itself
def test_rank_is_zero_for_the_truth_and_half_for_a_dose_blind_prediction(dosed) -> None:
    _, data = dosed
    truths, other = _halves(data, "type_1")
    control = _cells(data, "type_1", "control")
    assert (condition_rank(truths, truths) == 0.0).all()
    assert (
        condition_rank(truths, truths, control=control, n_degs=10, distance="cosine") == 0.0
    ).all()
    blind = {d: truths[DOSES[1]] for d in DOSES}
    assert condition_rank(truths, blind).mean() == pytest.approx(0.5)
    # an independent sample of each dose, and a prediction of only some doses
    assert (condition_rank(other, truths).to_numpy() <= 0.5).all()
    assert condition_rank(other, {2.5: truths[2.5]}).index.tolist() == [2.5]
    # cosine compares directions, which a dose series shares: it cannot tell these doses apart
    assert (
        condition_rank(other, truths, control=control, distance="cosine").mean()
        > condition_rank(other, truths).mean()
    )


def test_rank_errors_name_the_problem(dosed) -> None:
    _, data = dosed
    truths, _ = _halves(data, "type_1")
    with pytest.raises(DataError, match="at least two conditions"):
        condition_rank({0.1: truths[0.1]}, {0.1: truths[0.1]})
    with pytest.raises(DataError, match=r"no truth for \[7\]"):
        condition_rank(truths, {7: truths[0.1]})
    with pytest.raises(DataError, match="control cells"):
        condition_rank(truths, truths, n_degs=10)
    with pytest.raises(DataError, match="distance must be one of"):
        condition_rank(truths, truths, distance="manhattan")  # type: ignore[arg-type]
    genes = pd.Index(truths[0.1].var_names)
    with pytest.raises(DataError, match="genes differ"):
        condition_rank(truths, {0.1: truths[0.1][:, genes[:50]]})
