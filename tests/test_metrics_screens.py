"""Metrics for screens of many perturbations: direction and MSE on DEGs, discrimination, genetic
interactions of combinations, and the test of whether a perturbation has any detectable effect."""

from __future__ import annotations

import itertools
import math
from functools import partial

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

from mtpert.data.pp import prepare
from mtpert.data.spec import DatasetSpec
from mtpert.metrics import (
    METRICS,
    Condition,
    EvalPair,
    condition_rank,
    detectable_effects,
    discrimination,
    effect_test,
    evaluate,
    evaluate_across,
    genetic_interaction,
)
from mtpert.metrics.effect import N_PERMUTATIONS

from .conftest import data_dir

SCREEN = DatasetSpec(condition_key="perturbation", combination_separator="+")
DEG_METRICS = ["mse_top20", "direction_top20", "direction_top100"]
EFFECT_METRICS = ["detectable", "effect_false_positive"]
BASE = 1.3
"""Constant expression of hand-built cells: not an integer, so AnnData of it reads as log data."""


def values(table: pd.DataFrame) -> pd.Series:
    return table.set_index("metric")["value"]


def cells(change: list[float], n: int = 2) -> np.ndarray:
    """``n`` identical cells at ``BASE`` plus ``change``."""
    return np.tile(BASE + np.asarray(change, dtype=float), (n, 1))


