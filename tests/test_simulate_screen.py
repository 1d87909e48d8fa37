"""The screen simulator: a known network, pairs, inert guides, and what the data shows."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats

from mtpert.data import (
    DatasetSpec,
    detect_kind,
    heldout_mask,
    holdout_group,
    log_normalize,
    prepare,
    simulate_screen,
    true_log_means,
    true_response,
)
from mtpert.errors import DataError
from mtpert.models import MeanShift

LINES = ["line_0", "line_1", "line_2"]


@pytest.fixture(scope="module")
def screen():
    return simulate_screen(seed=3)


@pytest.fixture(scope="module")
def direct_screen():
    """Without second-order effects, so that every change is one edge away from a regulator."""
    return simulate_screen(seed=5, second_order=False)


def _spec(adata) -> DatasetSpec:
    return DatasetSpec.from_dict(adata.uns["simulation"]["spec"])


def _mean_counts(adata, line: str, condition: str, guide: str | None = None) -> np.ndarray:
    obs = adata.obs
    mask = (obs["cell_type"] == line).to_numpy() & (obs["perturbation"] == condition).to_numpy()
    if guide is not None:
        mask &= (obs["guide"] == guide).to_numpy()
    return np.asarray(adata.X[mask].mean(axis=0)).ravel()


def _empirical_lfc(adata, line: str, condition: str, guide: str | None = None) -> np.ndarray:
    """Natural-log ratio of mean raw counts, perturbed over the line's control cells."""
    control = _mean_counts(adata, line, "control")
    return np.log(_mean_counts(adata, line, condition, guide) + 0.1) - np.log(control + 0.1)


def _lfc_table(adata, condition: str) -> np.ndarray:
    """True log-fold changes of ``condition``, lines x genes."""
    return np.stack([true_response(adata, line, condition).to_numpy() for line in LINES])


def _own_change(adata, regulator: str) -> float:
    """The true log change of a perturbed regulator's own expression (mean guide efficiency)."""
    truth = adata.uns["simulation"]
    guides = truth["guides"]
    efficiency = guides.loc[guides["perturbation"] == regulator, "efficiency"].mean()
    return -truth["params"]["self_effect"] * efficiency


def test_same_seed_same_screen_other_seed_other_screen():
    a, b, c = simulate_screen(seed=1), simulate_screen(seed=1), simulate_screen(seed=2)
    assert (a.X != b.X).nnz == 0 and a.obs.equals(b.obs)
    np.testing.assert_array_equal(a.uns["simulation"]["lfc"], b.uns["simulation"]["lfc"])
    assert a.uns["simulation"]["network"].equals(b.uns["simulation"]["network"])
    assert (a.X != c.X).nnz > 0


def test_layout_spec_guides_and_truth_keys(screen):
    spec = _spec(screen)
    assert spec == DatasetSpec(
        condition_key="perturbation", combination_separator="+", guide_key="guide"
    )
    spec.validate(screen)
    assert screen.shape == (3 * (1 + 12 + 8) * 100, 200)
    assert (
        sp.isspmatrix_csr(screen.X)
        and screen.X.dtype == np.int32
        and detect_kind(screen) == "counts"
    )
    truth = screen.uns["simulation"]
    assert set(truth) == {
        "params", "spec", "groups", "genes", "mean_counts", "lfc", "responsive",
        "regulators", "network", "guides", "no_effect", "interactions",
    }  # fmt: skip
    regulators = list(truth["regulators"])
    assert regulators == list(screen.var_names[:12]) == spec.perturbations(screen)
    pairs = [c for c in spec.conditions(screen) if len(spec.parts(c)) == 2]
    assert len(pairs) == 8 and len(spec.conditions(screen)) == 20
    assert len(truth["no_effect"]) == 3 and set(truth["no_effect"]) <= set(regulators)
    # every cell's guides target its perturbation's parts; controls carry non-targeting guides
    guide_target = truth["guides"]["perturbation"]
    for condition, guide in (
        screen.obs[["perturbation", "guide"]].drop_duplicates().itertuples(index=False)
    ):
        assert tuple(guide_target[g] for g in guide.split("+")) == spec.parts(condition)
    assert screen.obs.loc[spec.is_control(screen), "guide"].str.startswith("non-targeting").all()
    counts = screen.obs.groupby(["cell_type", "perturbation", "replicate"], observed=True).size()
    assert set(counts) == {50}
    # regulators act on genes after them (no cycles), and some targets are shared
    network = truth["network"]
    position = {gene: i for i, gene in enumerate(screen.var_names)}
    assert all(
        position[s] < position[t] for s, t in zip(network["source"], network["target"], strict=True)
    )
    assert network["target"].duplicated().any()
    assert not network["source"].isin(truth["no_effect"]).any()


