"""The benchmark report: the verdict as a table, the means beside it, the figures, the details.

The report opens with the verdict: each model against each baseline that ran, the metrics it
won, tied and lost (:func:`~mtpert.benchmark.verdict.paired_verdict`: a paired bootstrap over
held-out targets and seeds), and beside it the mean of each metric per model with the noise
ceiling; then its figures (each names its held-out target and seed), then the verdict per
metric, costs, and each metric per held-out target. On data with doses it adds a table per dose
for each metric, the rank of each prediction among the doses, and the dose-response figure of the
showcase group. Metrics are described from the registry (:data:`mtpert.metrics.METRICS`), so a
metric added by a user or a plugin is reported like mtpert's own.

:func:`write_report` reads a benchmark directory and writes ``report/report.html`` (self-contained:
figures embedded), ``report/summary.md``, ``report/verdict.csv`` (the verdict per model,
baseline and metric), and every figure as PNG and PDF under ``report/figures``;
a report on some of the models goes to its own folder. Names from the data are written as text in
both the HTML and the Markdown, never as markup. The tables are public functions too, for notebooks.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from mtpert.benchmark.grid import NOISE_CEILING, BenchmarkConfig
from mtpert.benchmark.store import LEFT_OUT, PROVENANCE, ResultStore
from mtpert.benchmark.verdict import MIN_PAIRS, RESAMPLES, paired_verdict, verdict_counts
from mtpert.data.split import condition_label
from mtpert.errors import ConfigError
from mtpert.io import atomic_write, safe_name, write_table
from mtpert.metrics import METRICS, top_degs
from mtpert.metrics.registry import BUILTIN
from mtpert.pl import (
    calibration_curve,
    deg_dotplot,
    mean_expression_scatter,
    metric_grid,
    metric_heatmap,
    pca_overlay,
    perturbation_heatmap,
)
from mtpert.pl._text import literal, visible
from mtpert.pl.dose import dose_response
from mtpert.uncertainty import PREFIX as UQ_PREFIX

HEADLINE = (
    "deg_overlap_top100", "r2_all", "r2_top20", "r2_top100", "pearson_delta_all",
    "e_distance_rel", "wasserstein_rel", "euclidean_rel", "mean_pairwise_rel", "mmd_rel", "rank",
)  # fmt: skip
"""The thesis' headline metrics: DEGs, R² over all HVGs / top-20 / top-100 DEGs, Pearson delta,
the five distances relative to predicting no change (< 1 beats it), and, where a group has
several conditions or doses, the rank of each prediction among them (0 best, 0.5 ignores them).
Those absent from the results are left out; metrics added by users or plugins follow them."""

SCREEN_HEADLINE = (
    "pearson_delta_all", "pearson_delta_top20", "r2_top20", "r2_top100", "mse_top20", "direction_top20",
    "discrimination", "gi_pearson_top20", "gi_mse_top20", "e_distance_rel", "mmd_rel", "effect_false_positive",
)  # fmt: skip
"""The headline of a screen (many perturbations): the change predicted per perturbation (Pearson,
R², MSE and direction on its DEGs), whether predictions tell perturbations apart
(``discrimination``), the genetic interaction of combinations (``gi_*``), two distances, and how
much change a model invents where the truth has none (``effect_false_positive``)."""

BASELINES = ("control", "mean_shift", "additive", "global_mean", "linear")
"""The baselines models are compared with, where the benchmark ran them: predicting no change,
mean shift (held-out groups), the additive model (combinations), the mean change of all training
perturbations and the linear model on perturbation embeddings (screens)."""
MAX_SHOWN_CONDITIONS = 3
"""Conditions of the showcase group drawn as PCA, scatter and dot plot: those with the largest
true effect (a screen has tens; the per-perturbation heatmaps cover them all)."""
HEATMAP_METRICS = ("r2_top100", "e_distance_rel")
N_DEGS = 20
"""Top true DEGs labelled in the scatter and shown in the dot plot."""
N_DOSE_GENES = 6
"""Genes in the dose-response figure."""


# ---------------------------------------------------------------------------- tables
def headline(results: pd.DataFrame, metrics: Sequence[str] = HEADLINE) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per model: the mean of each metric over held-out targets and seeds, and its spread across
    seeds (std of the per-seed means over targets; NaN with one seed)."""
    data = results[results["metric"].isin(metrics)]
    per_seed = data.groupby(["model", "seed", "metric"])["value"].mean()
    mean = data.groupby(["model", "metric"])["value"].mean().unstack("metric")
    spread = per_seed.groupby(["model", "metric"]).std().unstack("metric")
    columns = [m for m in metrics if m in mean.columns]
    return mean[columns], spread[columns]


