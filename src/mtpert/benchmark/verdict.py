"""Paired bootstrap verdicts: is a model better than a baseline, beyond the noise of the targets?

For one model, one baseline and one metric, each held-out target scored by both in the same
run setting (target, dose, seed and split seed) is a *pair*; the difference model − baseline is
sign-adjusted by the metric's direction so that positive always means better. The mean of
these differences gets a percentile bootstrap confidence interval (the pairs resampled with
replacement, a fixed random seed); the model *won* when the interval lies above zero, *lost*
when it lies below, and *tied* otherwise. :func:`paired_verdict` computes this for every model,
baseline and metric at once; :func:`verdict_counts` counts the verdicts per model and baseline
for the report's table.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from mtpert.benchmark.grid import NOISE_CEILING
from mtpert.errors import ConfigError

RESAMPLES = 2000
"""Bootstrap resamples of the pairs per comparison."""
MIN_PAIRS = 3
"""Fewer pairs than this give no verdict ("too few pairs"): a bootstrap of one or two
differences has nothing to resample."""
PAIR_KEYS = ("dataset", "group", "condition", "dose", "seed", "split_seed")
"""The columns that make a pair (those present in the results): the same held-out target, dose,
seed and split seed scored by the model and by the baseline."""
VERDICTS = ("won", "tied", "lost", "too few pairs")
COLUMNS = ("model", "baseline", "metric", "difference", "ci_low", "ci_high", "pairs", "verdict")
_RELATIVE_TOLERANCE = 1e-9
"""A confidence bound this close to zero (relative to the scores' size) counts as zero, so a
model that equals the baseline up to floating-point rounding ties with it."""


def paired_verdict(
    results: pd.DataFrame,
    baselines: Sequence[str],
    metrics: Sequence[str] | None = None,
    *,
    models: Sequence[str] | None = None,
    level: float = 0.95,
    resamples: int = RESAMPLES,
    seed: int = 0,
    min_pairs: int = MIN_PAIRS,
) -> pd.DataFrame:
    """Each model against each baseline on each metric: the mean paired difference, its bootstrap
    confidence interval and the verdict.

    ``results``: the long results table of a benchmark (``model``, ``metric``, ``value``,
    ``higher_is_better`` and the :data:`PAIR_KEYS` present); ``metrics``: default every metric in
    it; ``models``: default every model but the noise ceiling. A model is not compared with itself.

    Returns one row per model, baseline and metric with at least one pair (:data:`COLUMNS`):
    ``difference`` is the mean of model − baseline over the pairs, negated where lower is better
    (the direction the runs recorded from the metric registry), so positive means the model is
    better; ``ci_low``/``ci_high`` bound it at ``level`` (percentiles of ``resamples`` bootstrap
    means); ``verdict`` is ``won`` (interval above zero), ``lost`` (below), ``tied``, or
    ``too few pairs`` (fewer than ``min_pairs``; no interval). The resampling depends only on
    ``seed`` and the number of pairs, so a comparison's interval does not change with the other
    models or the order of the rows.
    """
    if not 0 < level < 1:
        raise ConfigError(f"level must be between 0 and 1 (e.g. 0.95), not {level}.")
    present = list(dict.fromkeys(results["model"]))
    missing = [b for b in baselines if b not in present]
    if missing:
        raise ConfigError(
            f"No runs of baseline(s) {missing} in the results; pick baselines among {present}."
        )
    metrics = list(dict.fromkeys(results["metric"])) if metrics is None else list(metrics)
    models = [m for m in present if m != NOISE_CEILING] if models is None else list(models)
    data = results[results["metric"].isin(metrics) & results["model"].isin([*models, *baselines])]
    keys = [k for k in PAIR_KEYS if k in data.columns]
    wide = data.groupby([*keys, "metric", "model"], dropna=False)["value"].mean().unstack("model")
    higher = data.groupby("metric")["higher_is_better"].first()
    counts: dict[int, np.ndarray] = {}  # how often each pair is drawn per resample, by pairs

    def bootstrap(diffs: np.ndarray) -> np.ndarray:
        """The means of ``resamples`` resamples of ``diffs``: a function of (seed, pairs) alone."""
        n = len(diffs)
        if n not in counts:
            rng = np.random.default_rng([seed, n])
            counts[n] = rng.multinomial(n, np.full(n, 1 / n), size=resamples).astype(float)
        return counts[n] @ diffs / n

    rows = []
    for baseline in baselines:
        for metric in [m for m in metrics if m in higher.index]:
            scores = wide.xs(metric, level="metric")
            sign = 1.0 if higher[metric] else -1.0
            for model in [m for m in models if m != baseline and m in scores.columns]:
                both = scores[[model, baseline]].dropna().to_numpy()
                if not len(both):  # e.g. Pearson of the change where the model predicts none
                    continue
                diffs = sign * (both[:, 0] - both[:, 1])
                low = high = np.nan
                verdict = "too few pairs"
                if len(diffs) >= min_pairs:
                    low, high = np.quantile(bootstrap(diffs), [(1 - level) / 2, (1 + level) / 2])
                    zero = _RELATIVE_TOLERANCE * max(np.abs(both).max(), 1.0)
                    verdict = "won" if low > zero else "lost" if high < -zero else "tied"
                rows.append((model, baseline, metric, diffs.mean(), low, high, len(diffs), verdict))
    return pd.DataFrame(rows, columns=list(COLUMNS))


def verdict_counts(
    verdict: pd.DataFrame, models: Sequence[str], baselines: Sequence[str]
) -> pd.DataFrame:
    """The report's compact table: one row per model, one column per baseline, each cell
    ``"3 won · 2 tied · 1 lost"`` (with ``· n too few pairs`` where some have no verdict) over
    the metrics of :func:`paired_verdict`'s ``verdict``; ``—`` where a model is the baseline or
    has no pair with it."""
    counts = verdict.groupby(["model", "baseline"])["verdict"].value_counts().unstack(fill_value=0)
    counts = counts.reindex(columns=list(VERDICTS), fill_value=0)
    cells = pd.DataFrame("—", index=pd.Index(list(models), name="model"), columns=list(baselines))
    for (model, baseline), n in counts.iterrows():
        if model in cells.index and baseline in cells.columns:
            few = f" · {n['too few pairs']} too few pairs" if n["too few pairs"] else ""
            cells.loc[model, baseline] = (
                f"{n['won']} won · {n['tied']} tied · {n['lost']} lost{few}"
            )
    return cells
