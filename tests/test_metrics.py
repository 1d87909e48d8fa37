"""Evaluation suite: hand-computed values, metric invariants, input checks and a real-data check."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData

from mtpert.data.pp import prepare
from mtpert.data.spec import DatasetSpec
from mtpert.errors import ConfigError, DataError
from mtpert.metrics import (
    METRICS,
    EvalPair,
    e_distance,
    euclidean,
    evaluate,
    evaluate_prediction,
    list_metrics,
    mean_pairwise,
    mmd,
    register_metric,
    top_degs,
    wasserstein,
)
from mtpert.metrics.de import welch_t
from mtpert.metrics.evaluate import RESULT_COLUMNS

SPEC = DatasetSpec()
DISTANCES = [e_distance, wasserstein, euclidean, mean_pairwise, mmd]
REL_METRICS = [name for name in METRICS if name.endswith("_rel")]


def log_normalize(counts: np.ndarray) -> np.ndarray:
    return np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4)


def toy(
    n_control: int = 150,
    n_perturbed: int = 150,
    n_genes: int = 300,
    *,
    strength: float = 1.0,
    seed: int = 0,
):
    """Negative-binomial counts, log-normalized: control and perturbed cells, and the planted DEGs.

    Genes 0-9 go up and 10-19 down by a factor ``4 ** strength``. Gene means depend only on
    ``n_genes``; ``seed`` draws the cells.
    """
    base = np.random.default_rng(n_genes).lognormal(1.0, 0.5, n_genes)
    fold = np.ones(n_genes)
    fold[:10], fold[10:20] = 4.0**strength, 0.25**strength
    rng = np.random.default_rng(seed)

    def cells(n: int, means: np.ndarray) -> np.ndarray:
        dispersion = 5.0
        counts = rng.negative_binomial(
            dispersion, dispersion / (dispersion + means), size=(n, n_genes)
        )
        return log_normalize(counts.astype(float))

    return cells(n_control, base), cells(n_perturbed, base * fold), np.arange(20)


def values(table: pd.DataFrame) -> pd.Series:
    return table.set_index("metric")["value"]


@pytest.fixture(scope="module")
def data():
    control, truth, planted = toy()
    return control, truth, planted


# ---------------------------------------------------------------------- whole-suite behaviour
def test_perfect_prediction(data) -> None:
    control, truth, _ = data
    scores = values(evaluate(control, truth, truth.copy()))
    for name in ("r2_all", "r2_top20", "r2_top100", "pearson_delta_all", "pearson_delta_top100"):
        assert scores[name] == pytest.approx(1.0), name
    assert scores["deg_overlap_top100"] == 100
    for name in ("e_distance", "wasserstein", "euclidean", "mmd"):
        assert scores[name] == pytest.approx(0.0, abs=1e-9), name
        assert scores[f"{name}_rel"] == pytest.approx(0.0, abs=1e-9), name
    # mean_pairwise is not a metric: a set's distance to itself is its mean within-set distance
    assert 0 < scores["mean_pairwise_rel"] < 1


def test_control_as_prediction_scores_one_on_every_relative_distance(data) -> None:
    control, truth, _ = data
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NaN from a constant vector must come without warnings
        scores = values(evaluate(control, truth, control.copy()))
    for name in REL_METRICS:
        assert scores[name] == pytest.approx(1.0, rel=1e-12), name
    # predicting no change: correlation of changes undefined, R² over the true DEGs poor
    assert math.isnan(scores["pearson_delta_all"])
    assert scores["r2_top20"] < 0.5
    assert scores["deg_overlap_top100"] == 0, "a prediction identical to control has no DEGs"


def test_a_better_prediction_scores_better(data) -> None:
    control, truth, _ = data
    half_response = toy(strength=0.5, seed=1)[1]  # new cells, half the true log fold change
    better, worse = (
        values(evaluate(control, truth, half_response)),
        values(evaluate(control, truth, control)),
    )
    for name in REL_METRICS:
        assert better[name] < worse[name], name
    assert better["r2_top20"] > worse["r2_top20"]


def test_shifted_prediction_keeps_r2_but_not_distances(data) -> None:
    control, truth, _ = data
    scores = values(evaluate(control, truth, truth + 0.5))
    assert scores["r2_all"] == pytest.approx(1.0)  # R² of means ignores an offset...
    assert scores["euclidean_rel"] > 0.1 and scores["e_distance_rel"] > 0.01  # ...distances do not


def test_evaluate_table_layout(data) -> None:
    control, truth, _ = data
    table = evaluate(control, truth, truth, metrics=["r2_all", "r2_all_boot", "e_distance_rel"])
    assert list(table.columns) == ["metric", "value", "spread", "best", "higher_is_better"]
    assert table["metric"].tolist() == ["r2_all", "r2_all_boot", "e_distance_rel"]
    spread = table.set_index("metric")["spread"]
    assert math.isnan(spread["r2_all"]) and spread["r2_all_boot"] > 0
    assert table.set_index("metric").loc["e_distance_rel", "higher_is_better"] == False


def test_unknown_metric_is_a_clear_error(data) -> None:
    control, truth, _ = data
    with pytest.raises(DataError, match=r"Unknown metric\(s\) \['r2'\]; available: \['r2_all'"):
        evaluate(control, truth, truth, metrics=["r2"])


def test_registry_is_read_only_and_listed() -> None:
    table = list_metrics()
    assert table["name"].tolist() == list(METRICS)
    assert {
        "r2_all",
        "r2_top100_boot",
        "pearson_delta_top20",
        "deg_overlap_top100",
        "mmd_rel",
    } <= set(METRICS)
    assert set(table["kind"]) >= {"expression", "de", "distance", "rank"}
    scopes = table.set_index("name")["scope"]
    assert scopes["rank"] == "across_targets" and scopes["r2_all"] == "per_target"
    assert (METRICS["rank"].best, METRICS["rank"].higher_is_better) == (0.0, False)
    with pytest.raises(TypeError):
        METRICS["new"] = METRICS["r2_all"]  # type: ignore[index]


# ---------------------------------------------------------------------- user and plugin metrics
@pytest.fixture
def own_registry(monkeypatch):
    """The metric registry as it is, given back unchanged after the test (registration is global)."""
    monkeypatch.setattr(METRICS, "_entries", dict(METRICS._entries))


def mean_abs_error(pair: EvalPair) -> float:
    """Mean absolute difference of per-gene means, pred vs truth."""
    return float(np.abs(pair.means["pred"] - pair.means["truth"]).mean())


def test_a_registered_metric_is_evaluated_with_its_best_value_and_direction(data, own_registry) -> None:
    control, truth, _ = data
    metric = register_metric(
        "mean_abs_error", mean_abs_error, best=0.0, higher_is_better=False, description="MAE of means"
    )
    assert METRICS["mean_abs_error"] is metric and list(METRICS)[-1] == "mean_abs_error"
    pred = truth + 0.25
    row = evaluate(control, truth, pred).set_index("metric").loc["mean_abs_error"]
    assert row["value"] == pytest.approx(0.25) and math.isnan(row["spread"])
    assert row["best"] == 0.0 and not row["higher_is_better"]
    only = evaluate(control, truth, pred, metrics="mean_abs_error")
    assert only["metric"].tolist() == ["mean_abs_error"]
    listed = list_metrics().set_index("name").loc["mean_abs_error"]
    assert (listed["scope"], listed["kind"], listed["description"]) == ("per_target", "other", "MAE of means")


def test_a_metric_name_is_registered_once(own_registry) -> None:
    with pytest.raises(ConfigError, match="The metric name 'r2_all' is already registered"):
        register_metric("r2_all", mean_abs_error, best=0.0, higher_is_better=False, description="x")
    mine = register_metric("mine", mean_abs_error, best=0.0, higher_is_better=False, description="x")
    # the same definition again (a notebook cell run twice) is no conflict
    assert register_metric("mine", mean_abs_error, best=0.0, higher_is_better=False, description="x") == mine
    with pytest.raises(ConfigError, match=r"'mine' is already registered as .*test_metrics:mean_abs_error, best 0"):
        register_metric("mine", mean_abs_error, best=1.0, higher_is_better=True, description="x")
    assert METRICS["mine"] == mine
    with pytest.raises(ValueError, match="scope 'global' is not one of"):
        register_metric("bad", mean_abs_error, best=0.0, higher_is_better=False, description="x", scope="global")  # type: ignore[arg-type]


def nearest_is_own(truths, preds, *, control) -> dict:
    """1 where a prediction's mean is closest to its own condition's true mean, else 0."""
    means = {k: np.asarray(v.X.mean(0)).ravel() for k, v in truths.items()}
    keys = list(means)
    out = {}
    for key, pred in preds.items():
        distances = [np.linalg.norm(means[k] - np.asarray(pred.X.mean(0)).ravel()) for k in keys]
        out[key] = float(keys[int(np.argmin(distances))] == key)
    return out


def test_an_across_target_metric_is_scored_per_group_not_per_target(own_registry) -> None:
    from mtpert.data import simulate
    from mtpert.metrics import evaluate_across

    spec = DatasetSpec(dose_key="dose")
    adata = prepare(simulate(n_cell_types=2, n_genes=60, n_cells=30, doses=(0.5, 4.0), effect_size=2.0, seed=0), spec, n_hvg=0)
    register_metric(
        "nearest_is_own", nearest_is_own, best=1.0, higher_is_better=True,
        description="own truth nearest", scope="across_targets",
    )  # fmt: skip
    pred = adata[~spec.is_control(adata)]  # the truth as its own prediction: nearest to itself
    table = evaluate_across(adata, pred, spec)
    assert list(table.columns) == ["cell_type", "condition", "dose", *RESULT_COLUMNS]
    mine = table[table["metric"] == "nearest_is_own"]
    assert len(mine) == 4 and (mine["value"] == 1.0).all() and mine["higher_is_better"].all()
    assert (table.loc[table["metric"] == "rank", "value"] == 0.0).all()
    swapped = pred.copy()
    swapped.obs["dose"] = swapped.obs["dose"].map({0.5: 4.0, 4.0: 0.5}).astype(float)
    assert (evaluate_across(adata, swapped, spec, metrics="nearest_is_own")["value"] == 0.0).all()
    control, truth = adata[spec.is_control(adata)], pred
    with pytest.raises(DataError, match=r"\['nearest_is_own'\] are computed across the targets of a group.*evaluate_across"):
        evaluate(control, truth, truth, metrics=["r2_all", "nearest_is_own"])
    with pytest.raises(DataError, match=r"\['r2_all'\] are computed per target.*evaluate / evaluate_prediction"):
        evaluate_across(adata, pred, spec, metrics="r2_all")


PLUGINS = {
    "good_plugin.py": "from mtpert.metrics import Metric, register_metric\n"
    "plugin_metric = Metric('plugin_metric', lambda pair: 1.0, 1.0, True, 'a plugin metric')\n"
    "def add_more():\n"
    "    register_metric('from_function', len, best=0.0, higher_is_better=False, description='d')\n",
    "mtpert_fake_plugins-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: mtpert-fake-plugins\nVersion: 0.1\n",
    "mtpert_fake_plugins-0.1.dist-info/entry_points.txt": "[mtpert.metrics]\n"
    "plugin_metric = good_plugin:plugin_metric\n"
    "more = good_plugin:add_more\n"
    "broken = no_such_module_anywhere:metric\n"
    "wrong_type = good_plugin:__name__\n",
}
PROBE = """
import json, sys, warnings
warnings.simplefilter("always")
from mtpert.metrics import METRICS
lazy = "good_plugin" not in sys.modules
with warnings.catch_warnings(record=True) as caught:
    names = list(METRICS)
