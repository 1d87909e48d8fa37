"""The screen baselines (global_mean, additive, linear, and mean_shift on many perturbations) on
hand-built data with known means, on simulated data through the benchmark, and on Norman 2019."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

import mtpert
from mtpert._array import dense
from mtpert.data.spec import DatasetSpec
from mtpert.errors import CheckpointError, ConfigError, DataError
from mtpert.models import (
    Additive,
    GlobalMean,
    LinearModel,
    MeanShift,
    PerturbationModel,
    get_model,
    list_models,
)
from tests.conftest import data_dir

SPEC = DatasetSpec(condition_key="perturbation", combination_separator="+")
SCREEN_MODELS = ("mean_shift", "global_mean", "additive", "linear")

BASE = {"L1": [5.1, 4.2, 6.3, 5.4], "L2": [4.6, 5.7, 5.2, 6.1], "L3": [5.5, 5.5, 5.5, 5.5]}
CHANGE = {
    ("L1", "A"): [1.0, 0.0, -0.5, 0.25],
    ("L1", "B"): [0.0, 0.5, 0.5, -1.0],
    ("L1", "A+B"): [2.0, 2.0, 2.0, 2.0],  # far from additive: the additive model must not use it
    ("L2", "A"): [0.5, -0.5, 0.0, 1.0],
    ("L2", "C"): [-1.0, 1.0, 0.25, 0.0],
}


def cells(
    means: dict[tuple[str, str], np.ndarray],
    *,
    n: int = 6,
    spread: float = 0.25,
    dose: float | None = None,
) -> AnnData:
    """``n`` log-expression cells per (group, perturbation) around known ``means``: half at
    +spread, half at -spread, so each group's mean is exact and its cells still spread."""
    sign = np.resize([1.0, -1.0], n)[:, None]
    X = np.vstack([np.asarray(m, dtype=float) + spread * sign for m in means.values()])
    obs = pd.DataFrame([{"cell_type": g, "perturbation": p} for g, p in means for _ in range(n)])
    if dose is not None:
        obs["dose"] = [0.0 if p == "control" else dose for p in obs["perturbation"]]
    obs.index = [f"c{i}" for i in range(len(obs))]
    return AnnData(
        X=X.astype(np.float32),
        obs=obs,
        var=pd.DataFrame(index=[f"g{i}" for i in range(X.shape[1])]),
    )


def screen(
    changes: dict[tuple[str, str], list[float]],
    groups: tuple[str, ...] = ("L1", "L2"),
    base: dict[str, list[float]] = BASE,
    **options,
) -> AnnData:
    """Control cells of ``groups`` and perturbed cells at their ``base`` + each known change."""
    means = {(g, "control"): np.asarray(base[g]) for g in groups}
    means |= {(g, p): np.asarray(base[g]) + change for (g, p), change in changes.items()}
    return cells(means, **options)


def control_of(group: str, base: dict[str, list[float]] = BASE) -> AnnData:
    return cells({(group, "control"): np.asarray(base[group])})


def change(
    model: PerturbationModel,
    group: str,
    condition: str,
    dose: float | None = None,
    base: dict[str, list[float]] = BASE,
) -> np.ndarray:
    """The change the model adds to each control cell of ``group`` (every cell the same one)."""
    control = control_of(group, base)
    delta = model.predict(control, condition, dose).X - control.X
    np.testing.assert_allclose(
        delta, np.broadcast_to(delta[0], delta.shape), atol=1e-5
    )  # cells keep their spread
    return delta[0]


def known(group: str, perturbation: str) -> np.ndarray:
    return np.asarray(CHANGE[group, perturbation])


def test_global_mean_adds_the_average_training_change_whatever_is_asked() -> None:
    model = GlobalMean(SPEC).fit(screen(CHANGE))
    l1 = np.mean([known("L1", p) for p in ("A", "B", "A+B")], axis=0)
    l2 = np.mean([known("L2", p) for p in ("A", "C")], axis=0)
    for condition in ("A", "C", "A+B", "never-screened"):
        np.testing.assert_allclose(change(model, "L1", condition), l1, atol=1e-5)
        np.testing.assert_allclose(change(model, "L2", condition), l2, atol=1e-5)
    np.testing.assert_allclose(
        change(model, "L3", "A"), (l1 + l2) / 2, atol=1e-5
    )  # a held-out group