def best_models(mean: pd.DataFrame, higher_is_better: pd.Series) -> pd.DataFrame:
    """True where a model has the best value of a column (the noise ceiling does not compete)."""
    models = mean.drop(index=NOISE_CEILING, errors="ignore")
    best = {m: models[m].max() if higher_is_better[m] else models[m].min() for m in mean.columns}
    marks = pd.DataFrame(False, index=mean.index, columns=mean.columns)
    for metric, value in best.items():
        marks.loc[models.index, metric] = np.isclose(models[metric], value)
    return marks


def costs(results: pd.DataFrame) -> pd.DataFrame:
    """Per model: mean fit and predict seconds per run, largest peak memory, parameters, epochs,
    and for tuned models the tuning's seconds and trials (besides the final fit)."""
    runs = results.drop_duplicates("run_id")
    wanted = {
        "fit_s": ("fit_seconds", "mean"), "predict_s": ("predict_seconds", "mean"), "run_s": ("run_seconds", "mean"),
        "peak_rss_mb": ("peak_rss_mb", "max"), "n_params": ("n_params", "mean"), "epochs": ("epochs", "mean"),
        "tune_s": ("tune_seconds", "mean"), "tune_trials": ("tune_trials", "mean"), "uq_s": ("uq_seconds", "mean"),
        "runs": ("run_id", "size"),
    }  # fmt: skip
    return runs.groupby("model").agg(**{k: v for k, v in wanted.items() if v[0] in runs.columns})


def uncertainty(results: pd.DataFrame) -> pd.DataFrame:
    """Per model with intervals: coverage, top-20 coverage, width and uncalibrated coverage at
    each level (mean over targets and seeds), and the Spearman correlation across targets of the
    ensemble's disagreement with its error (``mse_top20``). Empty without interval rows."""
    rows = results[results["metric"].str.startswith(UQ_PREFIX)]
    if rows.empty:
        return pd.DataFrame()
    table = rows.pivot_table(index="model", columns="metric", values="value", aggfunc="mean")
    table.columns = [c.removeprefix(UQ_PREFIX) for c in table.columns]
    levels = sorted({c.rsplit("_", 1)[1] for c in table.columns if c.startswith("coverage_") and c.count("_") == 1}, key=float)
    kinds = ("coverage", "coverage_top20", "width", "draws_coverage")
    table = table[[f"{kind}_{level}" for level in levels for kind in kinds if f"{kind}_{level}" in table.columns]]
    keys = ["model", "seed", "group", "condition", "dose"]
    spread = rows[rows["metric"] == f"{UQ_PREFIX}uncertainty"].set_index(keys)["value"]
    error = results[results["metric"] == "mse_top20"].set_index(keys)["value"]
    both = pd.concat({"spread": spread, "error": error}, axis=1, join="inner").dropna()
    table["spearman"] = both.groupby(level="model").apply(
        lambda d: d["spread"].corr(d["error"], method="spearman") if len(d) >= 3 else np.nan
    ).reindex(table.index)
    return table


def calibration_long(results: pd.DataFrame) -> pd.DataFrame:
    """The interval rows as :func:`mtpert.pl.calibration_curve` takes them: one row per model's
    method (calibrated, or the ensemble's own spread), level and target."""
    rows = results[results["metric"].str.match(rf"{UQ_PREFIX}(draws_)?coverage_[0-9.]+$")]
    own = rows["metric"].str.contains("draws_")
    return pd.DataFrame({
        "method": rows["model"] + np.where(own, " (own spread)", " (calibrated)"),
        "level": rows["metric"].str.rsplit("_", n=1).str[1].astype(float) / 100,
        "coverage": rows["value"],
    })  # fmt: skip


def tuned(results: pd.DataFrame) -> pd.DataFrame:
    """One row per tuned run: its held-out target, seed, trials, best inner score and the
    hyperparameters it chose (one column each)."""
    runs = results.dropna(subset=["tuned_params"]).drop_duplicates("run_id")
    chosen = pd.DataFrame([json.loads(p) for p in runs["tuned_params"]], index=runs.index).map(
        lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)
    )
    ids = runs[["model", "group", "seed"]].assign(
        trials=runs["tune_trials"].map(lambda v: f"{v:.0f}"), inner_score=runs["tune_value"].map(_fmt)
    )
    return pd.concat([ids, chosen], axis=1).sort_values(["model", "group", "seed"]).set_index("model")


def provenance(results: pd.DataFrame) -> pd.DataFrame:
    """Runs and invocations per mtpert version and git commit that made them, so a directory
    resumed with other code says so; runs from before runs recorded it count as "not recorded"."""
    runs = results.drop_duplicates("run_id").reindex(columns=["run_id", "model", *PROVENANCE])
    code = runs["mtpert_version"].fillna("not recorded") + " (" + runs["git_commit"].fillna("").replace("", "no git commit") + ")"
    table = runs.assign(code=code).groupby("code").agg(
        runs=("run_id", "size"), models=("model", "nunique"), invocations=("invocation", "nunique"), last_finished=("finished", "max")
    )
    return table.rename_axis("mtpert (commit)")