print(json.dumps({"lazy": lazy, "names": names, "best": METRICS["plugin_metric"].best,
                  "warnings": [(w.category.__name__, str(w.message)) for w in caught]}))
"""


def test_plugins_load_lazily_and_a_broken_one_only_warns(tmp_path) -> None:
    for name, text in PLUGINS.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["lazy"], "importing mtpert.metrics must not load plugins"
    assert set(found["names"][-2:]) == {"plugin_metric", "from_function"} and found["best"] == 1.0
    assert "broken" not in found["names"] and "wrong_type" not in found["names"]
    messages = {m.split("'")[1]: (c, m) for c, m in found["warnings"]}
    assert set(messages) == {"broken", "wrong_type"}
    category, broken = messages["broken"]
    assert category == "PluginWarning" and "mtpert-fake-plugins" in broken and "ModuleNotFoundError" in broken
    assert "must name a mtpert.metrics.Metric or a function" in messages["wrong_type"][1]


# ---------------------------------------------------------------------- expression metrics
def test_r2_and_pearson_delta_by_hand() -> None:
    control = np.zeros((2, 4))
    truth = np.array([[1.0, 2.0, 3.0, 4.0]] * 2)
    assert values(evaluate(control, truth, 2 * truth))["pearson_delta_all"] == pytest.approx(1.0)
    reversed_ = values(evaluate(control, truth, truth[:, ::-1].copy()))
    assert reversed_["pearson_delta_all"] == pytest.approx(-1.0)
    assert reversed_["r2_all"] == pytest.approx(1.0)  # r = -1, squared
    # means (1, 2, 3, 4) vs (1, 3, 2, 4): r = 0.8
    assert values(evaluate(control, truth, truth[:, [0, 2, 1, 3]]))["r2_all"] == pytest.approx(0.64)


def test_bootstrap_is_reproducible_and_has_spread(data) -> None:
    control, truth, _ = data
    pred = truth[::-1] + 0.1
    names = ["r2_all", "r2_all_boot", "r2_top20_boot"]
    first = evaluate(control, truth, pred, metrics=names, seed=3).set_index("metric")
    again = evaluate(control, truth, pred, metrics=names, seed=3).set_index("metric")
    other = evaluate(control, truth, pred, metrics=names, seed=4).set_index("metric")
    pd.testing.assert_frame_equal(first, again)
    assert first.loc["r2_all_boot", "value"] != other.loc["r2_all_boot", "value"]
    assert (first.loc[["r2_all_boot", "r2_top20_boot"], "spread"] > 0).all()
    assert first.loc["r2_all_boot", "value"] == pytest.approx(
        first.loc["r2_all", "value"], abs=0.05
    )


# ---------------------------------------------------------------------- DEGs
def test_top_degs_finds_planted_genes_in_both_directions(data) -> None:
    control, truth, planted = data
    genes = [f"g{i}" for i in range(control.shape[1])]
    found = top_degs(control, truth, n=20, genes=genes)
    assert set(found) == {f"g{i}" for i in planted}  # 10 up, 10 down


def test_top_degs_on_anndata_returns_names_in_truth_gene_order(data) -> None:
    control, truth, planted = data
    genes = pd.Index([f"g{i}" for i in range(control.shape[1])])
    order = np.random.default_rng(0).permutation(len(genes))
    truth_ad = AnnData(truth, var=pd.DataFrame(index=genes))
    control_ad = AnnData(control[:, order], var=pd.DataFrame(index=genes[order]))
    assert set(top_degs(control_ad, truth_ad, n=20)) == set(genes[planted])


def test_constant_genes_get_t_zero_not_nan() -> None:
    control = np.array([[1.0, 0.0, 2.0], [1.0, 0.0, 4.0]])
    perturbed = np.array([[1.0, 0.0, 5.0], [1.0, 0.0, 7.0]])
    # gene 2: means 3 and 6, variances 2 and 2 -> se = sqrt(2/2 + 2/2); plain Welch t = 3 / sqrt(2)
    t = welch_t(control, perturbed, s0=0.0)
    assert t[0] == 0 and t[1] == 0 and t[2] == pytest.approx(3 / math.sqrt(2))
    # moderated: s0 = median positive se = sqrt(2), so t = 3 / (2 sqrt(2))
    assert welch_t(control, perturbed)[2] == pytest.approx(3 / (2 * math.sqrt(2)))


def test_tiny_shifts_of_undetected_genes_do_not_outrank_real_degs() -> None:
    """A smooth prediction nudging an all-zero gene must not beat a large, noisy real change."""
    rng = np.random.default_rng(0)
    control = np.abs(rng.normal(1.0, 0.5, size=(200, 50)))
    control[:, 0] = 0.0  # never detected
    pred = control + 0.01  # the same tiny shift everywhere: gene 0 becomes constant 0.01
    pred[:, 1] += 1.0  # a real response
    assert abs(welch_t(control, pred, s0=0.0)[0]) > 1e6, "plain Welch t is degenerate here"
    assert top_degs(control, pred, n=1, genes=[f"g{i}" for i in range(50)])[0] == "g1"


def test_deg_overlap_does_not_let_a_prediction_set_its_own_noise_scale() -> None:
    """A network's prediction nudges genes no control cell expresses, with ~1e-5 of cell-to-cell
    variation (or float rounding: a constant 0.02 has a variance of 1e-32): with its own fudge
    constant their tiny standard errors would pull it to ~0 and
    rank them above the real DEGs. Ranked with the truth's, the dust changes nothing."""
    rng = np.random.default_rng(0)
    n, genes = 300, 400
    control = np.abs(rng.normal(1.0, 0.5, size=(n, genes)))
    control[:, 100:] = 0.0  # most genes are never detected
    truth = np.abs(rng.normal(1.0, 0.5, size=(n, genes)))
    truth[:, 100:] = 0.0
    truth[:, :40] += np.linspace(-0.9, 1.5, 40)  # 40 real DEGs
    change = truth.mean(axis=0) - control.mean(axis=0)
    smooth = control + change
    smooth[:, 100:] += 0.02  # the network's small shift of every undetected gene
    dusty = smooth + np.concatenate([np.zeros((n, 100)), 1e-5 * rng.random((n, 300))], axis=1)
    smooth_overlap = values(evaluate(control, truth, smooth))["deg_overlap_top100"]
    assert values(evaluate(control, truth, dusty))["deg_overlap_top100"] == smooth_overlap
    assert smooth_overlap >= 40, "the real DEGs are found"