def test_additive_sums_the_singles_changes_exactly() -> None:
    model = Additive(SPEC).fit(screen(CHANGE))
    np.testing.assert_allclose(
        change(model, "L1", "A+B"), known("L1", "A") + known("L1", "B"), atol=1e-5
    )
    np.testing.assert_allclose(change(model, "L1", "A"), known("L1", "A"), atol=1e-5)
    # a part the cell's group lacks alone comes from the groups that have it
    np.testing.assert_allclose(
        change(model, "L2", "A+B"), known("L2", "A") + known("L1", "B"), atol=1e-5
    )
    np.testing.assert_allclose(
        change(model, "L2", "C+A"), known("L2", "C") + known("L2", "A"), atol=1e-5
    )
    held_out_a = (known("L1", "A") + known("L2", "A")) / 2
    np.testing.assert_allclose(change(model, "L3", "A+B"), held_out_a + known("L1", "B"), atol=1e-5)


def test_additive_and_linear_refuse_parts_never_seen_alone() -> None:
    data = screen(
        {("L1", "A"): [1, 0, 0, 0], ("L1", "B"): [0, 1, 0, 0], ("L1", "A+E"): [1, 1, 1, 1]},
        groups=("L1",),
    )
    with pytest.warns(UserWarning, match="'A\\+E' combine perturbations never seen alone"):
        linear = LinearModel(SPEC).fit(data)
    for model in (Additive(SPEC).fit(data), linear):
        with pytest.raises(
            DataError,
            match="'E' was never seen alone in training; it is in the training combinations 'A\\+E'",
        ):
            model.predict(control_of("L1"), "B+E")
        with pytest.raises(
            DataError, match="'D' was never seen alone in training\\. .* seen alone: 'A', 'B'"
        ):
            model.predict(control_of("L1"), "D")
    only_pairs = screen({("L1", "A+B"): [1, 1, 0, 0]}, groups=("L1",))
    for cls in (Additive, LinearModel):
        with pytest.raises(DataError, match="no single perturbation, only combinations"):
            cls(SPEC).fit(only_pairs)


def test_doses_are_matched_exactly_or_refused() -> None:
    spec = DatasetSpec(condition_key="perturbation", dose_key="dose", combination_separator="+")
    low = screen({("L1", "A"): [1, 0, 0, 0], ("L1", "B"): [0, 1, 0, 0]}, groups=("L1",), dose=1.0)
    high = screen({("L1", "A"): [2, 0, 0, 0]}, groups=("L1",), dose=2.0)
    data = ad.concat([low, high[high.obs["perturbation"] != "control"]], index_unique="-")
    additive, global_mean = Additive(spec).fit(data), GlobalMean(spec).fit(data)
    np.testing.assert_allclose(change(additive, "L1", "A+B", 1.0), [1, 1, 0, 0], atol=1e-5)
    np.testing.assert_allclose(change(global_mean, "L1", "B", 2.0), [2, 0, 0, 0], atol=1e-5)
    for model in (additive, LinearModel(spec).fit(data)):
        with pytest.raises(
            DataError,
            match=r"'B' was never seen alone at dose 2.0 in training \(its doses alone: \[1.0\]\)",
        ):
            model.predict(control_of("L1"), "A+B", 2.0)
    with pytest.raises(
        DataError, match=r"no perturbed cells at dose 3.0 .* its doses: \[1.0, 2.0\]"
    ):
        global_mean.predict(control_of("L1"), "A", 3.0)