# ---------------------------------------------------------------------------- the report
@dataclass(frozen=True)
class Figure:
    """A figure of the report; ``name`` is its file name (without extension)."""

    name: str
    caption: str
    figure: plt.Figure


def write_report(
    directory: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    metrics: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    formats: Sequence[str] = ("png", "pdf"),
) -> dict[str, Path]:
    """Write ``report.html``, ``summary.md`` and the figures (in ``formats``) of benchmark
    ``directory`` to folder ``out``.

    ``metrics``: the metrics of the tables and figures; default :data:`HEADLINE`, then any
    metric in the results that users or plugins added.
    ``models``: report only these (and the noise ceiling), e.g. the part of a grid that is
    complete while the rest still runs; default every model with results.
    ``out``: default ``directory/report``, or ``directory/report-<models>`` with ``models``. A
    report on some models never replaces the full one: ``out=directory/report`` is refused then.

    Returns the paths written, by name (``html``, ``markdown``, and ``<figure>.<format>``; a
    figure of one held-out target and seed is named after them, e.g. ``pca_B_stimulated_seed1``).
    """
    store = ResultStore(directory)
    full = store.root / "report"
    if out is None:
        out = full if models is None else store.root / f"report-{safe_name('+'.join(sorted(set(models))))}"
    folder = Path(out)
    if models is not None and folder.resolve() == full.resolve():
        raise ConfigError(
            f"{full} holds the report on every model; write the report on {list(models)} elsewhere (--out)."
        )
    results = store.results()
    outdated = _outdated_note(results.attrs.get(LEFT_OUT, {}), store.root)
    if models is not None:
        unknown = sorted(set(models) - set(results["model"]))
        if unknown:
            raise ConfigError(
                f"no results for model(s) {unknown} in {store.root}; it has "
                f"{sorted(set(results['model']) - {NOISE_CEILING})}. Pick --models among those."
            )
        results = results[results["model"].isin([*models, NOISE_CEILING])]
    config = store.config()
    found = [  # a metric no target has is no column; intervals have their own section
        m for m in dict.fromkeys(results.dropna(subset=["value"])["metric"]) if not m.startswith(UQ_PREFIX)
    ]
    default = SCREEN_HEADLINE if _many_conditions(results) else HEADLINE
    metrics = [m for m in metrics or (*default, *(m for m in found if m not in BUILTIN)) if m in found]
    order = _model_order(results, config.models if config else ())
    mean, spread = headline(results, metrics)
    mean, spread = mean.reindex(order), spread.reindex(order)
    marks = best_models(mean, results.groupby("metric")["higher_is_better"].first())
    baselines = [b for b in BASELINES if b in order and (b != "additive" or _has_combinations(results, config))]
    compared = [m for m in order if m != NOISE_CEILING]
    detail = paired_verdict(results, baselines, metrics, models=compared)
    detail = detail.sort_values(  # the report's order of models, baselines and metrics, not alphabetical
        ["model", "baseline", "metric"], key=lambda c: c.map({n: i for i, n in enumerate([*compared, *metrics])}), kind="stable"
    )
    seeds = sorted(results["seed"].unique())
    n_targets = len(results[["group", "condition", "dose"]].drop_duplicates())
    notes = " ".join(filter(None, [_incomplete(results), outdated, _detectable(results)]))
    written: dict[str, Path] = {"verdict": write_table(detail, folder / "verdict.csv")}
    figures = []
    pngs = {}  # each figure rendered once per format; the PNG is also embedded in the HTML
    for f in _figures(results, store, config, order, metrics, _runs_label(n_targets, seeds)):
        title = f.figure.get_suptitle().replace(r"\$", "$")  # the file's Title too, as written
        for fmt in dict.fromkeys(["png", *formats]):
            buffer = io.BytesIO()
            f.figure.savefig(buffer, format=fmt, dpi=120, metadata={"Title": title} if fmt in ("png", "pdf") else None)
            pngs[f.name] = buffer.getvalue() if fmt == "png" else pngs[f.name]
            if fmt in formats:
                written[f"{f.name}.{fmt}"] = atomic_write(folder / "figures" / f"{f.name}.{fmt}", lambda fh, b=buffer: fh.write(b.getvalue()))
        plt.close(f.figure)
        figures.append(f)
    lead = _verdict_sections(results, mean, spread, marks, detail, baselines)
    sections = _sections(results, mean, detail, costs(results).reindex(order), store)
    title = f"mtpert benchmark: {config.data if config else store.root.name}"
    html_text = _html(title, notes, lead, figures, sections, pngs)
    markdown_text = _markdown(title, notes, lead, figures, sections, formats)
    written["html"] = atomic_write(folder / "report.html", lambda fh: fh.write(html_text.encode()))
    written["markdown"] = atomic_write(folder / "summary.md", lambda fh: fh.write(markdown_text.encode()))
    return written