@pytest.mark.parametrize("second_order", [False, True])
def test_true_response_is_what_the_network_says(second_order):
    """A single perturbation's stored truth is its own change, its targets' (coefficient x that
    change), and with second_order one more step through the regulated regulators."""
    adata = simulate_screen(seed=11, n_cells=4, second_order=second_order)
    truth = adata.uns["simulation"]
    network = truth["network"]
    for regulator in truth["regulators"]:
        for line in LINES:
            expected = pd.Series(0.0, index=adata.var_names)
            change = (
                {}
                if regulator in truth["no_effect"]
                else {regulator: _own_change(adata, regulator)}
            )
            for gene, value in change.items():
                expected[gene] += value
            for _ in range(2 if second_order else 1):  # the direct targets, then one step further
                passed: dict[str, float] = {}
                for source, target, coefficient in network[["source", "target", line]].itertuples(
                    index=False
                ):
                    if source in change:
                        passed[target] = passed.get(target, 0.0) + coefficient * change[source]
                for gene, value in passed.items():
                    expected[gene] += value
                change = {g: v for g, v in passed.items() if g in truth["regulators"]}
            np.testing.assert_allclose(true_response(adata, line, regulator), expected, atol=1e-12)
    direct = simulate_screen(seed=11, n_cells=4, second_order=False).uns["simulation"]["lfc"]
    assert np.array_equal(truth["lfc"], direct) != second_order  # the second step reaches genes


def test_knocked_down_regulators_and_their_targets_move_as_stated(direct_screen):
    truth = direct_screen.uns["simulation"]
    network, genes = truth["network"], list(direct_screen.var_names)
    own_errors, stated, observed = [], [], []
    for line in LINES:
        control = _mean_counts(direct_screen, line, "control")
        for regulator in set(truth["regulators"]) - set(truth["no_effect"]):
            empirical = _empirical_lfc(direct_screen, line, regulator)
            own = _own_change(direct_screen, regulator)
            own_errors.append(empirical[genes.index(regulator)] - own)
            for target, coefficient in network.loc[
                network["source"] == regulator, ["target", line]
            ].itertuples(index=False):
                if control[genes.index(target)] >= 1:  # enough counts for a log ratio of means
                    stated.append(coefficient * own)
                    observed.append(empirical[genes.index(target)])
    own_errors, stated, observed = map(np.asarray, (own_errors, stated, observed))
    assert np.abs(own_errors).mean() < 0.15 and np.abs(own_errors).max() < 0.5
    activated, repressed = stated < -0.3, stated > 0.3  # a knock-down lowers activated targets
    assert activated.sum() > 30 and repressed.sum() > 30
    assert (observed[activated] < 0).mean() > 0.95 and (observed[repressed] > 0).mean() > 0.95
    assert np.abs(observed - stated).mean() < 0.15
    assert stats.pearsonr(stated, observed)[0] > 0.95


def test_activation_raises_the_regulator_and_reverses_its_targets():
    down = simulate_screen(seed=4, n_cells=60)
    up = simulate_screen(seed=4, n_cells=60, mode="activation")
    for regulator in up.uns["simulation"]["regulators"]:
        np.testing.assert_allclose(_lfc_table(up, regulator), -_lfc_table(down, regulator))
    active = sorted(
        set(up.uns["simulation"]["regulators"]) - set(up.uns["simulation"]["no_effect"])
    )
    own = [_empirical_lfc(up, "line_1", r)[list(up.var_names).index(r)] for r in active]
    assert min(own) > 0.8  # raised by about self_effect (1.5) times the guide efficiency