def test_deg_overlap_with_fewer_genes_than_100_uses_all(data) -> None:
    control, truth, _ = data
    shuffled = np.random.default_rng(1).permuted(truth[:, :30], axis=1)
    assert values(evaluate(control[:, :30], truth[:, :30], shuffled))["deg_overlap_top100"] == 30


# ---------------------------------------------------------------------- distances
def test_e_distance_by_hand() -> None:
    X, Y = np.array([[0.0], [2.0]]), np.array([[1.0], [3.0]])
    # between: mean(1, 3, 1, 1) = 1.5; within X and within Y: mean(0, 2, 2, 0) = 1
    assert e_distance(X, Y) == pytest.approx(2 * 1.5 - 1 - 1)
    # squared: between mean(1, 9, 1, 1) = 3; within mean(0, 4, 4, 0) = 2
    assert e_distance(X, Y, squared=True) == pytest.approx(2 * 3 - 2 - 2)


def test_squared_e_distance_only_sees_means() -> None:
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(20, 3)), rng.normal(1.0, 3.0, size=(30, 3))
    assert e_distance(X, Y, squared=True) == pytest.approx(2 * euclidean(X, Y) ** 2)


def test_euclidean_and_mean_pairwise_by_hand() -> None:
    X = np.array([[-1.0, 0.0], [1.0, 0.0]])  # mean (0, 0)
    Y = np.array([[3.0, 4.0], [3.0, 4.0]])  # mean (3, 4)
    assert euclidean(X, Y) == pytest.approx(5.0)
    assert mean_pairwise(
        np.array([[0.0, 0.0]]), np.array([[3.0, 4.0], [0.0, 1.0]])
    ) == pytest.approx(3.0)