@dataclass(frozen=True)
class _Sentences:
    title: str
    lines: list[str]


@dataclass(frozen=True)
class _Table:
    title: str
    note: str
    cells: pd.DataFrame  # strings
    bold: pd.DataFrame | None = None
    collapsed: bool = False  # shown folded (HTML and Markdown <details>), for long detail tables


def _verdict_sections(results, mean, spread, marks, detail, baselines) -> list[_Table | _Sentences]:
    """What the report opens with: the verdict table (:func:`verdict_counts`) and, beside it,
    the mean of each metric per model with the noise ceiling."""
    seeds = sorted(results["seed"].unique())
    targets = results[["group", "condition", "dose"]].drop_duplicates()
    if baselines:
        counts = verdict_counts(detail, [m for m in mean.index if m != NOISE_CEILING], baselines)
        verdict: _Table | _Sentences = _Table(
            "Verdict: each model against each baseline",
            f"Of the {mean.shape[1]} metrics of the next table, how many each model (row) won, tied and lost against "
            "each baseline (column). Per metric: the paired difference model − baseline on each held-out target and "
            f"seed ({len(targets)} x {len(seeds)} pairs; positive = better, whichever way the metric improves), and "
            f"its bootstrap 95% confidence interval ({RESAMPLES:,} resamples of the pairs): won if the interval lies "
            f"above zero, lost if below, else tied; too few pairs under {MIN_PAIRS}. A metric a model has no score "
            "on (e.g. Pearson of the change for control) is left out. Each interval: 'Verdict per metric', verdict.csv.",
            counts.rename(columns=lambda b: f"vs {b}"),
        )
    else:
        verdict = _Sentences("Verdict", [f"No runs of a baseline ({', '.join(BASELINES)}), so no comparison with one."])
    cells = mean.map(_fmt) + np.where(spread.notna(), " ± " + spread.map(_fmt), "")
    means = _Table(
        "Mean over held-out targets and seeds",
        f"{len(targets)} held-out targets x {len(seeds)} seeds ({', '.join(map(str, seeds))}); ± the std "
        "of the per-seed means. Bold: best model per column. *_rel: distance to the truth relative to "
        "the control's (< 1 beats predicting no change). The noise_ceiling row scores half of the true "
        "cells as a prediction of the other half: how well real cells predict real cells. Halves hold half "
        "the cells, so on noise-sensitive metrics (DEG overlap, distances) a model scored against all true "
        "cells can pass it: read it as a reference, not a bound."
        + "".join(f" {_described(m, results)}" for m in mean.columns if _needs_description(m)),
        cells,
        marks,
    )
    return [verdict, means]


def _sections(results, mean, detail, cost, store) -> list[_Table | _Sentences]:
    """The report's content after the figures, in order: tables (rendered to HTML and Markdown
    alike) and sentences."""
    out: list[_Table | _Sentences] = []
    if len(detail):
        numbers = detail[["difference", "ci_low", "ci_high"]].map(_fmt)
        cells = pd.concat([detail[["baseline", "metric"]], numbers, detail[["pairs", "verdict"]].astype(str)], axis=1)
        out.append(_Table(
            "Verdict per metric",
            "difference: mean over the pairs (held-out target and seed) of model − baseline, negated where lower is "
            "better, so that positive means the model is better; ci_low, ci_high: its bootstrap 95% confidence "
            "interval; won / lost: the interval lies above / below zero. Also in verdict.csv.",
            cells.set_index(detail["model"]),
            collapsed=True,
        ))  # fmt: skip
    out.append(_Table("Cost per run", "Seconds per run; peak resident memory of the worker process during a run (MiB).", _cost_cells(cost)))
    intervals = uncertainty(results)
    if len(intervals):
        out.append(_Table(
            "Uncertainty: calibrated intervals for each target's change",
            "Deep ensembles, intervals calibrated on training groups held out in turn (split conformal): coverage of the true "
            "mean change over all genes (should match the level), over the 20 genes of largest true change, mean width, and the "
            "coverage of the ensemble's own spread (uncalibrated). Mean over targets and seeds. spearman: rank correlation, "
            "across targets, of the ensemble's disagreement with its error (mse_top20); above 0, disagreement flags the worse predictions.",
            intervals.map(lambda v: v if isinstance(v, str) else _fmt(v)),
        ))  # fmt: skip
    if "tuned_params" in results.columns and results["tuned_params"].notna().any():
        out.append(_Table("Tuned hyperparameters", "What each tuned run chose on its training groups alone, and its mean inner score.", tuned(results)))
    if results["dose"].notna().any():
        for metric in mean.columns:
            per_dose = results[results["metric"] == metric].pivot_table(index="model", columns="dose", values="value", aggfunc="mean")
            out.append(_Table(f"{metric} per dose (mean over held-out groups and seeds)", "", per_dose.reindex(mean.index).map(_fmt)))
    for metric in mean.columns:
        data = results[results["metric"] == metric]
        if _many_conditions(results):  # a screen: one row per perturbation, one column per model
            per_target = data.assign(target=_target_labels(data)).pivot_table(index="target", columns="model", values="value", aggfunc="mean")
            table = per_target.reindex(columns=[m for m in mean.index if m in per_target.columns]).map(_fmt)
            out.append(_Table(f"{metric} per perturbation (mean over seeds)", "", table.rename_axis("perturbation")))
        else:
            per_target = data.pivot_table(index="model", columns="group", values="value", aggfunc="mean")
            out.append(_Table(f"{metric} per held-out target (mean over seeds)", "", per_target.reindex(mean.index).map(_fmt)))
    skipped = store.root / "skipped.csv"
    if skipped.is_file():
        table = pd.read_csv(skipped, index_col=0)
        if len(table):
            title = "Not run: groups too small to hold out" + (", models that cannot serve the split" if "model" in table else " (too few cells)")
            table.index = table.index.fillna("")  # a model skipped for every target has none
            out.append(_Table(title, "", table.fillna("").astype(str)))
    out.append(_Table("Provenance", "The code that made the runs (each run file records it, with the data's sha256).", provenance(results).fillna("").astype(str)))
    return out