def counts_like(n: int, means: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Log-normalized negative-binomial cells around ``means``."""
    counts = rng.negative_binomial(5, 5 / (5 + means), size=(n, len(means))).astype(float)
    return np.log1p(counts / np.maximum(counts.sum(1, keepdims=True), 1) * 1e4)


def screen(blocks: dict[str, np.ndarray]) -> AnnData:
    """One cell line of a screen: perturbation label -> its cells."""
    obs = pd.DataFrame(
        {
            "cell_type": "K562",
            "perturbation": [label for label, X in blocks.items() for _ in range(len(X))],
        }
    )
    obs.index = [f"c{i}" for i in range(len(obs))]
    n_genes = next(iter(blocks.values())).shape[1]
    var = pd.DataFrame(index=[f"g{i}" for i in range(n_genes)])
    return AnnData(np.vstack(list(blocks.values())), obs=obs, var=var)


# ---------------------------------------------------------------------- per target, on DEGs
def test_mse_and_direction_on_degs_by_hand() -> None:
    # true changes 4, -3, 2, -1 on the DEGs, 0 on g4 (no DEG); predicted 2, 3, 2, 0, 5
    control, truth = cells([0] * 5), cells([4, -3, 2, -1, 0])
    scores = values(evaluate(control, truth, cells([2, 3, 2, 0, 5]), metrics=DEG_METRICS))
    assert scores["direction_top20"] == scores["direction_top100"] == 0.5  # g0, g2 right
    assert scores["mse_top20"] == pytest.approx((4 + 36 + 0 + 1) / 4)  # g4 is no DEG
    perfect = values(evaluate(control, truth, truth, metrics=DEG_METRICS))
    assert (perfect["direction_top20"], perfect["mse_top20"]) == (1.0, 0.0)
    no_change = values(evaluate(control, truth, control, metrics=DEG_METRICS))
    assert no_change["direction_top20"] == 0.0  # a change of 0 has no direction
    assert no_change["mse_top20"] == pytest.approx((16 + 9 + 4 + 1) / 4)
    unchanged = values(evaluate(control, control.copy(), truth, metrics="direction_top20"))
    assert math.isnan(unchanged["direction_top20"])  # no true DEG, nothing to get right


def test_new_metrics_are_registered_with_best_value_direction_and_scope() -> None:
    expected = {
        "mse_top20": (0.0, False, "per_target"),
        "direction_top20": (1.0, True, "per_target"),
        "direction_top100": (1.0, True, "per_target"),
        "detectable": (1.0, True, "per_target"),
        "effect_false_positive": (0.0, False, "per_target"),
        "discrimination": (0.0, False, "across_targets"),
        "gi_pearson_top20": (1.0, True, "across_targets"),
        "gi_mse_top20": (0.0, False, "across_targets"),
    }
    for name, (best, higher, scope) in expected.items():
        metric = METRICS[name]
        assert (metric.best, metric.higher_is_better, metric.scope) == (best, higher, scope), name
        assert metric.description


# ---------------------------------------------------------------------- discrimination
def directions(
    n: int, n_genes: int = 40, seed: int = 0
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Control cells and ``n`` perturbations, each a distinct random change of every cell."""
    rng = np.random.default_rng(seed)
    control = BASE + 0.1 * rng.normal(size=(30, n_genes))
    changes = rng.normal(size=(n, n_genes))
    return control, {k: control + changes[k] for k in range(n)}


def test_discrimination_by_hand_and_its_axioms() -> None:
    control = cells([0, 0, 0])
    changes = np.diag([1.0, 1.0, 0.2])  # C is a weak perturbation
    truths = {name: cells(change) for name, change in zip("ABC", changes, strict=True)}
    assert discrimination(truths, truths, control=control) == {"A": 0.0, "B": 0.0, "C": 0.0}
    # A predicted with B's change: B is closer (1), C as far as A (a tie, 0.5), of 2 others
    assert discrimination(truths, {"A": truths["B"]}, control=control) == {"A": 0.75}
    # no change is equally far (cosine distance 1) from every truth: exactly 0.5
    no_change = dict.fromkeys("ABC", control)
    assert discrimination(truths, no_change, control=control) == {"A": 0.5, "B": 0.5, "C": 0.5}
    # A's direction at a third of its size: nearest to A by direction, to weak C by distance
    smaller = {"A": cells([0.3, 0, 0])}
    assert discrimination(truths, smaller, control=control) == {"A": 0.0}
    assert condition_rank(truths, smaller)["A"] == 0.5
    assert math.isnan(discrimination(truths, truths, control=None)["A"])


def test_discrimination_of_shuffled_predictions_is_about_one_half() -> None:
    control, truths = directions(30)
    order = np.random.default_rng(1).permutation(30)
    shuffled = {k: truths[int(order[k])] for k in truths}
    ranks = np.array(list(discrimination(truths, shuffled, control=control).values()))
    assert abs(ranks.mean() - 0.5) < 0.1
    assert np.array(list(discrimination(truths, truths, control=control).values())).max() == 0.0


# ---------------------------------------------------------------------- genetic interactions
GI_TRUE = np.array([0.2, -0.1, 0.5, -0.4])
CHANGE_A, CHANGE_B = np.array([1.0, 0, 0, 0.3]), np.array([0, 1.0, 0, 0.2])


def pair_screen() -> AnnData:
    """Control, A, B and A+B, whose change is A's + B's + ``GI_TRUE``; C+A's C is not measured."""
    return screen(
        {
            "control": cells([0] * 4),
            "A": cells(CHANGE_A),
            "B": cells(CHANGE_B),
            "A+B": cells(CHANGE_A + CHANGE_B + GI_TRUE),
            "C+A": cells(CHANGE_A + 0.7),
        }
    )


@pytest.mark.parametrize(
    ("predicted_gi", "pearson", "mse"),
    [
        (GI_TRUE, 1.0, 0.0),  # perfect
        (np.zeros(4), 0.0, np.mean(GI_TRUE**2)),  # the additive model
        (2 * GI_TRUE, 1.0, np.mean(GI_TRUE**2)),  # right genes and signs, twice too large
        (-GI_TRUE, -1.0, 4 * np.mean(GI_TRUE**2)),  # the opposite interaction
    ],
)
def test_genetic_interaction_by_hand(predicted_gi, pearson, mse) -> None:
    truth = pair_screen()
    pred = screen(
        {
            "A+B": cells(CHANGE_A + CHANGE_B + predicted_gi),
            "A": cells(CHANGE_A),
            "C+A": cells([0] * 4),
        }
    )
    table = evaluate_across(truth, pred, SCREEN).pivot_table(
        index="condition", columns="metric", values="value", dropna=False
    )
    assert table.loc["A+B", "gi_pearson_top20"] == pytest.approx(pearson)
    assert table.loc["A+B", "gi_mse_top20"] == pytest.approx(mse, abs=1e-12)
    # a single has no interaction; a pair with an unmeasured part has no additive expectation
    assert table.loc[["A", "C+A"], ["gi_pearson_top20", "gi_mse_top20"]].isna().all().all()


def test_genetic_interaction_reads_the_parts_from_the_keys() -> None:
    control = cells([0] * 4)
    a, b = Condition("K562", "A"), Condition("K562", "B")
    both = Condition("K562", "A|B", parts=("A", "B"))
    truths = {a: cells(CHANGE_A), b: cells(CHANGE_B), both: cells(CHANGE_A + CHANGE_B + GI_TRUE)}
    preds = {both: cells(CHANGE_A + CHANGE_B - GI_TRUE), a: truths[a]}
    scores = genetic_interaction(truths, preds, control=control, measure="pearson")
    assert scores[both] == pytest.approx(-1.0) and math.isnan(scores[a])
    assert math.isnan(genetic_interaction(truths, preds, control=None, measure="mse")[both])
    with pytest.raises(ValueError, match="measure must be one of"):
        genetic_interaction(truths, preds, control=control, measure="r2")  # type: ignore[arg-type]


def test_the_floor_of_log_expression_is_no_interaction() -> None:
    """g0: A and B each take it from 0.2 to 0, and so does A+B. Their summed changes would give
    -0.2, so without the floor g0 would show an interaction of +0.2 that is only the floor."""
    control = np.tile([0.2, 1.3, 1.3, 1.3], (2, 1))
    a, b = control + [-0.2, 1.0, 0.0, 0.3], control + [-0.2, 0.0, 1.0, 0.2]
    interaction = np.array([0.0, 0.2, -0.1, 0.5])
    both = np.maximum(a + b - control + interaction, 0)  # g0 stays at 0
    keys = {c: Condition("K562", c, parts=SCREEN.parts(c)) for c in ("A", "B", "A+B")}
    truths = {keys["A"]: a, keys["B"]: b, keys["A+B"]: both}
    additive = {keys["A+B"]: np.maximum(a + b - control, 0)}  # the additive model, clipped at 0
    score = partial(genetic_interaction, truths, additive, control=control)
    assert score(measure="pearson") == {keys["A+B"]: 0.0}  # it predicts no interaction
    assert score(measure="mse")[keys["A+B"]] == pytest.approx(np.mean(interaction[1:] ** 2))


def test_interaction_genes_are_those_beyond_their_noise() -> None:
    """Of two genes with the same true interaction, the noisy one is not the top gene, even where
    noise makes its measured interaction the larger."""
    rng = np.random.default_rng(5)
    spread = np.array([0.01, 0.01, 1.0, 0.01])  # g2 is noisy

    def noisy(change: np.ndarray, n: int = 200) -> np.ndarray:
        return 6.0 + change + spread * rng.normal(size=(n, 4))

    interaction = np.array([0.5, 0.0, 0.5, 0.0])
    control, a, b = noisy(np.zeros(4)), noisy(CHANGE_A), noisy(CHANGE_B)
    both = noisy(CHANGE_A + CHANGE_B + interaction)
    measured = both.mean(0) - a.mean(0) - b.mean(0) + control.mean(0)
    assert abs(measured[2]) > abs(measured[0])  # plain |GI| would pick the noisy g2
    keys = {c: Condition("K562", c, parts=SCREEN.parts(c)) for c in ("A", "B", "A+B")}
    truths = {keys["A"]: a, keys["B"]: b, keys["A+B"]: both}
    wrong_on_g2 = both - np.array([0, 0, 0.5, 0])  # right on g0, wrong on g2
    scores = genetic_interaction(
        truths, {keys["A+B"]: wrong_on_g2}, control=control, measure="mse", top=1
    )
    assert scores == {keys["A+B"]: 0.0}


# ---------------------------------------------------------------------- detectable effects
def toy_pair(strength: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Control and perturbed cells; genes 0-9 go up and 10-19 down by ``4 ** strength``."""
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(100).lognormal(1.0, 0.5, 100)
    fold = np.ones(100)
    fold[:10], fold[10:20] = 4.0**strength, 0.25**strength
    return counts_like(120, means, rng), counts_like(100, means * fold, rng)


def test_effect_noise_is_the_root_mean_square_over_every_relabelling() -> None:
    rng = np.random.default_rng(0)
    control, truth = rng.normal(size=(4, 3)), rng.normal(size=(3, 3)) + 0.5
    pooled = np.vstack([control, truth])
    squared = [
        np.sum((pooled[list(t)].mean(0) - np.delete(pooled, list(t), axis=0).mean(0)) ** 2)
        for t in itertools.combinations(range(7), 3)
    ]
    test = effect_test(control, truth)
    assert test.noise == pytest.approx(math.sqrt(np.mean(squared)), rel=1e-12)
    assert test.distance == pytest.approx(np.linalg.norm(truth.mean(0) - control.mean(0)))
    # one gene, two cells at 0 and two at 1: 2 of the 6 relabellings are as far as observed
    small = effect_test(np.zeros((2, 1)), np.ones((2, 1)), n_permutations=20_000)
    assert (small.distance, small.noise) == (1.0, pytest.approx(math.sqrt(1 / 3)))
    assert small.p_value == pytest.approx(1 / 3, abs=0.02) and not small.detectable


def test_effect_p_values_at_their_extremes_are_exact() -> None:
    control, truth = toy_pair(strength=1.0)
    strong = effect_test(control, truth)
    assert strong.p_value == 1 / (1 + N_PERMUTATIONS) and strong.detectable and strong.ratio > 3
    same = effect_test(control, control.copy())
    assert (same.distance, same.p_value, same.ratio, same.detectable) == (0.0, 1.0, 0.0, False)
    assert effect_test(control, truth) == strong  # a fixed seed: the label is the data's


def test_the_effect_test_is_not_liberal_on_perturbations_without_effect() -> None:
    rng = np.random.default_rng(3)
    means = rng.lognormal(1.0, 0.5, 30)
    called = [
        effect_test(
            counts_like(40, means, rng), counts_like(25, means, rng), n_permutations=199
        ).detectable
        for _ in range(60)
    ]
    assert np.mean(called) <= 0.12  # about ALPHA = 0.05 of them by chance


def test_effect_false_positive_scores_a_predicted_change_where_there_is_none() -> None:
    control, null_truth = toy_pair(strength=0.0)
    shift = np.zeros(100)
    shift[:5] = 0.6
    pair = EvalPair(control, null_truth, control + shift)
    assert not pair.effect.detectable
    noise = math.sqrt((1 / 100 + 1 / 120) * np.vstack([control, null_truth]).var(0, ddof=1).sum())
    scores = values(evaluate(control, null_truth, control + shift, metrics=EFFECT_METRICS))
    assert scores["detectable"] == 0.0
    assert scores["effect_false_positive"] == pytest.approx(np.linalg.norm(shift) / noise)
    no_change = values(evaluate(control, null_truth, control.copy(), metrics=EFFECT_METRICS))
    assert no_change["effect_false_positive"] == 0.0
    # the truth itself changes by about one noise: a replicate of the experiment
    truth_as_pred = values(evaluate(control, null_truth, null_truth, metrics=EFFECT_METRICS))[
        "effect_false_positive"
    ]
    assert truth_as_pred == pytest.approx(pair.effect.ratio) and 0.5 < truth_as_pred < 1.5
    # where the effect is detectable, predicting it is right: the metric does not apply
    control, truth = toy_pair(strength=1.0)
    detected = values(evaluate(control, truth, truth, metrics=EFFECT_METRICS))
    assert detected["detectable"] == 1.0 and math.isnan(detected["effect_false_positive"])


def test_detectable_effects_table_of_a_screen() -> None:
    control, truth = toy_pair(strength=1.0)
    null = toy_pair(strength=0.0, seed=1)[1]
    adata = screen({"control": control, "STRONG": truth, "NONE": null})
    table = detectable_effects(adata, SCREEN).set_index("condition")
    assert list(table.columns) == [
        "cell_type", "n_control", "n_truth", "distance", "noise", "ratio", "p_value", "detectable",
    ]  # fmt: skip
    assert table["detectable"].to_dict() == {"NONE": False, "STRONG": True}
    assert table.loc["STRONG", "n_truth"] == 100 and table.loc["STRONG", "ratio"] > 3
    assert table.loc["NONE", "ratio"] == pytest.approx(1.0, abs=0.3)


@pytest.mark.realdata
def test_papalexi_knockouts_of_the_ifn_gamma_pathway_are_detectable_and_others_not() -> None:
    path = data_dir() / "papalexi2021_thp1_crispr.h5ad"
    if not path.is_file():
        pytest.skip(f"{path.name} not found in {path.parent}; set MTPERT_DATA_DIR.")
    raw = ad.read_h5ad(path)
    kept = raw.obs["perturbation"].isin(["control", "IFNGR1", "STAT1", "STAT5A", "CD86"])
    table = detectable_effects(prepare(raw[kept.to_numpy()], SCREEN, n_hvg=0), SCREEN)
    called = table.set_index("condition")["detectable"].to_dict()
    # the receptor and its transcription factor silence the IFN-gamma response; the others
    # change none of the 299 genes measured
    assert called == {"CD86": False, "IFNGR1": True, "STAT1": True, "STAT5A": False}


# ---------------------------------------------------------------------- many targets at once
def knockdown_screen(n_perturbations: int, seed: int = 0) -> AnnData:
    """A screen of one line: control and ``n_perturbations`` knock-downs of 30-40 cells each, each
    lowering its own block of 5 genes by a factor of 4, so the perturbations differ."""
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(100).lognormal(1.0, 0.5, 60)
    blocks = {"control": counts_like(50, means, rng)}
    for p in range(n_perturbations):
        fold = np.ones(60)
        fold[5 * p : 5 * p + 5] = 0.25
        blocks[f"KD{p}"] = counts_like(30 + 5 * (p % 3), means * fold, rng)
    return screen(blocks)


def test_relabellings_shared_by_truths_of_one_size_give_each_truths_own_test() -> None:
    from mtpert.metrics.effect import Relabellings

    control, _ = toy_pair(0.0)
    truths = [toy_pair(strength, seed)[1] for strength, seed in ((0.0, 1), (0.6, 2), (0.0, 3))]
    truths.append(truths[1][:60])  # another size: its relabellings are drawn anew
    shared = Relabellings(control)
    for truth in [*truths, truths[0]]:  # back to the first size after another
        alone = effect_test(control, truth)
        together = shared.test(truth)
        assert together.p_value == alone.p_value
        assert (together.distance, together.noise) == (
            pytest.approx(alone.distance, rel=1e-12),
            pytest.approx(alone.noise, rel=1e-9),
        )
    assert shared.test(truths[1]).detectable and not shared.test(truths[0]).detectable


def test_scoring_in_one_space_per_group_equals_per_target_where_a_group_has_one_target() -> None:
    from mtpert.metrics import evaluate_prediction

    truth = knockdown_screen(1)
    pred = knockdown_screen(1, seed=1)
    per_target = evaluate_prediction(truth, pred, SCREEN, space="target")
    per_group = evaluate_prediction(truth, pred, SCREEN, space="group")
    pd.testing.assert_frame_equal(per_group, per_target, rtol=1e-9)


def test_one_space_per_group_changes_only_the_distances_of_a_screen() -> None:
    from mtpert.metrics import evaluate_prediction

    truth = knockdown_screen(6)
    pred = knockdown_screen(6, seed=1)
    pred = pred[pred.obs["perturbation"] != "KD0"].copy()  # not every perturbation predicted
    per_target = evaluate_prediction(truth, pred, SCREEN, space="target")
    per_group = evaluate_prediction(truth, pred, SCREEN, space="group")
    ids = ["condition", "metric"]
    assert per_group[ids].equals(per_target[ids])
    assert set(per_group["condition"]) == {f"KD{p}" for p in range(1, 6)}
    distance = per_group["metric"].map(lambda name: METRICS[name].kind == "distance").to_numpy()
    np.testing.assert_allclose(
        per_group.loc[~distance, "value"], per_target.loc[~distance, "value"], rtol=1e-9
    )
    np.testing.assert_allclose(
        per_group.loc[~distance, "spread"], per_target.loc[~distance, "spread"], rtol=1e-9
    )
    group_d, target_d = per_group.loc[distance, "value"], per_target.loc[distance, "value"]
    assert np.isfinite(group_d).all() and not np.allclose(group_d, target_d)
    # a replicate draw is far closer to its own truth than control is, in either space
    relative = per_group[per_group["metric"].isin(["e_distance_rel", "euclidean_rel"])]
    assert (relative["value"] < 0.75).all(), relative


def test_a_shared_control_refuses_cells_over_other_genes() -> None:
    from mtpert.errors import DataError
    from mtpert.metrics.pair import SharedControl, Space

    data = knockdown_screen(2)
    control = data[data.obs["perturbation"] == "control"]
    truth = data[data.obs["perturbation"] == "KD1"]
    shared = SharedControl(control, Space.fit([control.X, truth.X]))
    reordered = truth[:, truth.var_names[::-1]]
    pair, same = EvalPair(shared, reordered, reordered), EvalPair(shared, truth, truth)
    np.testing.assert_array_equal(pair.data["truth"], same.data["truth"])  # put in the control's order
    with pytest.raises(DataError, match="genes differ from the shared control"):
        EvalPair(shared, truth[:, :50], truth[:, :50])


def test_evaluate_prediction_refuses_an_unknown_space() -> None:
    from mtpert.errors import DataError
    from mtpert.metrics import evaluate_prediction

    data = knockdown_screen(1)
    with pytest.raises(DataError, match="space must be 'target' or 'group'"):
        evaluate_prediction(data, data, SCREEN, space="cell")  # type: ignore[arg-type]