def test_mmd_by_hand() -> None:
    X, Y = np.array([[0.0]]), np.array([[1.0]])
    assert mmd(X, Y, gamma=1.0) == pytest.approx(2 - 2 * math.exp(-1))
    Z = np.random.default_rng(0).normal(size=(10, 3))
    assert mmd(Z, Z.copy()) == 0.0


def test_wasserstein_known_matching() -> None:
    X = np.array([[0.0, 0.0], [10.0, 0.0]])
    Y = np.array([[10.0, 1.0], [1.0, 0.0]])  # optimal: (0,0)->(1,0), (10,0)->(10,1), each cost 1
    assert wasserstein(X, Y) == pytest.approx(1.0)
    assert wasserstein(np.array([[0.0], [0.0]]), np.array([[3.0]])) == pytest.approx(9.0)


@pytest.mark.parametrize("distance", DISTANCES, ids=lambda f: f.__name__)
def test_distance_is_symmetric_and_grows_with_a_shift(distance) -> None:
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(25, 4)), rng.normal(0.5, 1.0, size=(30, 4))
    assert distance(X, Y) == pytest.approx(distance(Y, X), rel=1e-9)
    near, far = distance(X, X + 0.5), distance(X, X + 2.0)
    assert 0 < near < far


@pytest.mark.parametrize(
    "distance", [e_distance, wasserstein, euclidean, mmd], ids=lambda f: f.__name__
)
def test_distance_to_itself_is_zero(distance) -> None:
    X = np.random.default_rng(0).normal(size=(25, 4))
    assert distance(X, X.copy()) == pytest.approx(0.0, abs=1e-12)