def _detectable(results: pd.DataFrame) -> str:
    """How many held-out targets have a true change beyond the noise (metric ``detectable``), and
    what that means for reading the scores; empty where the metric was not computed."""
    flags = results[results["metric"] == "detectable"].groupby(["group", "condition", "dose"], dropna=False)["value"].first()
    if flags.empty or flags.all():
        return ""
    undetected = int((flags == 0).sum())
    return (
        f"{len(flags) - undetected} of {len(flags)} held-out targets have a detectable true change (a permutation test "
        f"against control); on the other {undetected}, a model can only do harm: effect_false_positive scores the change it "
        "invents there (0 best)."
    )


def _outdated_note(left_out: Mapping[str, Sequence[str]], root: Path) -> str:
    """Which models' values of which metrics the results leave out, scored before the metric's
    definition changed, and how to score them anew; empty when none."""
    if not left_out:
        return ""
    which = "; ".join(f"{metric} of {', '.join(models)}" for metric, models in left_out.items())
    return (
        f"Left out, scored before the metric's definition changed: {which}. The same `mtpert benchmark "
        f"--out {root}` call with `--rescore` scores them anew."
    )


def _incomplete(results: pd.DataFrame) -> str:
    """Which models lack runs the others have (an unfinished grid), so their means are not read as
    comparable with the rest; empty when every model covers the same held-out targets and seeds."""
    runs = results[results["model"] != NOISE_CEILING].drop_duplicates(["model", "group", "condition", "dose", "seed"])
    counts = runs.groupby("model").size()
    if counts.empty or counts.nunique() == 1:
        return ""
    short = ", ".join(f"{m} {n} of {counts.max()}" for m, n in counts[counts < counts.max()].items())
    return (
        f"Not every model finished: {short} target-seed runs. Their means cover fewer held-out targets or "
        "seeds than the others', so compare them target by target (the per-perturbation tables), not by the means."
    )


def _has_combinations(results: pd.DataFrame, config: BenchmarkConfig | None) -> bool:
    """Whether a held-out target combines perturbations: only there does the additive baseline
    differ from mean shift."""
    spec = config.spec if config is not None else None
    if spec is None or spec.combination_separator is None:
        return False
    return any(len(spec.parts(c)) > 1 for c in results["condition"].astype(str).unique())


def _many_conditions(results: pd.DataFrame) -> bool:
    """Whether the held-out targets span several conditions of one group (a screen), rather than
    one condition per group (or doses of one)."""
    return bool((results.groupby("group")["condition"].nunique() > 1).any())


def _target_labels(results: pd.DataFrame) -> pd.Series:
    """``condition`` (``group | condition`` with several groups), with ``@dose`` where there are doses."""
    label = results["condition"].astype(str)
    if results["dose"].notna().any():
        label = label + "@" + results["dose"].map(lambda d: "" if pd.isna(d) else f"{d:g}")
    return (results["group"].astype(str) + " | " + label) if results["group"].nunique() > 1 else label


def _needs_description(metric: str) -> bool:
    """Whether the headline note explains ``metric``: one computed across targets, or one added by
    a user or plugin (the note's text covers mtpert's per-target metrics)."""
    return metric not in BUILTIN or (metric in METRICS and METRICS[metric].scope == "across_targets")


