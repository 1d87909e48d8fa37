"""The paired bootstrap verdict (model against baseline, per metric) on constructed scores, and
the demo's default models.

Each case builds a results table by hand: a baseline with noisy per-target scores and a model
whose scores are the baseline's plus a known shift, so the right verdict is known.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mtpert.benchmark.verdict import paired_verdict, verdict_counts


def scores(
    shifts: dict[str, float],
    *,
    metric: str = "r2_top100",
    higher: bool = True,
    targets: int = 6,
    seeds=(1, 2),
) -> pd.DataFrame:
    """Long results: ``mean_shift`` scores drawn per target and seed, and each model of ``shifts``
    the same scores plus its shift and a little noise of its own."""
    rng = np.random.default_rng(0)
    keys = pd.MultiIndex.from_product(
        [[f"type_{i}" for i in range(targets)], seeds], names=["group", "seed"]
    ).to_frame(index=False)
    base = rng.uniform(0.2, 0.8, len(keys))
    tables = [keys.assign(model="mean_shift", value=base)]
    for model, shift in shifts.items():
        tables.append(
            keys.assign(
                model=model, value=base + shift + rng.normal(0, 0.002, len(keys)) * (shift != 0)
            )
        )
    table = pd.concat(tables, ignore_index=True)
    return table.assign(condition="stimulated", dose=np.nan, metric=metric, higher_is_better=higher)


def verdict_of(table: pd.DataFrame, model: str, **options) -> pd.Series:
    return paired_verdict(table, ["mean_shift"], **options).set_index("model").loc[model]


def test_a_model_better_on_every_pair_wins_an_identical_one_ties_a_worse_one_loses() -> None:
    table = scores({"better": 0.05, "same": 0.0, "worse": -0.05})
    assert verdict_of(table, "better")["verdict"] == "won"
    assert verdict_of(table, "same")["verdict"] == "tied"
    assert verdict_of(table, "worse")["verdict"] == "lost"
    better = verdict_of(table, "better")
    assert (
        better["difference"] == pytest.approx(0.05, abs=0.002)
        and 0 < better["ci_low"] < 0.05 < better["ci_high"]
    )
    assert better["pairs"] == 12  # 6 targets x 2 seeds, each a pair
    same = verdict_of(table, "same")
    assert same["difference"] == same["ci_low"] == same["ci_high"] == 0


def test_a_small_gain_drowned_by_the_targets_noise_ties() -> None:
    """Better on average, but the differences scatter around zero: no win."""
    table = scores({"noisy": 0.0})
    rng = np.random.default_rng(1)
    noisy = table["model"] == "noisy"
    table.loc[noisy, "value"] += 0.01 + rng.normal(0, 0.2, noisy.sum())
    assert verdict_of(table, "noisy")["verdict"] == "tied"


def test_lower_is_better_metrics_flip_the_sign() -> None:
    """On a distance (lower is better), a model with lower scores wins and its difference is positive."""
    table = scores({"lower": -0.05, "higher": 0.05}, metric="e_distance_rel", higher=False)
    lower, higher = verdict_of(table, "lower"), verdict_of(table, "higher")
    assert lower["verdict"] == "won" and lower["difference"] > 0 and lower["ci_low"] > 0
    assert higher["verdict"] == "lost" and higher["difference"] < 0 and higher["ci_high"] < 0


def test_fewer_than_three_pairs_give_no_verdict() -> None:
    table = scores({"better": 0.05}, targets=2, seeds=(1,))
    row = verdict_of(table, "better")
    assert row["verdict"] == "too few pairs" and row["pairs"] == 2 and np.isnan(row["ci_low"])
    assert verdict_of(scores({"better": 0.05}, targets=3, seeds=(1,)), "better")["verdict"] == "won"


def test_pairs_are_matched_by_target_and_seed_and_missing_scores_are_left_out() -> None:
    """A model that misses a run, or scores NaN there, is compared on the pairs it has; a pair is
    one target and seed, whatever the order of the rows."""
    table = scores({"better": 0.05})
    table = table.drop(
        index=table.index[(table["model"] == "better") & (table["group"] == "type_0")]
    )
    table.loc[
        (table["model"] == "better") & (table["group"] == "type_1") & (table["seed"] == 1), "value"
    ] = np.nan
    shuffled = table.sample(frac=1, random_state=3)
    row = verdict_of(shuffled, "better")
    assert row["pairs"] == 12 - 2 - 1 and row["verdict"] == "won"
    pd.testing.assert_series_equal(row, verdict_of(table, "better"))


def test_the_bootstrap_is_deterministic_and_independent_of_the_other_models() -> None:
    table = scores({"a": 0.01, "b": -0.003, "c": 0.2})
    first, again = paired_verdict(table, ["mean_shift"]), paired_verdict(table, ["mean_shift"])
    pd.testing.assert_frame_equal(first, again)
    alone = paired_verdict(table[table["model"].isin(["mean_shift", "b"])], ["mean_shift"])
    pd.testing.assert_frame_equal(
        alone.reset_index(drop=True), first[first["model"] == "b"].reset_index(drop=True)
    )
    other_seed = paired_verdict(table, ["mean_shift"], seed=7).set_index("model")
    assert other_seed.loc["b", "ci_low"] != first.set_index("model").loc["b", "ci_low"]


def test_the_noise_ceiling_and_a_baseline_itself_are_not_compared() -> None:
    table = scores({"better": 0.05, "noise_ceiling": 0.2})
    verdict = paired_verdict(table, ["mean_shift"])
    assert set(verdict["model"]) == {"better"}


def test_counts_per_model_and_baseline() -> None:
    table = pd.concat([
        scores({"m": 0.05}, metric="r2_top100"), scores({"m": 0.0}, metric="r2_all"),
        scores({"m": 0.05}, metric="e_distance_rel", higher=False), scores({"m": 0.05}, metric="gi_pearson", targets=2, seeds=(1,)),
    ])  # fmt: skip
    cells = verdict_counts(
        paired_verdict(table, ["mean_shift"]), ["m", "mean_shift"], ["mean_shift"]
    )
    assert cells.loc["m", "mean_shift"] == "1 won · 1 tied · 1 lost · 1 too few pairs"
    assert cells.loc["mean_shift", "mean_shift"] == "—"


def test_an_absent_baseline_or_level_is_refused() -> None:
    from mtpert.errors import ConfigError

    with pytest.raises(
        ConfigError, match=r"No runs of baseline\(s\) \['linear'\].*pick baselines among"
    ):
        paired_verdict(scores({"m": 0.1}), ["linear"])
    with pytest.raises(ConfigError, match="level must be between 0 and 1"):
        paired_verdict(scores({"m": 0.1}), ["mean_shift"], level=95)


def test_the_demo_runs_the_recommended_model_beside_the_baselines(monkeypatch, tmp_path) -> None:
    """``mtpert demo`` with no --models fits mtpert's recommended model, not the baselines alone,
    and its verdict table compares it with them (the fitting itself replaced by fixed scores)."""
    from typer.testing import CliRunner

    from mtpert.benchmark import demo
    from mtpert.cli import app
    from mtpert.models import get_model

    asked = []

    def fake_run_demo(out, *, models, seed, on_progress):
        asked.extend(models)
        shifts = {m: 0.05 * i for i, m in enumerate(models) if m != "mean_shift"}
        return pd.concat([scores(shifts, metric=m, seeds=(seed,)) for m in demo.DEMO_METRICS])

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert demo.RECOMMENDED_MODEL in demo.DEMO_MODELS and {"control", "mean_shift"} <= set(
        demo.DEMO_MODELS
    )
    get_model(demo.RECOMMENDED_MODEL)  # a registered model
    assert asked == list(demo.DEMO_MODELS)
    row = next(
        line
        for line in result.output.splitlines()
        if line.startswith(f"│ {demo.RECOMMENDED_MODEL} ")
    )
    assert "6 won · 0 tied · 0 lost" in row  # its verdict against the baselines, one column each