def test_mean_pairwise_to_itself_is_the_mean_within_distance() -> None:
    X = np.array([[0.0], [2.0]])
    assert mean_pairwise(X, X) == pytest.approx(1.0)  # mean(0, 2, 2, 0): not a metric


def test_pca_is_fit_on_control_and_truth_and_capped_by_rank() -> None:
    rng = np.random.default_rng(0)
    direction = rng.normal(size=6)
    control = rng.normal(size=(10, 1)) * direction
    truth = rng.normal(2.0, 1.0, size=(12, 1)) * direction
    pair = EvalPair(control, truth, rng.normal(size=(8, 6)))
    assert pair.pcs["pred"].shape == (8, 1)  # control ∪ truth vary along one direction only
    fitted = np.vstack([pair.pcs["control"], pair.pcs["truth"]])
    np.testing.assert_allclose(fitted.mean(axis=0), 0.0, atol=1e-12)  # centred on control ∪ truth


# ---------------------------------------------------------------------- input checks
def test_gene_order_is_aligned_to_truth(data) -> None:
    control, truth, _ = data
    genes = pd.Index([f"g{i}" for i in range(truth.shape[1])])
    order = np.random.default_rng(0).permutation(len(genes))
    pred = truth[::-1] + 0.2
    aligned = evaluate(control, truth, pred, genes=genes)
    shuffled_pred = AnnData(sp.csr_matrix(pred[:, order]), var=pd.DataFrame(index=genes[order]))
    truth_ad = AnnData(truth, var=pd.DataFrame(index=genes))
    reordered = evaluate(control, truth_ad, shuffled_pred)
    pd.testing.assert_frame_equal(aligned, reordered)