def _described(metric: str, results: pd.DataFrame) -> str:
    """``metric: description (lower is better; best 0).`` from the registry; the direction
    recorded in the results when the metric is no longer registered (e.g. a plugin removed)."""
    if metric in METRICS:
        m = METRICS[metric]
        return f"{metric}: {m.description} ({'higher' if m.higher_is_better else 'lower'} is better; best {m.best:g})."
    higher = bool(results.loc[results["metric"] == metric, "higher_is_better"].iloc[0])
    return f"{metric}: not registered in this session ({'higher' if higher else 'lower'} is better)."


def _runs_label(n_targets: int, seeds: Sequence[int]) -> str:
    """``'9 held-out targets x seeds 1, 2'``: what an aggregate figure summarises, for its title."""
    return f"{n_targets} held-out target{'s' * (n_targets != 1)} x seed{'s' * (len(seeds) != 1)} {', '.join(map(str, seeds))}"


def _file_label(label: str) -> str:
    """``label`` as part of a file name: as written when it is letters, digits and ``_.@-``
    (``B``, ``stimulated@2.5``), else :func:`safe_name`'s readable and collision-free form."""
    return label if re.fullmatch(r"[A-Za-z0-9_@-][A-Za-z0-9_.@-]*", label) else safe_name(label)


def _figures(results, store, config, order, metrics, span: str) -> Iterator[Figure]:
    """The report's figures, one at a time (each is drawn, saved and closed before the next): two over every run (``span`` says which), then, for the showcase
    group, one per figure kind for its first kept seed, named after that target and seed."""
    fig = metric_grid(results, metrics, order=order)
    fig.suptitle(f"Each metric per model: {span}")
    yield Figure("metrics_by_model", f"Each metric per model: one dot per held-out target and seed ({span}).", fig)
    present = [m for m in HEATMAP_METRICS if m in set(results["metric"])]
    n_groups = results["group"].nunique()
    fig, axes = plt.subplots(  # one column of model names, on the left: the panels share their rows
        1, len(present), sharey=True, figsize=(1.5 + len(present) * (2.5 + 0.7 * n_groups), 1.5 + 0.4 * len(order)), layout="constrained", squeeze=False
    )
    for ax, metric in zip(axes[0], present, strict=True):
        metric_heatmap(results, metric, ax=ax, order=order)
    fig.suptitle(f"Mean over seeds: {span}")
    yield Figure("heatmap", f"Models x held-out targets, mean over seeds ({span}).", fig)
    coverage = calibration_long(results)
    if len(coverage):
        fig, ax = plt.subplots(figsize=(5.0, 5.0), layout="constrained")
        calibration_curve(coverage, ax=ax)
        fig.suptitle(f"Coverage of the true change: {span}")
        yield Figure("calibration", f"Empirical against nominal coverage of each model's intervals, calibrated and not; band: ± one std over targets ({span}).", fig)
    if _many_conditions(results):
        for model in [m for m in order if m != NOISE_CEILING]:
            fig, ax = plt.subplots(figsize=(2.0 + 0.6 * len(metrics), 1.6 + 0.28 * len(_target_labels(results).unique())), layout="constrained")
            perturbation_heatmap(results[results["model"].isin(order) & (results["model"] != NOISE_CEILING)], model, metrics, ax=ax)
            fig.suptitle(literal(f"Each perturbation and metric, {span}"))
            caption = (f"{model}: its score on each held-out perturbation (rows) and metric, mean over seeds ({span}); "
                       "colour: between the worst (red) and the best (green) any model reached on that metric.")  # fmt: skip
            yield Figure(f"perturbations_{_file_label(model)}", caption, fig)
    showcase = config.showcase if config and config.showcase else None
    runs = results[(results["group"] == showcase) & results["model"].isin(order)] if showcase else results.iloc[:0]
    shown = _largest_effects(runs, MAX_SHOWN_CONDITIONS)
    for condition, rows in runs[runs["condition"].isin(shown)].groupby("condition", sort=False):
        kept = {}  # (control, truth, predictions) per dose, lowest first
        for dose in sorted(rows["dose"].dropna().unique()) or [None]:
            try:
                kept[dose] = store.predictions(showcase, condition, dose)
            except FileNotFoundError:
                continue
        if not kept:
            continue
        dose, (control, truth, preds) = list(kept.items())[-1]
        seed = min(s for _, s in preds)
        chosen = {m: preds[m, seed] for m in order if (m, seed) in preds}
        target = condition_label(condition, dose)
        label = f"{showcase} -> {target}, seed {seed}"
        suffix = f"_{_file_label(showcase)}_{_file_label(target)}_seed{seed}"
        degs = top_degs(control, truth, n=N_DEGS)
        fig, axes = _panel_grid(len(chosen), title=label)
        for ax, (model, pred) in zip(axes, chosen.items(), strict=False):
            pca_overlay(control, truth, pred, ax=ax, title=model)
        yield Figure(f"pca{suffix}", f"PCA of control, true and predicted cells ({label}); axes fitted on the real cells.", fig)
        fig, axes = _panel_grid(len(chosen), title=label)
        for ax, (model, pred) in zip(axes, chosen.items(), strict=False):
            mean_expression_scatter(truth, pred, highlight=degs, ax=ax, title=model)
        yield Figure(f"scatter{suffix}", f"Mean expression per gene, prediction vs truth ({label}); red: top {N_DEGS} true DEGs.", fig)
        fig, ax = plt.subplots(figsize=(2.5 + 0.32 * len(degs), 1.2 + 0.35 * (len(chosen) + 2)), layout="constrained")
        deg_dotplot(control, truth, chosen, degs, ax=ax)
        fig.suptitle(literal(label))
        yield Figure(f"dotplot{suffix}", f"Top {N_DEGS} true DEGs across control, truth and each prediction ({label}).", fig)
        if dose is not None:
            name = f"dose_response_{_file_label(showcase)}_{_file_label(condition)}_seed{seed}"
            yield _dose_response(kept, config, showcase, condition, seed, order, name)