def test_pairs_add_their_parts_except_on_the_interacting_genes(screen):
    truth, spec = screen.uns["simulation"], _spec(screen)
    pairs = [c for c in spec.conditions(screen) if len(spec.parts(c)) == 2]
    inert = set(truth["no_effect"])
    eligible = [p for p in pairs if not inert & set(spec.parts(p))]
    assert set(truth["interactions"]) <= set(eligible)
    assert len(truth["interactions"]) == round(0.5 * len(eligible)) > 0
    interacting, elsewhere = [], []
    for pair in pairs:
        a, b = spec.parts(pair)
        departure = _lfc_table(screen, pair) - _lfc_table(screen, a) - _lfc_table(screen, b)
        on = screen.var_names.isin(truth["interactions"].get(pair, []))
        np.testing.assert_allclose(departure[:, ~on], 0.0, atol=1e-12)
        assert (departure[:, on] != 0).all()
        moved = screen.var_names.isin(truth["responsive"][pair])
        for i, line in enumerate(LINES):
            empirical = (
                _empirical_lfc(screen, line, pair)
                - _empirical_lfc(screen, line, a)
                - _empirical_lfc(screen, line, b)
            )
            expressed = _mean_counts(screen, line, "control") >= 1
            interacting += list(
                zip(departure[i, on & expressed], empirical[on & expressed], strict=True)
            )
            elsewhere += list(empirical[moved & ~on & expressed])
    true_departure, observed_departure = np.asarray(interacting).T
    assert stats.pearsonr(true_departure, observed_departure)[0] > 0.85
    assert np.abs(observed_departure - true_departure).mean() < 0.2
    assert (
        np.abs(elsewhere).mean() < 0.2
    )  # sampling noise of four groups, as on the interacting genes
    assert np.abs(true_departure).mean() > 0.4


def test_no_effect_perturbations_are_indistinguishable_from_control(screen):
    truth = screen.uns["simulation"]
    logged = screen.copy()
    log_normalize(logged)
    X, obs = logged.X.toarray(), screen.obs

    def cells(line: str, condition: str) -> np.ndarray:
        return X[((obs["cell_type"] == line) & (obs["perturbation"] == condition)).to_numpy()]

    pvalues, own = [], []
    for line in LINES:
        control = cells(line, "control")
        for regulator in truth["regulators"]:
            welch = stats.ttest_ind(cells(line, regulator), control, equal_var=False).pvalue
            if regulator in truth["no_effect"]:
                assert (true_response(screen, line, regulator) == 0).all()
                pvalues.append(np.nan_to_num(welch, nan=1.0))
            else:
                own.append(welch[list(screen.var_names).index(regulator)])
    pvalues = np.concatenate(pvalues)
    assert 0.02 < (pvalues < 0.05).mean() < 0.08  # what chance alone gives: 0.05
    assert max(own) < 1e-3  # every working guide's own knock-down is plain


@pytest.mark.parametrize("line_specificity", [0.0, 0.3, 0.7, 1.0])
def test_line_specificity_sets_how_much_lines_differ(line_specificity):
    adata = simulate_screen(
        seed=6, n_cells=2, n_genes=400, n_regulators=40, n_targets=20, n_pairs=0,
        line_specificity=line_specificity,
    )  # fmt: skip
    network = adata.uns["simulation"]["network"]
    correlations = [stats.pearsonr(network[a], network[b])[0] for a, b in combinations(LINES, 2)]
    assert np.mean(correlations) == pytest.approx(1.0 - line_specificity, abs=0.08)


def test_the_data_shows_how_lines_differ(screen):
    truth = screen.uns["simulation"]
    true_difference, observed_difference = [], []
    for regulator in set(truth["regulators"]) - set(truth["no_effect"]):
        moved = screen.var_names.isin(truth["responsive"][regulator])
        expressed = (_mean_counts(screen, "line_0", "control") >= 1) & (
            _mean_counts(screen, "line_1", "control") >= 1
        )
        keep = moved & expressed & ~screen.var_names.isin([regulator])
        true_difference += list(
            (
                true_response(screen, "line_0", regulator)
                - true_response(screen, "line_1", regulator)
            )[keep]
        )
        observed_difference += list(
            (
                _empirical_lfc(screen, "line_0", regulator)
                - _empirical_lfc(screen, "line_1", regulator)
            )[keep]
        )
    assert np.std(true_difference) > 0.3  # line_specificity 0.3: lines differ visibly
    assert stats.pearsonr(true_difference, observed_difference)[0] > 0.9


def test_guides_differ_in_efficiency():
    adata = simulate_screen(seed=8, n_cells=160, guide_efficiency=(0.3, 1.0), n_pairs=0)
    truth = adata.uns["simulation"]
    guides, self_effect = truth["guides"], truth["params"]["self_effect"]
    stated, observed = [], []
    for guide, regulator, efficiency in guides.itertuples():
        if regulator in set(truth["regulators"]) - set(truth["no_effect"]):
            for line in LINES:
                stated.append(-self_effect * efficiency)
                observed.append(
                    _empirical_lfc(adata, line, regulator, guide)[
                        list(adata.var_names).index(regulator)
                    ]
                )
    stated, observed = np.asarray(stated), np.asarray(observed)
    assert np.ptp(stated) > 0.6
    assert stats.pearsonr(stated, observed)[0] > 0.9 and np.abs(observed - stated).mean() < 0.15