def test_gene_mismatch_names_missing_genes(data) -> None:
    control, truth, _ = data
    genes = [f"g{i}" for i in range(truth.shape[1])]
    truth_ad = AnnData(truth, var=pd.DataFrame(index=genes))
    pred_ad = AnnData(truth, var=pd.DataFrame(index=["other"] + genes[1:]))
    with pytest.raises(
        DataError, match=r"1 of truth's genes are missing from pred \(e.g. \['g0'\]\)"
    ):
        evaluate(control, truth_ad, pred_ad)
    with pytest.raises(DataError, match="pred has 299 genes but truth has 300"):
        evaluate(control, truth, truth[:, 1:])


def test_nan_input_is_refused(data) -> None:
    control, truth, _ = data
    broken = truth.copy()
    broken[0, 0] = np.nan
    with pytest.raises(DataError, match="pred holds 1 NaN or infinite values"):
        evaluate(control, truth, broken)
    sparse = sp.csr_matrix(truth)
    sparse.data[3] = np.inf
    with pytest.raises(DataError, match="truth holds 1 NaN or infinite values"):
        evaluate(control, AnnData(sparse), truth)


def test_raw_counts_anndata_is_refused(data) -> None:
    _, truth, _ = data
    counts = AnnData(np.random.default_rng(0).poisson(3.0, size=truth.shape).astype(np.float32))
    with pytest.raises(DataError, match="control looks like raw counts.*log_normalize"):
        evaluate(counts, truth, truth)


def test_too_few_cells_is_refused(data) -> None:
    control, truth, _ = data
    with pytest.raises(DataError, match="pred has 1 cells x 300 genes"):
        evaluate(control, truth, truth[:1])


# ---------------------------------------------------------------------- evaluate_prediction
def labelled(blocks: list[tuple[str, str, np.ndarray]], genes: pd.Index) -> AnnData:
    """One AnnData from (cell type, condition, log expression) blocks."""
    obs = pd.DataFrame(
        [{"cell_type": t, "condition": c} for t, c, X in blocks for _ in range(len(X))],
        index=[f"c{i}" for i in range(sum(len(X) for _, _, X in blocks))],
    )
    return AnnData(np.vstack([X for _, _, X in blocks]), obs=obs, var=pd.DataFrame(index=genes))