def _largest_effects(results: pd.DataFrame, n: int) -> list[str]:
    """The ``n`` conditions whose true cells lie farthest from the control cells (E-distance:
    a model's ``e_distance`` over its ``e_distance_rel``), in the results' order where unknown."""
    conditions = list(dict.fromkeys(results["condition"]))
    wide = results[results["metric"].isin(["e_distance", "e_distance_rel"])].pivot_table(
        index=["condition", "model", "seed"], columns="metric", values="value"
    )
    if len(conditions) <= n or not {"e_distance", "e_distance_rel"} <= set(wide.columns):
        return conditions[:n]
    effect = (wide["e_distance"] / wide["e_distance_rel"]).groupby(level="condition").mean()
    return effect.sort_values(ascending=False).index[:n].tolist()


def _dose_response(kept: dict, config, group: str, condition: str, seed: int, order: Sequence[str], name: str) -> Figure:
    """True and predicted mean expression across the kept doses of one group, per model (``seed``)."""
    spec = config.dataset_spec()
    spec = replace(spec, cell_type_key=config.group_key or spec.cell_type_key)  # one group of the split's key
    control = next(iter(kept.values()))[0]
    truth = ad.concat([control, *(t for _, t, _ in kept.values())], index_unique="-")
    preds = {
        m: ad.concat([p[m, seed] for _, _, p in kept.values() if (m, seed) in p], index_unique="-")
        for m in order
        if any((m, seed) in p for _, _, p in kept.values())
    }
    fig = dose_response(truth, preds, spec, condition=condition, n_genes=N_DOSE_GENES, title=f"{group} -> {condition}, seed {seed}")
    caption = (
        f"Dose-response of {group} -> {condition}: mean expression of the top {N_DOSE_GENES} true DEGs of the highest dose, "
        f"true (black) and predicted by each model (seed {seed}), at each dose predicted."
    )
    return Figure(name, caption, fig)


def _panel_grid(n: int, title: str) -> tuple[plt.Figure, list]:
    """A figure of ``n`` square panels, at most five a row, titled ``title``; unused axes hidden."""
    cols = min(5, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.6 * rows), layout="constrained", squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    fig.suptitle(literal(title))
    return fig, list(axes.ravel()[:n])


def _model_order(results: pd.DataFrame, configured: Sequence[str]) -> list[str]:
    """The configured order, then any other models found, then the noise ceiling last."""
    found = list(dict.fromkeys(results["model"]))
    order = [m for m in configured if m in found] + sorted(m for m in found if m not in configured and m != NOISE_CEILING)
    return order + ([NOISE_CEILING] if NOISE_CEILING in found else [])


def _cost_cells(cost: pd.DataFrame) -> pd.DataFrame:
    """The cost table as text: counts (parameters, runs) as whole numbers, the rest by :func:`_fmt`."""
    counts = [c for c in ("n_params", "runs") if c in cost]
    cells = cost.map(_fmt)
    cells[counts] = cost[counts].map(lambda v: f"{v:,.0f}" if np.isfinite(v) else "")
    return cells


def _fmt(value: float) -> str:
    """Three decimals for scores, fewer for large numbers (seconds, MiB, parameters); NaN blank."""
    if value is None or not np.isfinite(value):
        return ""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.3f}"


# ---------------------------------------------------------------------------- rendering
_CSS = """body{font-family:system-ui,sans-serif;max-width:1600px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right;white-space:nowrap}
.wide{overflow-x:auto}
th:first-child,td:first-child{text-align:left}thead th{background:#f3f3f3}p.note{color:#555;font-size:13px}
p.verdict{font-size:15px;line-height:1.5;max-width:75em}summary h2{display:inline;cursor:pointer}img{max-width:100%;border:1px solid #eee}figure{margin:1em 0 2em}figcaption{color:#555;font-size:13px}"""