def test_mean_shift_recovers_a_held_out_line_and_invents_no_effect(screen):
    spec = _spec(screen)
    data = prepare(screen, spec, exclude=heldout_mask(screen, spec, "line_2"))
    split = holdout_group(data, spec, "line_2")
    assert {t.condition for t in split.targets} == set(spec.conditions(screen))
    train = split.subset(data, "train")
    model = MeanShift(spec).fit(train)
    inert = set(screen.uns["simulation"]["no_effect"])
    control_truth = true_log_means(screen, "line_2", "control", n_samples=1000)
    errors, no_change_errors, invented = [], [], []
    for target in split.targets:
        control = data[target.control]
        predicted = (
            model.predict(control, target.condition).X.mean(axis=0)
            - np.asarray(control.X.mean(axis=0)).ravel()
        )
        change = (
            true_log_means(screen, "line_2", target.condition, n_samples=1000) - control_truth
        ).to_numpy()
        if target.condition in inert:  # the predicted change against what sampling noise gives
            invented.append(np.mean(predicted**2) / _shift_noise(train, spec, target.condition))
        else:
            errors.append(np.mean((predicted - change) ** 2))
            no_change_errors.append(np.mean(change**2))
    errors, no_change_errors = np.asarray(errors), np.asarray(no_change_errors)
    # the line-specific part of a response cannot be learned, and some responses are within noise
    assert errors.sum() < 0.7 * no_change_errors.sum()
    assert (errors < no_change_errors).mean() >= 0.75
    assert len(invented) == 3 and max(invented) < 2.0  # about 1: no effect is invented


def _shift_noise(train, spec: DatasetSpec, condition: str) -> float:
    """Expected mean square (over genes) of mean_shift's change for a condition without effect:
    the sampling variance of each line's perturbed minus control mean, averaged over lines."""
    perturbed = train[(train.obs[spec.condition_key] == condition).to_numpy()]
    lines = spec.cell_types(perturbed)  # the lines mean_shift averages over
    variance = 0.0
    for line in lines:
        in_line = (train.obs[spec.cell_type_key] == line).to_numpy()
        for label in (spec.control, condition):
            X = train[in_line & (train.obs[spec.condition_key] == label).to_numpy()].X.toarray()
            variance += X.var(axis=0, ddof=1) / len(X)
    return float(np.mean(variance)) / len(lines) ** 2


def test_h5ad_round_trip(screen, tmp_path):
    import anndata as ad

    screen.write_h5ad(tmp_path / "screen.h5ad")
    back = ad.read_h5ad(tmp_path / "screen.h5ad")
    assert (back.X != screen.X).nnz == 0
    for key in ("network", "guides"):
        assert back.uns["simulation"][key].equals(screen.uns["simulation"][key])
    np.testing.assert_array_equal(_lfc_table(back, "reg_00"), _lfc_table(screen, "reg_00"))
    assert list(back.uns["simulation"]["interactions"]) == list(
        screen.uns["simulation"]["interactions"]
    )
    assert list(back.uns["simulation"]["no_effect"]) == list(screen.uns["simulation"]["no_effect"])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"n_regulators": 200}, "must exceed n_regulators"),
        ({"n_targets": 500}, "n_targets must be in"),
        ({"n_pairs": 100}, "the pairs of 12 regulators"),
        ({"mode": "knockout"}, "mode must be one of"),
        ({"no_effect_fraction": 1.0}, "no_effect_fraction"),
        ({"guide_efficiency": (0.0, 1.0)}, "guide_efficiency"),
        ({"spec": DatasetSpec(combination_separator="_")}, "occurs in the regulator names"),
        ({"spec": DatasetSpec(dose_key="dose")}, "no doses"),
        ({"spec": DatasetSpec(batch_key="batch")}, "batch_key"),
    ],
)
def test_errors_name_the_problem(arguments, message):
    with pytest.raises(DataError, match=message):
        simulate_screen(**arguments)


def test_true_response_refuses_a_dose_on_a_screen(screen):
    with pytest.raises(DataError, match="without doses"):
        true_response(screen, "line_0", "reg_00", dose=1.0)