def low_rank_screen(seed: int = 0) -> tuple[AnnData, dict[str, np.ndarray], dict[str, list[float]]]:
    """Changes that are exactly the linear model's: ``c0 + M z`` for a single, ``c0 + M (z_a + z_b)``
    for a pair (the z centred over the singles), 30 genes, rank 2."""
    rng = np.random.default_rng(seed)
    n_genes = 30
    loadings = rng.normal(scale=0.3, size=(n_genes, 2))
    z = rng.normal(size=(6, 2))
    z -= z.mean(axis=0)
    shared = rng.normal(scale=0.2, size=n_genes)
    singles = {f"S{i}": z[i] for i in range(6)}
    pairs = ("S0+S1", "S2+S3", "S4+S5", "S0+S2", "S1+S3")
    conditions = {**singles, **{p: sum(singles[s] for s in p.split("+")) for p in pairs}}
    truth = {c: shared + loadings @ code for c, code in conditions.items()}
    base = {"S": list(5.5 + rng.uniform(size=n_genes))}
    return (
        screen({("S", c): list(v) for c, v in truth.items()}, groups=("S",), base=base),
        truth,
        base,
    )


def test_linear_recovers_an_exactly_linear_truth_and_predicts_an_unseen_pair() -> None:
    data, truth, base = low_rank_screen()
    train = data[data.obs["perturbation"] != "S1+S3"]
    exact = LinearModel(SPEC, ridge=0.0).fit(train)
    for condition in (
        "S1+S3",
        "S0",
        "S4+S5",
        "S5+S1",
    ):  # held out, single, training pair, never screened
        expected = truth.get(
            condition, truth["S1"] + truth["S5"] - (truth["S0"] + truth["S2"] - truth["S0+S2"])
        )
        np.testing.assert_allclose(change(exact, "S", condition, base=base), expected, atol=1e-4)
    assert exact.weights.shape == (3, 2), (
        "K cut to the data's rank: shared + 2 gene PCs, 2 perturbation PCs"
    )
    default = LinearModel(SPEC).fit(
        train
    )  # the paper's ridge of 0.1 barely shrinks changes this size
    assert np.abs(change(default, "S", "S1+S3", base=base) - truth["S1+S3"]).max() < 0.05
    additive = Additive(SPEC).fit(train)  # off by the shared part, counted twice
    additive_error = change(additive, "S", "S1+S3", base=base) - truth["S1+S3"]
    np.testing.assert_allclose(
        additive_error, truth["S1"] + truth["S3"] - truth["S1+S3"], atol=1e-5
    )
    assert np.abs(additive_error).max() > 0.1


def test_linear_refuses_bad_options() -> None:
    with pytest.raises(ConfigError, match="n_components must be at least 1"):
        LinearModel(SPEC, n_components=0)
    with pytest.raises(ConfigError, match="ridge must be >= 0"):
        LinearModel(SPEC, ridge=-1.0)
    with pytest.raises(ConfigError, match="min_cells must be at least 1"):
        Additive(SPEC, min_cells=0).fit(screen(CHANGE))


def test_mean_shift_takes_a_trained_combination_as_a_label_and_refuses_an_unseen_one() -> None:
    model = MeanShift(SPEC).fit(screen(CHANGE))
    np.testing.assert_allclose(change(model, "L3", "A+B"), known("L1", "A+B"), atol=1e-5)
    np.testing.assert_allclose(
        change(model, "L3", "A"), (known("L1", "A") + known("L2", "A")) / 2, atol=1e-5
    )
    with pytest.raises(DataError, match="nor combine perturbations: see 'additive'"):
        model.predict(control_of("L1"), "B+C")


def simulated_screen() -> AnnData:
    """Three cell types under singles, a pair and a rare perturbation, as raw counts."""
    spec = DatasetSpec(condition_key="perturbation", dose_key="dose", combination_separator="+")
    return mtpert.data.simulate(
        n_cell_types=3,
        n_genes=60,
        n_cells=30,
        perturbations=("A", "B", "C", "A+B"),
        spec=spec,
        seed=3,
    )


@pytest.mark.parametrize("name", SCREEN_MODELS)
def test_save_load_round_trip(name: str, tmp_path: Path) -> None:
    spec = DatasetSpec(condition_key="perturbation", dose_key="dose", combination_separator="+")
    data = mtpert.data.prepare(simulated_screen(), spec, n_hvg=0)
    model = get_model(name)(spec).fit(data)
    loaded = PerturbationModel.load(model.save(tmp_path / name))
    assert type(loaded) is type(model) and loaded.hparams == model.hparams
    control = data[(data.obs["cell_type"] == "type_0") & (data.obs["perturbation"] == "control")]
    for condition in ("A", "A+B") if name == "mean_shift" else ("A", "A+B", "B+C"):
        np.testing.assert_array_equal(
            loaded.predict(control, condition, 1.0).X, model.predict(control, condition, 1.0).X
        )