def test_evaluate_prediction_scores_every_predicted_group() -> None:
    (ctrl_a, stim_a, _), (ctrl_b, stim_b, _) = toy(60, 60, 100, seed=1), toy(50, 40, 100, seed=2)
    genes = pd.Index([f"g{i}" for i in range(100)])
    truth = labelled(
        [
            ("A", "control", ctrl_a),
            ("A", "stim", stim_a),
            ("B", "control", ctrl_b),
            ("B", "stim", stim_b),
        ],
        genes,
    )
    pred = labelled(
        [("B", "stim", stim_b[:20]), ("A", "stim", ctrl_a), ("A", "control", ctrl_a)], genes
    )
    table = evaluate_prediction(truth, pred, SPEC, metrics=["r2_all", "e_distance_rel"])
    assert list(table.columns[:6]) == [
        "cell_type",
        "condition",
        "n_control",
        "n_truth",
        "n_pred",
        "metric",
    ]
    wide = table.pivot_table(
        index=["cell_type", "n_control", "n_truth", "n_pred"], columns="metric", values="value"
    )
    assert wide.index.tolist() == [
        ("A", 60, 60, 60),
        ("B", 50, 40, 20),
    ]  # control-labelled predictions ignored
    assert wide.loc["A", "e_distance_rel"].item() == pytest.approx(
        1.0
    )  # A was "predicted" by its control
    assert wide.loc["B", "e_distance_rel"].item() < 0.2  # B by a subset of its true cells
    only_b = evaluate_prediction(truth, pred, SPEC, groups=["B"], metrics="r2_all")
    assert only_b["cell_type"].unique().tolist() == ["B"]


def test_evaluate_prediction_with_dose_has_a_dose_column() -> None:
    ctrl, stim, _ = toy(30, 60, 50)
    genes = pd.Index([f"g{i}" for i in range(50)])
    truth = labelled([("A", "control", ctrl), ("A", "drug", stim)], genes)
    truth.obs["dose"] = [0.0] * 30 + [1.0] * 30 + [10.0] * 30
    pred = truth[truth.obs["condition"] == "drug"].copy()
    table = evaluate_prediction(truth, pred, DatasetSpec(dose_key="dose"), metrics="r2_all")
    assert table[["dose", "n_truth", "n_pred"]].values.tolist() == [[1.0, 30, 30], [10.0, 30, 30]]


def test_evaluate_prediction_refuses_groups_without_truth_or_control() -> None:
    ctrl, stim, _ = toy(30, 30, 50)
    genes = pd.Index([f"g{i}" for i in range(50)])
    truth = labelled([("A", "control", ctrl), ("A", "stim", stim), ("B", "stim", stim)], genes)
    no_truth = labelled([("A", "other", stim)], genes)
    with pytest.raises(
        DataError, match=r"'A' -> 'other', but adata_truth has no perturbed cells of 'A'"
    ):
        evaluate_prediction(truth, no_truth, SPEC)
    no_control = labelled([("B", "stim", stim)], genes)
    with pytest.raises(DataError, match=r"no control \('control'\) cells of 'B'"):
        evaluate_prediction(truth, no_control, SPEC)
    with pytest.raises(DataError, match=r"Cell type\(s\) \['C'\] are not in the prediction"):
        evaluate_prediction(truth, no_control, SPEC, groups=["C"])


# ---------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def kang_log(kang_adata: AnnData) -> AnnData:
    return prepare(kang_adata, SPEC, n_hvg=500)


def test_kang_cd14_mono_control_vs_half_split(kang_log: AnnData) -> None:
    mono = kang_log[kang_log.obs["cell_type"] == "CD14 Mono"]
    stim_names = mono.obs_names[mono.obs["condition"] == "stimulated"]
    held = np.random.default_rng(0).permutation(stim_names)[: len(stim_names) // 2]
    # half of the true stimulated cells predict the other half
    half = values(
        evaluate_prediction(kang_log[~kang_log.obs_names.isin(held)], kang_log[held], SPEC)
    )
    # the control cells, relabelled as stimulated, "predict" the stimulated cells
    control_as_pred = kang_log[mono.obs_names[mono.obs["condition"] == "control"]].copy()
    control_as_pred.obs["condition"] = "stimulated"
    baseline = values(evaluate_prediction(kang_log, control_as_pred, SPEC))

    for name in REL_METRICS:
        assert baseline[name] == pytest.approx(1.0, rel=1e-12), name
    assert baseline["r2_top100"] < 0.6
    assert half["r2_all"] > 0.95 and half["r2_top100"] > 0.9
    assert half["e_distance_rel"] < 0.1 and half["mmd_rel"] < 0.1 and half["euclidean_rel"] < 0.3
    assert half["wasserstein_rel"] < 0.5
    assert half["deg_overlap_top100"] > baseline["deg_overlap_top100"] + 30
