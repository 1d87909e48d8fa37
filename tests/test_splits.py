"""The screen protocols: unseen combinations (GEARS/CPA) and held-out cells of seen perturbations
by replicate (SAMS-VAE/GPO-VAE), checked for leakage, and run through the benchmark."""

from __future__ import annotations

import numpy as np
import pytest

from mtpert.benchmark import BenchmarkConfig, Holdout, make_fold, run_benchmark
from mtpert.data import DatasetSpec, holdout_group, simulate
from mtpert.data.split import holdout_combinations, predictable_combinations
from mtpert.errors import ConfigError, DataError

SPEC = DatasetSpec(combination_separator="+")
SINGLES = ["A", "B", "C", "D"]
PAIRS = ["A+B", "A+C", "B+C", "C+D", "A+D", "B+E"]  # E was never applied alone: B+E is not predictable


@pytest.fixture(scope="module")
def screen():
    """Two cell lines x control, four singles and six pairs, 30 cells each, raw counts."""
    adata = simulate(n_cell_types=2, n_genes=120, n_cells=30, perturbations=SINGLES + PAIRS, seed=4)
    adata.obs["replicate"] = np.where(np.arange(adata.n_obs) % 3 == 0, "rep_1", "rep_2")
    return adata


def test_only_combinations_whose_parts_were_applied_alone_are_predictable(screen) -> None:
    assert predictable_combinations(screen, SPEC, min_cells=20) == sorted(set(PAIRS) - {"B+E"})
    with pytest.raises(DataError, match="combination_separator"):
        predictable_combinations(screen, DatasetSpec(), min_cells=20)


def test_held_out_combinations_never_reach_training_and_every_single_does(screen) -> None:
    split = holdout_combinations(screen, SPEC, split_seed=1, fraction=0.5, seed=7)
    condition = screen.obs["condition"].astype(str)
    held = sorted({t.condition for t in split.targets})
    assert len(held) == 2 and set(held) <= set(predictable_combinations(screen, SPEC))  # half of the 5, rounded
    seen = set(condition[split.train.append(split.val)])
    assert not seen & set(held)  # no held-out combination in train or validation
    assert set(SINGLES) <= seen and "control" in seen and (set(PAIRS) - set(held)) <= seen
    assert set(split.heldout) == set(screen.obs_names[condition.isin(held)])
    for target in split.targets:  # each scored from its own line's control cells, which stay in training
        assert set(condition[target.truth]) == {target.condition}
        assert set(screen.obs.loc[target.control, "cell_type"]) == {target.group} and target.control.isin(split.train.append(split.val)).all()
    draws = {tuple(sorted({t.condition for t in holdout_combinations(screen, SPEC, split_seed=s).targets})) for s in range(1, 6)}
    assert len(draws) > 1  # the split seed decides which combinations are held out
    with pytest.raises(DataError, match="fraction"):
        holdout_combinations(screen, SPEC, split_seed=1, fraction=1.0)


def test_the_fold_chooses_genes_without_the_held_out_combinations(screen) -> None:
    holdout = Holdout("3", kind="combination")
    fold = make_fold(screen, SPEC, holdout, seed=1, n_hvg=60, min_cells=20)
    heldout = holdout.split(screen, SPEC, min_cells=20).heldout
    from mtpert.data import prepare

    expected = prepare(screen, SPEC, n_hvg=60, exclude=screen.obs_names.isin(heldout)).var_names
    assert fold.data.var_names.equals(expected)
    leaky = prepare(screen, SPEC, n_hvg=60).var_names
    assert not leaky.equals(expected)  # the held-out cells would have changed the genes


def test_held_out_replicate_cells_of_seen_perturbations(screen) -> None:
    split = holdout_group(screen, SPEC, "rep_1", group_key="replicate", seed=3, min_cells=5)
    replicate = screen.obs["replicate"]
    training = split.train.append(split.val)
    assert (replicate[split.heldout] == "rep_1").all()
    assert not training.isin(split.heldout).any()
    assert {t.condition for t in split.targets} == set(SINGLES + PAIRS)  # every perturbation is seen in rep_2
    assert set(screen.obs.loc[training, "condition"]) >= set(SINGLES + PAIRS)


def test_the_benchmark_runs_the_combination_split_per_split_seed(screen, tmp_path) -> None:
    data = tmp_path / "screen.h5ad"
    screen.write_h5ad(data)
    settings = BenchmarkConfig(
        data=str(data), models=("control",), split="combination", split_seeds=(1, 2), seeds=(1,), n_hvg=0,
        noise_ceiling_repeats=0, spec=SPEC, min_cells=20,
    )  # fmt: skip
    results = run_benchmark(settings, tmp_path / "out").results()
    per_seed = results.drop_duplicates(["run_id", "condition"]).groupby("run_id")["condition"].apply(set)
    assert len(per_seed) == 2 and all(len(c) == 2 for c in per_seed)  # two held-out pairs per split seed, in two lines
    assert set(results["split_seed"]) == {1, 2}  # each row says which draw held its pair out
    assert (results.groupby("run_id")["split_seed"].nunique() == 1).all()
    assert set(results["condition"]) <= set(predictable_combinations(screen, SPEC, min_cells=20))
    with pytest.raises(ConfigError, match="cannot predict a combination"):
        run_benchmark(BenchmarkConfig(**{**settings.to_dict(), "models": ["mean_shift"]}), tmp_path / "other")
    with pytest.raises(ConfigError, match="leave holdout at 'all'"):
        run_benchmark(BenchmarkConfig(**{**settings.to_dict(), "holdout": ["1"]}), tmp_path / "third")