@pytest.mark.parametrize(
    ("name", "learned", "edit"),
    [("linear", "components", [9, 2]), ("global_mean", "groups", ["L1"])],
)
def test_load_refuses_weights_that_do_not_fit_the_config(
    name: str, learned: str, edit: list, tmp_path: Path
) -> None:
    path = get_model(name)(SPEC).fit(screen(CHANGE)).save(tmp_path / name)
    config = json.loads((path / "config.json").read_text())
    config["learned"][learned] = edit
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="weights.pt has '"):
        PerturbationModel.load(path)


def test_benchmark_runs_the_baselines_by_name_on_a_held_out_cell_type() -> None:
    spec = DatasetSpec(condition_key="perturbation", dose_key="dose", combination_separator="+")
    assert set(SCREEN_MODELS) <= set(list_models().index)
    combining = {n for n in SCREEN_MODELS if get_model(n)(spec).predicts_unseen_combinations}
    assert combining == {"global_mean", "additive", "linear"}, (
        "mean_shift cannot build A+B from A and B"
    )
    seen = []
    results = mtpert.benchmark.run_holdout(
        simulated_screen(),
        spec,
        ["control", *SCREEN_MODELS],
        groups=["type_1"],
        seeds=(1,),
        n_hvg=0,
        on_prediction=seen.append,
    )
    assert set(results["model"]) == {"control", *SCREEN_MODELS}
    means = {(p.model, p.target.condition): dense(p.pred.X).mean(axis=0) for p in seen}
    np.testing.assert_allclose(
        means["additive", "A"], means["mean_shift", "A"], atol=1e-5
    )  # a single: the same
    assert not np.allclose(
        means["additive", "A+B"], means["mean_shift", "A+B"], atol=1e-3
    )  # a pair: the sum
    np.testing.assert_allclose(means["global_mean", "A"], means["global_mean", "C"], atol=1e-6)


NORMAN_FILE = "norman2019_k562_crispra_subset.h5ad"


@pytest.mark.realdata
@pytest.mark.filterwarnings("ignore:linear.*never seen alone:UserWarning")
def test_baselines_on_held_out_norman_pairs() -> None:
    """Fits the four baselines with each pair whose singles were screened held out in turn and
    prints the R² of the mean change (reported, not asserted: a measurement, not a property)."""
    path = data_dir() / NORMAN_FILE
    if not path.is_file():
        pytest.skip(
            f"{NORMAN_FILE} not found in {path.parent}; set MTPERT_DATA_DIR to the folder holding it."
        )
    data = mtpert.data.prepare(ad.read_h5ad(path), SPEC, n_hvg=0)
    label = data.obs["perturbation"].astype(str).to_numpy()
    singles = {c for c in SPEC.conditions(data) if len(SPEC.parts(c)) == 1}
    pairs = [
        c
        for c in SPEC.conditions(data)
        if len(SPEC.parts(c)) == 2 and set(SPEC.parts(c)) <= singles
    ]
    control = data[label == "control"]
    baseline = dense(control.X).mean(axis=0)
    scores = {}
    for pair in pairs:
        true = dense(data[label == pair].X).mean(axis=0) - baseline
        for name in ("control", "global_mean", "additive", "linear"):
            pred = (
                dense(get_model(name)(SPEC).fit(data[label != pair]).predict(control, pair).X).mean(
                    axis=0
                )
                - baseline
            )
            assert np.isfinite(pred).all()
            scores[name, pair] = 1 - ((true - pred) ** 2).sum() / ((true - true.mean()) ** 2).sum()
    table = pd.Series(scores).unstack(0)
    print(
        f"\nR² of the mean change on held-out Norman pairs:\n{table.round(3)}\nmean:\n{table.mean().round(3)}"
    )
    assert len(pairs) >= 3, "the subset has five pairs whose singles were screened"