def _html(title: str, notes: str, lead, figures: list[Figure], sections, pngs: dict[str, bytes]) -> str:
    """The report as one HTML page: title, ``notes`` (when any), the ``lead`` sections, the
    figures (embedded), then the other ``sections``."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_h(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{_h(title)}</h1>", *([f"<p class='verdict'>{_h(notes)}</p>"] if notes else [])]  # fmt: skip
    parts += [_html_section(section) for section in lead]
    parts.append("<h2>Figures</h2>")
    for f in figures:
        data = base64.b64encode(pngs[f.name]).decode()
        parts.append(f"<figure id='{_h(f.name)}'><img alt='{_h(f.name)}' src='data:image/png;base64,{data}'><figcaption>{_h(f.caption)}</figcaption></figure>")
    parts += [_html_section(section) for section in sections]
    return "\n".join(parts) + "</body></html>\n"


def _html_section(section: _Table | _Sentences) -> str:
    if isinstance(section, _Sentences):
        items = "".join(f"<li>{_h(s)}</li>" for s in section.lines)
        return f"<h2>{_h(section.title)}</h2><ul class='verdicts'>{items}</ul>"
    note = f"<p class='note'>{_h(section.note)}</p>" if section.note else ""
    if section.collapsed:
        return f"<details><summary><h2>{_h(section.title)}</h2></summary>{note}{_html_table(section)}</details>"
    return f"<h2>{_h(section.title)}</h2>{note}{_html_table(section)}"


def _h(text: object) -> str:
    """Text as literal HTML: hidden characters made visible (:func:`~mtpert.pl._text.visible`),
    then markup escaped."""
    return html.escape(visible(text))


def _html_table(t: _Table) -> str:
    head = "".join(f"<th>{_h(c)}</th>" for c in [t.cells.index.name or "", *t.cells.columns])
    rows = []
    for model, row in t.cells.iterrows():
        cells = []
        for column, value in row.items():
            text = _h(value)
            cells.append(f"<td><b>{text}</b></td>" if t.bold is not None and t.bold.loc[model, column] else f"<td>{text}</td>")
        rows.append(f"<tr><th>{_h(model)}</th>{''.join(cells)}</tr>")
    return f"<div class='wide'><table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"


_MARKDOWN = str.maketrans({c: "\\" + c for c in "\\`*~[]|$"})


def _md(text: object) -> str:
    """Text as literal Markdown: hidden characters made visible (line breaks too, which would end
    a table row) and HTML escaped, as in the HTML report; Markdown's emphasis, code, link, table
    and math characters backslashed."""
    return html.escape(visible(text), quote=False).translate(_MARKDOWN)


def _markdown_table(t: _Table) -> str:
    """The table as Markdown, escaped by :func:`_md`, best values bold; cells otherwise verbatim
    (tabulate would reparse '1420400' as 1.4204e+06)."""
    cells = t.cells.map(_md)
    if t.bold is not None:
        cells = cells.where(~t.bold, "**" + cells + "**")
    cells.index = cells.index.map(_md).rename(_md(t.cells.index.name or ""))
    cells.columns = cells.columns.map(_md)
    return cells.to_markdown(disable_numparse=True, colalign=("left",) + ("right",) * cells.shape[1])


def _markdown(title: str, notes: str, lead, figures: list[Figure], sections, formats: Sequence[str]) -> str:
    """The report as Markdown, in the order of :func:`_html`; figures shown when PNGs were
    written, else linked."""
    parts = [f"# {_md(title)}\n", *([f"{_md(notes)}\n"] if notes else [])]
    parts += [_markdown_section(section) for section in lead]
    parts.append("## Figures\n")
    for f in figures:
        files = " and ".join(f"`figures/{f.name}.{fmt}`" for fmt in formats)
        image = f"![{_md(f.name)}](figures/{f.name}.png)\n\n" if "png" in formats else ""
        parts.append(f"{image}{_md(f.caption)} ({files})\n")
    parts += [_markdown_section(section) for section in sections]
    return "\n".join(parts)


def _markdown_section(section: _Table | _Sentences) -> str:
    if isinstance(section, _Sentences):
        return f"## {_md(section.title)}\n\n" + "\n".join(f"- {_md(s)}" for s in section.lines) + "\n"
    note = f"{_md(section.note)}\n\n" if section.note else ""
    if section.collapsed:  # raw HTML, which Markdown renderers (GitHub, mkdocs) pass through
        return f"<details><summary>{_h(section.title)}</summary>\n\n{note}{_markdown_table(section)}\n\n</details>\n"
    return f"## {_md(section.title)}\n\n{note}{_markdown_table(section)}\n"
